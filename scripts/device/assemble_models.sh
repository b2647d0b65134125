#!/usr/bin/env bash
# A call to the GPU machine carries at most 64 MiB, so models (and data) travel as parts of one
# byte stream. Here, `split` writes DIR/manifest ("name bytes sha256" lines, in stream order)
# and the parts DIR/part000, part001, ... (the first FIRST bytes long, to travel beside the
# binaries; the others BYTES). There, each part is appended to STREAM, one a call; `cut` then
# takes out every file of MANIFEST that the stream holds in full and is not yet in DIR, and
# checks its sha256 (a bad file is removed, and it fails).
#   scripts/device/assemble_models.sh split DIR FIRST BYTES FILE...
#   scripts/device/assemble_models.sh append PART STREAM
#   scripts/device/assemble_models.sh cut STREAM MANIFEST DIR
set -euo pipefail
case $1 in
  split)
    dir=$2 first=$3 bytes=$4
    shift 4
    mkdir -p "$dir"
    for f in "$@"; do printf '%s %s %s\n' "$(basename "$f")" "$(stat -c %s "$f")" "$(sha256sum < "$f" | cut -d' ' -f1)"; done \
      > "$dir/manifest"
    cat "$@" | { head -c "$first" > "$dir/part000"; split -b "$bytes" -d -a 3 --numeric-suffixes=1 - "$dir/part"; }
    ls "$dir"/part* | wc -l | xargs echo "$dir: manifest and parts:" ;;
  append) cat "$2" >> "$3"; echo "$3: $(stat -c %s "$3") bytes" ;;
  cut)
    stream=$2 manifest=$3 dir=$4 offset=0
    have=$(stat -c %s "$stream")
    mkdir -p "$dir"
    while read -r name bytes sha; do
      if [[ ! -f $dir/$name ]] && ((offset + bytes <= have)); then
        dd if="$stream" of="$dir/$name.part" bs=4M iflag=skip_bytes,count_bytes skip="$offset" count="$bytes" status=none
        if [[ $(sha256sum < "$dir/$name.part" | cut -d' ' -f1) != "$sha" ]]; then
          rm -f "$dir/$name.part"
          echo "$name: sha256 mismatch (expected $sha)" >&2
          exit 1
        fi
        mv "$dir/$name.part" "$dir/$name"
        echo "$dir/$name: $bytes bytes, sha256 ok"
      fi
      offset=$((offset + bytes))
    done < "$manifest" ;;
  *) echo "usage: $0 split DIR FIRST BYTES FILE... | append PART STREAM | cut STREAM MANIFEST DIR" >&2; exit 2 ;;
esac
