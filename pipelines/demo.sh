#!/bin/sh
# The demo on the built-in corpus: learn a tokenizer, encode, shard, verify,
# and summarise. Later stages of the study (train, upcycle, evaluate,
# serve-bench, report) join here as they land.
#
#   CORPUS="a.txt b.txt"  text files to use (default: Debian's fortunes)
#   SPLIT=MODE            how files divide into documents (default separator=%)
#   VOCAB=N               tokenizer vocabulary size (default 8192)
#   OUT=DIR               where results go (default demo-out)
#   BIN=DIR               where the tools are (default bin)
set -eu

BIN=${BIN:-bin}
OUT=${OUT:-demo-out}
VOCAB=${VOCAB:-8192}
FORTUNES=/usr/share/games/fortunes
if [ -z "${CORPUS:-}" ]; then
    # Every fortune file: plain text, one quotation per %-separated record.
    CORPUS=$(find "$FORTUNES" -maxdepth 1 -type f ! -name '*.dat' ! -name '*.u8' | sort)
    SPLIT=${SPLIT:-separator=%}
    [ -n "$CORPUS" ] || { echo "demo: no corpus: install Debian's fortunes package or set CORPUS" >&2; exit 66; }
fi
SPLIT=${SPLIT:-file}
PATH="$BIN:$PATH"

step() { printf '\n== %s\n' "$*" >&2; }

mkdir -p "$OUT"
# shellcheck disable=SC2086  # CORPUS is a list of paths
step "tokenize train: a $VOCAB-token byte-level BPE on the corpus"
tokenize train -v --vocab-size "$VOCAB" --split "$SPLIT" -o "$OUT/tokenizer.json" $CORPUS

step "tokenize encode: corpus -> token stream"
tokenize encode -v --tokenizer "$OUT/tokenizer.json" --split "$SPLIT" -o "$OUT/tokens.mpk" $CORPUS

step "shard: token stream -> $OUT/shards/{train,val}"
shard --force "$OUT/shards" "$OUT/tokens.mpk"

step "shard verify"
shard verify "$OUT/shards"

step "round trip: shard cat gives back the token stream"
if shard cat "$OUT/shards" | cmp -s - "$OUT/tokens.mpk"; then
    echo "shard cat reproduces the token stream byte for byte" >&2
else
    echo "demo: shard cat differs from $OUT/tokens.mpk" >&2
    exit 70
fi

step "summary"
shard stat "$OUT/shards" > "$OUT/shards.stat.mpk" 2>/dev/null
records json "$OUT/shards.stat.mpk" > "$OUT/summary.json"
if command -v jq >/dev/null 2>&1; then jq . "$OUT/summary.json"; else cat "$OUT/summary.json"; fi
printf '\nresults in %s/: tokenizer.json, tokens.mpk, shards/, summary.json\n' "$OUT" >&2
