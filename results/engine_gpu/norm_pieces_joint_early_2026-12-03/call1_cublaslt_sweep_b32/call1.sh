set -u
bash .x20/unpack.sh; B=/root/x20/bin
. scripts/device/env.sh
T0=$(date +%s)
H=$(dirname $(find /usr/local/cuda/ /opt/torch/.venv -name cublasLt.h 2>/dev/null | head -1)); L=$(dirname $(find /usr/local/cuda/ /opt/torch/.venv -name "libcublasLt.so*" 2>/dev/null | head -1))
echo "cublasLt.h in $H, lib in $L" | tee $OUT/lt.txt
nvcc -O2 -arch=sm_90 -I$H .x20/ltsweep.cu -L$L -l:$(basename $(ls $L/libcublasLt.so* | head -1)) -Xlinker -rpath=$L -o /root/x20/ltsweep 2>&1 | tail -3
for m in 32 8; do timeout 90 /root/x20/ltsweep $m >> $OUT/lt.txt 2>&1; done
for m in 32; do timeout 40 $PYTHON .x20/torch_linear.py $m >> $OUT/lt.txt 2>&1; TORCH_BLAS_PREFER_CUBLASLT=1 timeout 40 $PYTHON .x20/torch_linear.py $m | sed 's/^torch/torch-lt/' >> $OUT/lt.txt 2>&1; done
echo "sweep $(( $(date +%s)-T0 )) s"
timeout 150 $B/t70 --test-threads 1 add_rms_norm_decode row_argmax_equals_argmax decode_attention cuda_graph_decode_equals_eager 2>&1 | grep -E "^test |result|panicked|differ" > $OUT/tests.log
tail -3 $OUT/tests.log; grep -v " ok$" $OUT/tests.log | head; echo "tests $(( $(date +%s)-T0 )) s"
OUT=$OUT/b32 U=$B/u70 OLD_U="$B/u68" COMPARE="TORCH_BLAS_PREFER_CUBLASLT=1" BATCH=32 CONTEXT=8192 REPEATS=3 MODES= EAGER=0 NEW=64 \
  timeout $(( 575 - ($(date +%s)-T0) )) bash scripts/device/graph_bench.sh > $OUT/b32.log 2>&1
grep -E "^\| q05|==" $OUT/b32.log | cut -c1-130 | tail -14; echo "b32 $(( $(date +%s)-T0 )) s"
