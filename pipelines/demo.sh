#!/bin/sh
# The demo on the built-in corpus: learn a tokenizer, encode, shard, verify,
# pretrain a tiny dense model, upcycle it to 4 experts (top-2), and train
# the dense model (continued pretraining) and the MoE for the same number of
# steps; build held-out tasks and evaluate all three; serve the dense model
# and the MoE at maximum throughput; summarise. The report with iso-FLOP
# budgets joins here when it lands.
#
#   STEPS=N               dense pretraining steps (default 200, ~1 min)
#   MORE=N                steps of each continuation (default 40)
#   CORPUS="a.txt b.txt"  text files to use (default: Debian's fortunes)
#   SPLIT=MODE            how files divide into documents (default separator=%)
#   VOCAB=N               tokenizer vocabulary size (default 8192)
#   OUT=DIR               where results go (default demo-out)
#   BIN=DIR               where the tools are (default bin)
set -eu

BIN=${BIN:-bin}
OUT=${OUT:-demo-out}
VOCAB=${VOCAB:-8192}
STEPS=${STEPS:-200}
MORE=${MORE:-40}
CONFIG=${CONFIG:-$(dirname "$0")/../configs/tiny.json}
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

TRAIN="--data $OUT/shards/train --val $OUT/shards/val --batch 8 --seq-len 128 --force"

step "train: pretrain $CONFIG for $STEPS steps -> $OUT/dense"
# shellcheck disable=SC2086  # TRAIN is a list of options
train --init "$CONFIG" --tokenizer "$OUT/tokenizer.json" $TRAIN --steps "$STEPS" \
    --lr 3e-3 --warmup 20 --eval-every 50 --out "$OUT/dense" > "$OUT/dense.train.mpk"

step "upcycle: dense -> 4 experts, top-2 -> $OUT/moe0"
upcycle --experts 4 --top-k 2 --force "$OUT/dense" "$OUT/moe0" > "$OUT/upcycle.mpk"

step "train: continued pretraining (dense) and the upcycled MoE, $MORE steps each"
# shellcheck disable=SC2086
train --from "$OUT/dense" $TRAIN --steps "$MORE" --lr 3e-4 --warmup 4 --out "$OUT/cpt" > "$OUT/cpt.train.mpk"
# shellcheck disable=SC2086
train --from "$OUT/moe0" $TRAIN --steps "$MORE" --lr 3e-4 --warmup 4 --out "$OUT/moe" > "$OUT/moe.train.mpk"

step "evaluate build: LAMBADA- and HellaSwag-style tasks from the held-out documents"
evaluate build --force --data "$OUT/shards/val" --tokenizer "$OUT/tokenizer.json" --out "$OUT/tasks"

step "evaluate: held-out loss and the task suite, dense / CPT / MoE"
evaluate --data "$OUT/shards/val" --suite "$OUT/tasks/icl_tasks.yaml" --gauntlet "$OUT/tasks/eval_gauntlet.yaml" \
    --seq-len 128 "$OUT/dense" "$OUT/cpt" "$OUT/moe" > "$OUT/evaluate.mpk"

step "serve-bench: maximum throughput, dense against MoE (the paper's 3500/300 lengths / 50)"
for run in dense moe; do
    serve-bench --model "$OUT/$run" --scale 50 --requests 32 --rates inf --kv-memory 64M > "$OUT/$run.serve.mpk"
done

step "summary"
shard stat "$OUT/shards" > "$OUT/shards.stat.mpk" 2>/dev/null
{
    records json "$OUT/shards.stat.mpk"
    records json "$OUT/evaluate.mpk" | jq -s -c '[.[] | select(.event == "summary")]'
    for run in dense moe; do
        records json "$OUT/$run.serve.mpk" | jq -c --arg run "$run" 'select(.event == "sweep_point")
            | {run: $run, serve_total_tokens_per_s: .total_tokens_per_s, serve_output_tokens_per_s: .output_tokens_per_s}'
    done | jq -s -c '.'
    for run in dense cpt moe; do
        records json "$OUT/$run.train.mpk" |
            jq -c --arg run "$run" '[., inputs] | {run: $run,
                params: (.[0].params), active_params: (.[0].active_params),
                steps: (map(select(.event == "train_step")) | length),
                tokens_per_s: (map(select(.event == "train_step") | .tokens_per_s) | sort | .[length / 2 | floor]),
                val_loss: (map(select(.event == "eval")) | last | .loss)}'
    done
} | jq -s '{shards: .[0], runs: [.[3:][] as $r | $r
          + ((.[1][] | select(.model | endswith("/" + $r.run)) | {bpb: .lm_bpb, core_average}) // {})
          + ((.[2][] | select(.run == $r.run) | del(.run)) // {})]}' > "$OUT/summary.json"
jq . "$OUT/summary.json"
jq -r '.runs[] | "\(.run): \(.params) params (\(.active_params) active), \(.steps) steps, \(.tokens_per_s | floor) tok/s training, val loss \(.val_loss), bpb \(.bpb), core average \(.core_average), serving \(.serve_total_tokens_per_s // "-") tok/s"' \
    "$OUT/summary.json" >&2
printf '\nresults in %s/: tokenizer.json, tokens.mpk, shards/, dense/, moe0/, cpt/, moe/, *.train.mpk, tasks/, evaluate.mpk, *.serve.mpk, summary.json\n' "$OUT" >&2
