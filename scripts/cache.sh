# Sourced by the other scripts: the one user-level cache that the scripts and the `uniattn`
# binary share (wheels, libtorch, models, texts, eval tasks). The binary resolves the same
# folder (crates/uniattn/src/cache.rs): $UNIATTN_CACHE, else $XDG_CACHE_HOME/uniattn, else
# ~/.cache/uniattn.
UNIATTN_CACHE="${UNIATTN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/uniattn}"
# Wheels may live elsewhere (CI proves the fresh path with an empty UNIATTN_WHEELS).
WHEELS="${UNIATTN_WHEELS:-$UNIATTN_CACHE/wheels}"
TORCH_VERSION=2.11.0
LIBTORCH_DIR="$UNIATTN_CACHE/libtorch-$TORCH_VERSION"
mkdir -p "$UNIATTN_CACHE" "$WHEELS"

# pip matches a --platform tag exactly, and the wheels we need carry different manylinux tags
# (torch manylinux_2_28, cuda-runtime manylinux2014/_2_17, cupti manylinux_2_25): name them all.
PIP_PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
  --platform manylinux_2_25_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64 --platform any)

pip_fetch() { # pip_fetch REQ... : download wheels (no deps) into $WHEELS unless present
  local missing=() req name ver
  for req in "$@"; do
    name="${req%%==*}" ver="${req##*==}"
    compgen -G "$WHEELS/${name//-/_}-${ver}-*.whl" > /dev/null || missing+=("$req")
  done
  if ((${#missing[@]})); then
    echo "fetch: pip download ${missing[*]}" >&2
    python3 -m pip download --quiet --no-deps --only-binary=:all: "${PIP_PLATFORMS[@]}" \
      --python-version 3.11 -d "$WHEELS" "${missing[@]}" >&2
  fi
}

wheel_of() { local name="$1" ver="$2"; ls "$WHEELS/${name//-/_}-${ver}-"*.whl | head -n1; }
