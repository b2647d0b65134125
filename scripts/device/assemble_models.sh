#!/usr/bin/env bash
# On the GPU machine. A call carries at most 64 MiB, so models travel as parts of one byte
# stream (`cat A.gguf B.gguf | split`), one part a call, appended to STREAM; `cut` then takes
# out every file of MANIFEST ("name bytes sha256" lines, in stream order) that the stream holds
# in full and is not yet in DIR, and checks its sha256 (a bad file is removed, and it fails).
#   scripts/device/assemble_models.sh append PART STREAM
#   scripts/device/assemble_models.sh cut STREAM MANIFEST DIR
set -euo pipefail
case $1 in
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
  *) echo "usage: $0 append PART STREAM | cut STREAM MANIFEST DIR" >&2; exit 2 ;;
esac
