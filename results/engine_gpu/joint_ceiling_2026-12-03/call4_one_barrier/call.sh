# Session 34, call 4: one barrier a sub-tile in the decode attention (u76 = d272cbf + it;
# u77 = the transposed form + it), their GPU tests, batch 32 / 8k against u73 (d272cbf).
set -uo pipefail
. scripts/device/env.sh
bash .x20/unpack.sh
B=/root/x20/bin
mkdir -p $OUT/c4
( echo "== t76"; $B/t76 --test-threads 1 joint_form_behind decode_attention_equals cuda_graph_decode_equals_eager 2>&1 | grep -E "^test |result|panicked|differ|left|right" | head -30
  echo "== t77"; $B/t77 --test-threads 1 decode_attention_equals 2>&1 | grep -E "^test |result|panicked|differ|left|right" | head -30
) > $OUT/c4/tests.log 2>&1
cat $OUT/c4/tests.log
OUT=$OUT/c4/x U=$B/u76 OLD_U="$B/u73 $B/u77" BATCH=32 CONTEXT=8192 REPEATS=2 MODES= EAGER=0 NEW=64 bash scripts/device/graph_bench.sh > $OUT/c4/b32.log 2>&1
python3 scripts/device/bench_summary.py $OUT/c4/x graphs="u76 one barrier" old="u73" old2="u77 transposed + one barrier" > $OUT/c4/summary.md 2>&1
cat $OUT/c4/summary.md
