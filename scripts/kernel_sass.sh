#!/usr/bin/env bash
# A fused kernel's machine code (SASS) without a GPU: compiles crates/uniattn/cuda/kernels.cu
# with NVRTC for ARCH (sm_90) and the options the engine uses, then disassembles one entry
# point with nvdisasm (PyPI's nvidia-cuda-nvdisasm, fetched once into the cache) and prints
# ptxas's register and spill report for it. For reading where loads, fences and mma's land
# before spending GPU time. Needs `scripts/setup.sh --with-nvrtc` first.
#   scripts/kernel_sass.sh small_gemm_bf16 [ARCH] > small_gemm.sass
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/cache.sh"
kernel=${1:?usage: scripts/kernel_sass.sh KERNEL [ARCH], e.g. small_gemm_bf16 sm_90}
arch=${2:-sm_90}
NVDISASM_VERSION=13.2.51
nvrtc=${UNIATTN_NVRTC:-$UNIATTN_CACHE/nvrtc-13.0.88/libnvrtc.so.13}
[[ -f $nvrtc ]] || { echo "kernel_sass: no NVRTC at $nvrtc (run scripts/setup.sh --with-nvrtc)" >&2; exit 1; }
tools="$UNIATTN_CACHE/nvdisasm-$NVDISASM_VERSION"
if [[ ! -x $tools/nvdisasm ]]; then
  pip_fetch nvidia-cuda-nvdisasm==$NVDISASM_VERSION
  mkdir -p "$tools"
  python3 - "$tools" "$(compgen -G "$WHEELS/nvidia_cuda_nvdisasm-$NVDISASM_VERSION-*.whl" | head -1)" <<'PY'
import os, sys, zipfile
out, wheel = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("/bin/nvdisasm"))
    open(os.path.join(out, "nvdisasm"), "wb").write(z.read(name))
os.chmod(os.path.join(out, "nvdisasm"), 0o755)
PY
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The options of crates/uniattn/cuda/nvrtc.cpp, and ptxas's report.
LD_LIBRARY_PATH="$(dirname "$nvrtc")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" python3 - \
  "$nvrtc" "$here/../crates/uniattn/cuda/kernels.cu" "$arch" "$work/kernels.cubin" "$kernel" <<'PY' >&2
import ctypes, re, sys
nvrtc, source, arch, out, kernel = sys.argv[1:]
lib = ctypes.CDLL(nvrtc)
prog = ctypes.c_void_p()
if lib.nvrtcCreateProgram(ctypes.byref(prog), open(source, "rb").read(), b"kernels.cu", 0, None, None):
    sys.exit("kernel_sass: nvrtcCreateProgram failed")
opts = [f"--gpu-architecture={arch}".encode(), b"--std=c++17", b"--ptxas-options=-v"]
failed = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
size = ctypes.c_size_t()
lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
log = ctypes.create_string_buffer(size.value)
lib.nvrtcGetProgramLog(prog, log)
log = log.value.decode()
if failed:
    sys.exit(f"kernel_sass: {source} does not compile:\n{log}")
report = re.search(rf"Function properties for {re.escape(kernel)}\n(.*\n.*)", log)
if not report:
    sys.exit(f"kernel_sass: no entry point {kernel} in {source}")
print(report.group(1))
lib.nvrtcGetCUBINSize(prog, ctypes.byref(size))
cubin = ctypes.create_string_buffer(size.value)
lib.nvrtcGetCUBIN(prog, cubin)
open(out, "wb").write(cubin.raw)
PY
# The entry point's section: from its label to the next section's.
"$tools/nvdisasm" -c "$work/kernels.cubin" | awk -v start=".text.$kernel:" \
  '$0 == start { on = 1 } on && /^\.text\./ && $0 != start { exit } on { print }'
