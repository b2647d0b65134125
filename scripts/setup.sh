#!/usr/bin/env bash
# Sets up libtorch 2.11.0 for building and running uniattn, from PyPI wheels fetched with
# `pip download --no-deps` (cached in pip's cache and .cache/wheels):
#   torch==2.11.0 (lib/ and include/), nvidia-cuda-runtime==13.0.96 (libcudart.so.13) and
#   nvidia-cuda-cupti==13.0.85 (libcupti.so.13), both needed by libtorch_cpu.so.
# Unpacks into .cache/libtorch (git-ignored) and writes .cache/env.sh, which exports LIBTORCH
# and LD_LIBRARY_PATH:  scripts/setup.sh && . .cache/env.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache"
# Downloaded wheels are shared by every checkout of this user, so a fresh clone downloads nothing.
WHEELS="${UNIATTN_WHEELS:-$HOME/.cache/uniattn/wheels}"
LT="$CACHE/libtorch"
TORCH_VERSION=2.11.0
mkdir -p "$WHEELS" "$CACHE"

if [[ ! -f "$LT/build-version" ]]; then
  need=()
  compgen -G "$WHEELS/torch-${TORCH_VERSION}-*.whl" > /dev/null || need+=("torch==${TORCH_VERSION}")
  compgen -G "$WHEELS/nvidia_cuda_runtime-13.0.96-*.whl" > /dev/null || need+=("nvidia-cuda-runtime==13.0.96")
  compgen -G "$WHEELS/nvidia_cuda_cupti-13.0.85-*.whl" > /dev/null || need+=("nvidia-cuda-cupti==13.0.85")
  if ((${#need[@]})); then
    echo "setup: pip download ${need[*]}" >&2
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
      --platform manylinux_2_28_x86_64 --python-version 3.11 -d "$WHEELS" "${need[@]}" >&2
  fi
  # libtorch unpacks to about 1 GiB and a release build with its tests takes about 2 GiB more.
  free_mib=$(($(df -Pk "$CACHE" | awk 'NR == 2 { print $4 }') / 1024))
  if ((free_mib < 4096)); then
    echo "setup: only $free_mib MiB free under $CACHE; unpacking libtorch and building need about 4096 MiB" >&2
    exit 1
  fi
  tmp="$(mktemp -d "$CACHE/libtorch.XXXX")"
  trap 'rm -rf "$tmp"' EXIT
  echo "setup: unpacking libtorch into $LT" >&2
  python3 - "$tmp" "$WHEELS" "$TORCH_VERSION" <<'PY'
import glob, os, sys, zipfile, shutil
out, wheels, ver = sys.argv[1:]
torch = glob.glob(os.path.join(wheels, f"torch-{ver}-*.whl"))[0]
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
for pat, lib in [("nvidia_cuda_runtime-13.0.96-*.whl", "libcudart.so.13"), ("nvidia_cuda_cupti-13.0.85-*.whl", "libcupti.so.13")]:
    w = glob.glob(os.path.join(wheels, pat))[0]
    with zipfile.ZipFile(w) as z, z.open(f"nvidia/cu13/lib/{lib}") as s, open(os.path.join(out, "lib", lib), "wb") as d:
        shutil.copyfileobj(s, d)
with open(os.path.join(out, "build-version"), "w") as f:
    f.write(v + "\n")
PY
  rm -rf "$LT"
  mv "$tmp" "$LT"
  trap - EXIT
fi

cat > "$CACHE/env.sh" <<ENV
export LIBTORCH="$LT"
export LD_LIBRARY_PATH="$LT/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
ENV
echo "setup: libtorch $(cat "$LT/build-version") in $LT" >&2
