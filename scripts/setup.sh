#!/usr/bin/env bash
# Sets up libtorch 2.11.0 for building and running uniattn, from PyPI wheels fetched with
# `pip download --no-deps` into the user cache (scripts/cache.sh):
#   torch==2.11.0 (lib/ and include/), nvidia-cuda-runtime==13.0.96 (libcudart.so.13) and
#   nvidia-cuda-cupti==13.0.85 (libcupti.so.13), both needed by libtorch_cpu.so, and the CUDA
#   headers (nvidia-cuda-runtime, nvidia-cuda-crt==13.0.88) that the CUDA-graph shim
#   (crates/uniattn/cuda/) is compiled against; no CUDA toolkit or GPU is needed to build.
# Unpacks into $UNIATTN_CACHE/libtorch-2.11.0 and writes $UNIATTN_CACHE/env.sh, which exports
# LIBTORCH for building (the built binary finds libtorch through its rpath).
#   scripts/setup.sh            set up (downloads only what the wheel folder lacks)
#   scripts/setup.sh --download only download the wheels (CI runs this into an empty folder)
#   --with-nvrtc                also NVRTC (nvidia-cuda-nvrtc==13.0.88, libnvrtc.so.13), which a
#                               test compiles the custom kernels with on a machine without a GPU;
#                               env.sh then exports UNIATTN_NVRTC
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$ROOT/scripts/cache.sh"
WANT=("torch==$TORCH_VERSION" nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85 nvidia-cuda-crt==13.0.88)
NVRTC_VERSION=13.0.88
NVRTC_DIR="$UNIATTN_CACHE/nvrtc-$NVRTC_VERSION"
download_only=0 with_nvrtc=0
for arg in "$@"; do
  case $arg in
    --download) download_only=1 ;;
    --with-nvrtc) with_nvrtc=1 ;;
    *) echo "setup: unknown option $arg (expected --download, --with-nvrtc)" >&2; exit 2 ;;
  esac
done
((with_nvrtc)) && WANT+=(nvidia-cuda-nvrtc==$NVRTC_VERSION)

pip_fetch "${WANT[@]}"
((download_only)) && exit 0

if [[ ! -f "$LIBTORCH_DIR/build-version" ]]; then
  # libtorch unpacks to about 1 GiB and a release build with its tests takes about 3 GiB more.
  free_mib=$(($(df -Pk "$UNIATTN_CACHE" | awk 'NR == 2 { print $4 }') / 1024))
  if ((free_mib < 4096)); then
    echo "setup: only $free_mib MiB free under $UNIATTN_CACHE; unpacking libtorch and building need about 4096 MiB" >&2
    exit 1
  fi
  tmp="$(mktemp -d "$UNIATTN_CACHE/libtorch.XXXX")"
  trap 'rm -rf "$tmp"' EXIT
  echo "setup: unpacking libtorch into $LIBTORCH_DIR" >&2
  python3 - "$tmp" "$(wheel_of torch "$TORCH_VERSION")" "$(wheel_of nvidia-cuda-runtime 13.0.96)" \
    "$(wheel_of nvidia-cuda-cupti 13.0.85)" <<'PY'
import os, sys, zipfile, shutil
out, torch, cudart, cupti = sys.argv[1:]
with zipfile.ZipFile(torch) as z:
    for n in z.namelist():
        if n.startswith(("torch/lib/", "torch/include/", "torch/share/cmake/")) and not n.endswith("/"):
            dst = os.path.join(out, n[len("torch/"):])
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with z.open(n) as s, open(dst, "wb") as d:
                shutil.copyfileobj(s, d, 1 << 20)
            if n.endswith(".so") or ".so." in n:
                os.chmod(dst, 0o755)
    version = z.read("torch/version.py").decode()
v = [l.split("=", 1)[1].strip().strip("'\"") for l in version.splitlines() if l.startswith("__version__")][0]
for wheel, lib in [(cudart, "libcudart.so.13"), (cupti, "libcupti.so.13")]:
    with zipfile.ZipFile(wheel) as z, z.open(f"nvidia/cu13/lib/{lib}") as s, open(os.path.join(out, "lib", lib), "wb") as d:
        shutil.copyfileobj(s, d)
with open(os.path.join(out, "build-version"), "w") as f:
    f.write(v + "\n")
PY
  rm -rf "$LIBTORCH_DIR"
  mv "$tmp" "$LIBTORCH_DIR"
  trap - EXIT
fi

if [[ ! -f "$LIBTORCH_DIR/cuda-include/cuda_runtime_api.h" ]]; then
  echo "setup: unpacking the CUDA headers into $LIBTORCH_DIR/cuda-include" >&2
  python3 - "$LIBTORCH_DIR/cuda-include" "$(wheel_of nvidia-cuda-runtime 13.0.96)" "$(wheel_of nvidia-cuda-crt 13.0.88)" <<'PY'
import os, sys, zipfile
out, *wheels = sys.argv[1:]
tmp = out + ".part"
for w in wheels:
    with zipfile.ZipFile(w) as z:
        for n in z.namelist():
            if n.startswith("nvidia/cu13/include/") and not n.endswith("/"):
                dst = os.path.join(tmp, n[len("nvidia/cu13/include/"):])
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                with open(dst, "wb") as f:
                    f.write(z.read(n))
os.replace(tmp, out)
PY
fi

if ((with_nvrtc)) && [[ ! -f "$NVRTC_DIR/libnvrtc.so.13" ]]; then
  echo "setup: unpacking NVRTC into $NVRTC_DIR" >&2
  python3 - "$NVRTC_DIR" "$(wheel_of nvidia-cuda-nvrtc "$NVRTC_VERSION")" <<'PY'
import os, shutil, sys, zipfile
out, wheel = sys.argv[1:]
tmp = out + ".part"
os.makedirs(tmp, exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    for lib in ["libnvrtc.so.13", "libnvrtc-builtins.so.13.0"]:
        with z.open(f"nvidia/cu13/lib/{lib}") as s, open(os.path.join(tmp, lib), "wb") as d:
            shutil.copyfileobj(s, d, 1 << 20)
        os.chmod(os.path.join(tmp, lib), 0o755)
shutil.rmtree(out, ignore_errors=True)
os.replace(tmp, out)
PY
fi

cat > "$UNIATTN_CACHE/env.sh" <<ENV
export LIBTORCH="$LIBTORCH_DIR"
ENV
if ((with_nvrtc)); then
  echo "export UNIATTN_NVRTC=\"$NVRTC_DIR/libnvrtc.so.13\"" >> "$UNIATTN_CACHE/env.sh"
fi
echo "setup: libtorch $(cat "$LIBTORCH_DIR/build-version") in $LIBTORCH_DIR" >&2
