# Session 39, call R: where UniAttn's batch-1 step lost 2.4% (u93 = 4b99bde): a trace at 1 / 8k.
set -uo pipefail
. scripts/device/env.sh
bash .x20/unpack.sh > /dev/null
B=/root/x20/bin
U=$B/u93 OUT=$OUT/tr BATCH=1 CONTEXT=8192 PLAN=4:12:24 PROFILER=trace timeout 150 bash scripts/device/decode_profile.sh > $OUT/trace.log 2>&1
cd $OUT && tar czf callR.tgz tr/traces/*.txt trace.log; rm -rf tr; ls
