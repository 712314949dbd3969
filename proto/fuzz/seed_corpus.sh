#!/bin/sh
# Seeds corpus/decode with the protocol test vectors (each alone and all in one stream),
# prefixed with a few chunking control bytes. Run from proto/fuzz.
set -eu
cd "$(dirname "$0")"
mkdir -p corpus/decode
hexes=$(grep -o 'hex: "[0-9a-f]*"' ../src/vectors.rs | sed 's/hex: "\(.*\)"/\1/')
i=0
all=""
for h in $hexes; do
    for ctl in 00 03 40; do
        printf '%s%s' "$ctl" "$h" | xxd -r -p > "corpus/decode/vector-$i-$ctl"
    done
    all="$all$h"
    i=$((i + 1))
done
printf '07%s' "$all" | xxd -r -p > corpus/decode/all-vectors
echo "seeded $(ls corpus/decode | wc -l) inputs into corpus/decode"
