set -u
bash .x20/unpack.sh >/dev/null; B=/root/x20/bin
. scripts/device/env.sh
T0=$(date +%s)
for bc in 32:8192 1:8192; do
  b=${bc%:*}; c=${bc#*:}
  U=$B/u90 OUT=$OUT/tr_b$b BATCH=$b CONTEXT=$c PLAN=4:12:24 PROFILER=trace timeout 200 bash scripts/device/decode_profile.sh > $OUT/trace_b$b.log 2>&1
  echo "b$b $(( $(date +%s)-T0 )) s"
done
cd $OUT && tar czf traces.tgz tr_b*/traces/*.txt trace_b*.log && rm -rf tr_b*; ls $OUT
