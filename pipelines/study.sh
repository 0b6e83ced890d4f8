#!/bin/sh
# pipelines/study.sh: the paper's experiment as a pipeline. Pretrain a dense
# model; from it, continue pretraining (CPT) and train its sparse upcycle at
# budgets given as fractions of the pretraining tokens, the upcycled runs'
# tokens scaled by upcycle's iso-FLOP multiplier so every pair spends the
# same training FLOPs; evaluate every model; serve the dense model against
# its top-TOPK and top-1 upcycles; write the report (pipelines/report.sh).
# `man -l man/man7/upcyc-study.7` has all of it.
#
# Every step writes its outputs, then a marker in OUT/steps/ holding its
# command; a rerun skips steps whose marker exists, whose command is the same
# and whose outputs verify (shards pass `shard verify`, checkpoints have
# their files, records read back), and runs the others again, with every step
# after them. A failed step stops the pipeline naming the step and its log
# (OUT/logs/STEP.log).
#
#   SCALE=tiny|micro|small|paper   presets below (default tiny: two cores,
#                            minutes; paper: the paper's 436M (PAPER_MODEL=1.4b
#                            for the larger) on GPUs, with your CORPUS)
#   OUT=DIR                  results (default study-out)
#   CORPUS="files"           pretraining text (default: fortune files A..L)
#   CPT_CORPUS="files"       CPT / upcycling text (default: every fortune file,
#                            a shifted mix, as the paper did on purpose)
#   SPLIT=MODE               how files divide into documents (default separator=%)
#   DENSE=DIR                start from this dense checkpoint instead of
#                            pretraining: a Llama model in HF layout
#                            (config.json, model.safetensors or shards with
#                            an index, tokenizer.json), linked, not copied
#   DENSE_TOKENS=N           the tokens DENSE was pretrained on (required
#                            with DENSE: the budgets are fractions of it)
#   DURATIONS="100 230 460"  pretrain one dense model per duration, in tokens
#                            per parameter, and run the whole comparison from
#                            each (OUT/tpp-D/, sharing the tokenizer and
#                            shards); OUT/report.md compares the durations.
#                            Unset: one dense model of the scale's steps
#   FRACTIONS="10 20 ..."    budgets in % of the pretraining tokens
#   EXPERTS=8 TOPK=2         the upcycle (top-1 is also served)
#   LR_CPT, LR_UP            peak learning rates (the paper: 5e-5 and 1e-4)
#   LR_SWEEP="a b c"         first train both kinds at the smallest budget with
#                            each rate and keep the best by validation loss
#   TOKENIZER=FILE           use this tokenizer (any form `tokenize convert`
#                            reads: tokenizer.json, tiktoken ranks, GPT-2 files)
#                            instead of training one
#   DEVICE=cpu|cuda|auto     the backend of train, evaluate and serve-bench
#   PRECISION=fp32|bf16      the GEMM precision of train, evaluate and
#                            serve-bench (default fp32; paper: bf16)
#   MICRO_BATCH=M            train's --micro-batch (sequences per forward per
#                            process; default all of a process's share; paper: 4)
#   LAUNCH="mpirun -np 8"    how train runs (data-parallel processes)
#   BIN=DIR                  where the tools are (default bin)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
BIN=${BIN:-$root/bin}
OUT=${OUT:-study-out}
SCALE=${SCALE:-tiny}
SPLIT=${SPLIT:-separator=%}
PATH="$BIN:$PATH"
export PATH

# the presets; any of their variables given in the environment wins
case $SCALE in
micro) # the end-to-end test: seconds
    CONFIG=${CONFIG:-$root/configs/tiny.json} VOCAB=${VOCAB:-2048} BATCH=${BATCH:-4} SEQ=${SEQ:-64}
    DENSE_STEPS=${DENSE_STEPS:-12} FRACTIONS=${FRACTIONS:-"50 100"} EXPERTS=${EXPERTS:-4} LR_DENSE=${LR_DENSE:-3e-3}
    EVAL_LIMIT=${EVAL_LIMIT:-16} EVAL_SEQ=${EVAL_SEQ:-128} SERVE_SCALE=${SERVE_SCALE:-100}
    SERVE_REQUESTS=${SERVE_REQUESTS:-6} RATES=${RATES:-"50,inf"} TRAIN_EVAL_TOKENS=${TRAIN_EVAL_TOKENS:-1024} ;;
tiny) # two cores, about seven minutes
    CONFIG=${CONFIG:-$root/configs/tiny.json} VOCAB=${VOCAB:-8192} BATCH=${BATCH:-8} SEQ=${SEQ:-128}
    DENSE_STEPS=${DENSE_STEPS:-200} FRACTIONS=${FRACTIONS:-"10 20 40 80 100"} EXPERTS=${EXPERTS:-8}
    LR_DENSE=${LR_DENSE:-3e-3} EVAL_LIMIT=${EVAL_LIMIT:-200} EVAL_SEQ=${EVAL_SEQ:-128} SERVE_SCALE=${SERVE_SCALE:-50}
    SERVE_REQUESTS=${SERVE_REQUESTS:-96} RATES=${RATES:-"25,50,100,inf"} TRAIN_EVAL_TOKENS=${TRAIN_EVAL_TOKENS:-8192} ;;
paper) # the paper's models and budgets: GPUs, your corpus, days
    [ -n "${CORPUS:-}" ] || { echo "study: SCALE=paper needs CORPUS (the pretraining text; CPT_CORPUS for the shifted mix)" >&2; exit 64; }
    [ -n "${TOKENIZER:-}${DENSE:-}" ] || { echo "study: SCALE=paper needs TOKENIZER (cl100k_base.tiktoken: the presets' vocabulary is cl100k_base padded to 100352)" >&2; exit 64; }
    case ${PAPER_MODEL:-436m} in
    436m) CONFIG=${CONFIG:-$root/configs/paper-436m.json} ;;
    1.4b) CONFIG=${CONFIG:-$root/configs/paper-1.4b.json} ;;
    *) echo "study: PAPER_MODEL=$PAPER_MODEL: expected 436m or 1.4b" >&2; exit 64 ;;
    esac
    # 100 tokens per parameter (the paper also ran 230 and 460: DURATIONS),
    # batches of 512 x 4096 tokens (about 2M)
    BATCH=${BATCH:-512} SEQ=${SEQ:-4096} VOCAB=${VOCAB:-100352} DENSE_STEPS=${DENSE_STEPS:-0}
    [ -n "${DENSE:-}" ] || DURATIONS=${DURATIONS:-100}
    FRACTIONS=${FRACTIONS:-"10 20 40 80 100"} EXPERTS=${EXPERTS:-8} LR_DENSE=${LR_DENSE:-6e-4}
    EVAL_LIMIT=${EVAL_LIMIT:-1000} EVAL_SEQ=${EVAL_SEQ:-4096} SERVE_SCALE=${SERVE_SCALE:-1}
    SERVE_REQUESTS=${SERVE_REQUESTS:-256} RATES=${RATES:-"2,4,8,16,32,inf"} TRAIN_EVAL_TOKENS=${TRAIN_EVAL_TOKENS:-4194304}
    KV_MEMORY=${KV_MEMORY:-32G} LR_CPT=${LR_CPT:-5e-5} LR_UP=${LR_UP:-1e-4}
    # 4 x 4096 tokens per forward: 512 x 4096 at once would not fit a GPU
    PRECISION=${PRECISION:-bf16} MICRO_BATCH=${MICRO_BATCH:-4} ;;
small) # CPU hours or one GPU
    CONFIG=${CONFIG:-$root/configs/tiny.json} VOCAB=${VOCAB:-16384} BATCH=${BATCH:-16} SEQ=${SEQ:-512}
    DENSE_STEPS=${DENSE_STEPS:-3000} FRACTIONS=${FRACTIONS:-"10 20 40 80 100"} EXPERTS=${EXPERTS:-8}
    LR_DENSE=${LR_DENSE:-1e-3} EVAL_LIMIT=${EVAL_LIMIT:-1000} EVAL_SEQ=${EVAL_SEQ:-512} SERVE_SCALE=${SERVE_SCALE:-10}
    SERVE_REQUESTS=${SERVE_REQUESTS:-64} RATES=${RATES:-"1,2,4,8,inf"} TRAIN_EVAL_TOKENS=${TRAIN_EVAL_TOKENS:-262144} ;;
*)
    echo "study: SCALE=$SCALE: expected micro, tiny, small or paper" >&2
    exit 64 ;;
esac
TOPK=${TOPK:-2}
LR_CPT=${LR_CPT:-3e-4}
LR_UP=${LR_UP:-6e-4}
KV_MEMORY=${KV_MEMORY:-256M}
DEVICE=${DEVICE:-cpu}
LAUNCH=${LAUNCH:-}
PRECISION=${PRECISION:-fp32}
MICRO_BATCH=${MICRO_BATCH:-}

FORTUNES=/usr/share/games/fortunes
fortune_files() { find "$FORTUNES" -maxdepth 1 -type f ! -name '*.dat' ! -name '*.u8' | sort; }
if [ -z "${CORPUS:-}" ]; then
    CORPUS=$(fortune_files | awk -F/ '$NF < "m"')
    [ -n "$CORPUS" ] || { echo "study: no corpus: install Debian's fortunes package or set CORPUS" >&2; exit 66; }
fi
[ -n "${CPT_CORPUS:-}" ] || CPT_CORPUS=$(fortune_files)

if [ -n "${DENSE:-}" ]; then
    [ -s "$DENSE/config.json" ] && [ -s "$DENSE/tokenizer.json" ] ||
        { echo "study: DENSE=$DENSE: expected a checkpoint directory with config.json and tokenizer.json" >&2; exit 66; }
    case ${DENSE_TOKENS:-} in
    '' | *[!0-9]* | 0) echo "study: DENSE needs DENSE_TOKENS, the number of tokens it was pretrained on (the budgets are fractions of it)" >&2; exit 64 ;;
    esac
fi
for f in $FRACTIONS; do
    case $f in '' | *[!0-9]* | 0) echo "study: FRACTIONS: $f is not a whole percentage above 0" >&2; exit 64 ;; esac
done
for d in ${DURATIONS:-}; do
    echo "$d" | grep -Eq '^[0-9]*\.?[0-9]+$' || { echo "study: DURATIONS: $d is not a number of tokens per parameter" >&2; exit 64; }
done
[ -z "${DURATIONS:-}" ] || [ -z "${DENSE:-}" ] ||
    { echo "study: DURATIONS are pretraining durations; DENSE starts from a pretrained model" >&2; exit 64; }
mkdir -p "$OUT/steps" "$OUT/logs"
OUT=$(cd "$OUT" && pwd)

# Whether the outputs of a finished step are there and sound.
verify() {
    case $1 in
    tokenizer) [ -s "$OUT/tokenizer.json" ] ;;
    config) jq -e .vocab_size "$OUT/config.json" ;;
    shards-pretrain) shard verify "$OUT/shards-pre" ;;
    shards-cpt) shard verify "$OUT/shards-cpt" ;;
    dense | cpt-* | upcycled-* | sweep-*) [ -s "$OUT/runs/$1/config.json" ] &&
        { [ -s "$OUT/runs/$1/model.safetensors" ] || [ -s "$OUT/runs/$1/model.safetensors.index.json" ]; } &&
        records json "$OUT/runs/$1.mpk" ;;
    upcycle-top*) [ -s "$OUT/runs/moe0-${1#upcycle-}/config.json" ] ;;
    tasks) [ -s "$OUT/tasks/icl_tasks.yaml" ] ;;
    evaluate) records json "$OUT/eval/evaluate.mpk" ;;
    serve-*) records json "$OUT/serve/${1#serve-}.mpk" ;;
    *) true ;;
    esac > /dev/null 2>&1
}

# step NAME CMD...: run CMD (output to the log) unless NAME is done. Its
# marker holds the command, so a step whose command changed (a setting
# changed) runs again, and so does every step after one that ran: later
# steps read what earlier ones made. DEVICE and LAUNCH are not part of a
# training step's command: they change how it runs, not what it computes.
stale=${STUDY_STALE:-0}
step_command() { # CMD...: one word a line, OUT written as $OUT, so a moved study still matches
    printf '%s\n' "$@" | awk -v o="$OUT" '{ r = ""; s = $0
        while ((i = index(s, o)) > 0) { r = r substr(s, 1, i - 1) "$OUT"; s = substr(s, i + length(o)) }
        print r s }'
}
step() {
    name=$1
    shift
    marker=$OUT/steps/$name
    if [ -e "$marker" ]; then
        if ! verify "$name"; then
            why="outputs missing or damaged"
        elif [ "$(step_command "$@")" != "$(cat "$marker")" ]; then
            why="settings changed"
        elif [ "$stale" = 1 ]; then
            why="an earlier step ran again"
        else
            printf 'study: %-28s done (skipped)\n' "$name" >&2
            return 0
        fi
        printf 'study: %-28s %s: running it again\n' "$name" "$why" >&2
        rm -f "$marker"
    fi
    stale=1
    printf 'study: %-28s ' "$name" >&2
    started=$(date +%s)
    if "$@" > "$OUT/logs/$name.log" 2>&1; then
        step_command "$@" > "$marker"
        printf '%ss\n' "$(($(date +%s) - started))" >&2
    else
        rc=$?
        printf 'FAILED (exit %s)\n' "$rc" >&2
        echo "study: step $name failed; its log is $OUT/logs/$name.log:" >&2
        tail -n 5 "$OUT/logs/$name.log" | sed 's/^/    /' >&2
        exit "$rc"
    fi
}

# The parameter count of a Llama config.json (tied embeddings counted once),
# as train reports it: what tokens per parameter divide by.
config_params() {
    jq -e '(.hidden_size) as $d | (.head_dim // ($d / .num_attention_heads)) as $hd
        | (.num_key_value_heads // .num_attention_heads) as $kv
        | (.vocab_size * $d * (if .tie_word_embeddings then 1 else 2 end))
          + .num_hidden_layers * (2 * $d * .num_attention_heads * $hd + 2 * $d * $kv * $hd
                                  + 3 * $d * .intermediate_size + 2 * $d)
          + $d' "$1"
}

# The commands of the steps (each writes only its own outputs). Every
# setting a step depends on is on its command line (see step).
# train, through LAUNCH when given (mpirun, srun: data-parallel processes)
run_train() {
    # shellcheck disable=SC2086
    $LAUNCH train --device "$DEVICE" "$@"
}
train_run() { # NAME TRAIN-OPTIONS...: a run into OUT/runs/NAME, its records beside it
    n=$1
    shift
    run_train "$@" --force --out "$OUT/runs/$n" > "$OUT/runs/$n.mpk"
}
# the options every training run shares (words without spaces, expanded
# unquoted into each step's command line)
TRAIN_SHARED="--batch $BATCH --seq-len $SEQ --precision $PRECISION${MICRO_BATCH:+ --micro-batch $MICRO_BATCH}"
make_shards() { # NAME SPLIT CORPUS...
    n=$1 split=$2
    shift 2
    # a failed tokenize would only end shard's input early: remember its status
    rm -f "$OUT/logs/encode-$n.failed"
    { tokenize encode --tokenizer "$OUT/tokenizer.json" --split "$split" "$@" || echo $? > "$OUT/logs/encode-$n.failed"; } |
        shard --force "$OUT/shards-$n"
    [ ! -e "$OUT/logs/encode-$n.failed" ] || { rc=$(cat "$OUT/logs/encode-$n.failed"); rm -rf "$OUT/shards-$n"; return "$rc"; }
}
upcycle_to() { # K UPCYCLE-OPTIONS...
    k=$1
    shift
    upcycle "$@" --top-k "$k" --force "$OUT/runs/dense" "$OUT/runs/moe0-top$k" > "$OUT/runs/moe0-top$k.upcycle.mpk"
}
model_config() { # CONFIG: it, with a vocabulary that holds every token id of the
    # tokenizer (grown to a multiple of 64 when it does not), as OUT/config.json
    n=$(jq '[.model.vocab[]] + [.added_tokens[]?.id] | max + 1' "$OUT/tokenizer.json")
    jq --argjson n "$n" 'if .vocab_size < $n then .vocab_size = ((($n + 63) / 64 | floor) * 64) else . end' \
        "$1" > "$OUT/config.json"
}
link_dense() { # DIR: a model pretrained elsewhere; it has no train records (an empty stream)
    rm -rf "$OUT/runs/dense" && ln -s "$1" "$OUT/runs/dense" && : > "$OUT/runs/dense.mpk"
}
continue_step() { # NAME FROM TOKENS LR: a CPT or upcycled run of TOKENS
    steps=$((($3 + BATCH * SEQ / 2) / (BATCH * SEQ)))   # nearest: equal FLOPs within half a step
    [ "$steps" -ge 1 ] || steps=1
    # validation every tenth of the run: the report averages the last three
    # shellcheck disable=SC2086
    step "$1" train_run "$1" --from "$2" --data "$OUT/shards-cpt/train" --val "$OUT/shards-cpt/val" \
        $TRAIN_SHARED --steps "$steps" --lr "$4" --warmup $((steps / 10 + 1)) \
        --eval-every $((steps / 10 > 0 ? steps / 10 : 1)) --eval-tokens "$TRAIN_EVAL_TOKENS"
}

if [ -n "${STUDY_SHARED:-}" ]; then
    # one duration of several (OUT/tpp-D): the tokenizer and shards are the parent's
    step tokenizer ln -sfn ../tokenizer.json "$OUT/tokenizer.json"
    step shards-pretrain ln -sfn ../shards-pre "$OUT/shards-pre"
    step shards-cpt ln -sfn ../shards-cpt "$OUT/shards-cpt"
else
    if [ -n "${DENSE:-}" ]; then
        step tokenizer cp "$DENSE/tokenizer.json" "$OUT/tokenizer.json"
    elif [ -n "${TOKENIZER:-}" ]; then
        step tokenizer tokenize convert --tokenizer "$TOKENIZER" -o "$OUT/tokenizer.json"
    else
        # shellcheck disable=SC2086
        step tokenizer tokenize train --vocab-size "$VOCAB" --split "$SPLIT" -o "$OUT/tokenizer.json" $CORPUS
    fi
    # shellcheck disable=SC2086
    step shards-pretrain make_shards pre "$SPLIT" $CORPUS
    # shellcheck disable=SC2086
    step shards-cpt make_shards cpt "$SPLIT" $CPT_CORPUS
fi
step shards-verify sh -c "shard verify '$OUT/shards-pre' && shard verify '$OUT/shards-cpt'"
[ -n "${DENSE:-}" ] || step config model_config "$CONFIG"

# Several pretraining durations: each is a whole study of its own in
# OUT/tpp-D (this script again), its dense model trained for D tokens per
# parameter; then the report that compares them.
if [ -n "${DURATIONS:-}" ] && [ -z "${STUDY_SHARED:-}" ]; then
    params=$(config_params "$OUT/config.json") || { echo "study: $CONFIG: cannot read the model's shape" >&2; exit 65; }
    for d in $DURATIONS; do
        steps=$(awk -v d="$d" -v p="$params" -v t=$((BATCH * SEQ)) 'BEGIN { s = int(d * p / t + 0.5); print s < 1 ? 1 : s }')
        echo "study: === pretraining for $d tokens per parameter ($steps steps of $BATCH x $SEQ, $params parameters): $OUT/tpp-$d" >&2
        STUDY_SHARED=1 STUDY_STALE=$stale OUT=$OUT/tpp-$d DENSE_STEPS=$steps "$0"
    done
    rm -f "$OUT/steps/report"
    # shellcheck disable=SC2086
    step report "$here/report_durations.sh" "$OUT" $DURATIONS
    echo "study: the report is $OUT/report.md (each duration's in $OUT/tpp-D/report.md)" >&2
    exit 0
fi

mkdir -p "$OUT/runs" "$OUT/eval" "$OUT/serve"
if [ -n "${DENSE:-}" ]; then
    step dense link_dense "$(cd "$DENSE" && pwd)"
else
    # shellcheck disable=SC2086
    step dense train_run dense --init "$OUT/config.json" --tokenizer "$OUT/tokenizer.json" --data "$OUT/shards-pre/train" \
        --val "$OUT/shards-pre/val" $TRAIN_SHARED --steps "$DENSE_STEPS" \
        --lr "$LR_DENSE" --warmup $((DENSE_STEPS / 10 + 1))
fi
# the upcycle that trains (top-TOPK), and top-1 for serving
step "upcycle-top$TOPK" upcycle_to "$TOPK" --experts "$EXPERTS" --seq-len "$SEQ"
[ "$TOPK" = 1 ] || step upcycle-top1 upcycle_to 1 --experts "$EXPERTS" --seq-len "$SEQ"

# budgets: fractions of the pretraining tokens; the upcycled runs get as
# many tokens as the same FLOPs buy (upcycle's iso-FLOP multiplier)
if [ -n "${DENSE:-}" ]; then
    dense_tokens=$DENSE_TOKENS
else
    dense_tokens=$(records json "$OUT/runs/dense.mpk" | jq -s 'map(select(.event == "train_end")) | last | .tokens')
fi
mult=$(records json "$OUT/runs/moe0-top$TOPK.upcycle.mpk" | jq '.iso_flop_multiplier')
# a short learning-rate sweep at the smallest budget, when asked for
if [ -n "${LR_SWEEP:-}" ]; then
    f0=$(echo $FRACTIONS | tr ' ' '\n' | sort -n | head -1)
    sweep_tokens=$((dense_tokens * f0 / 100))
    sweep_up_tokens=$(awk -v t="$sweep_tokens" -v m="$mult" 'BEGIN { printf "%d", t * m }')
    for lr in $LR_SWEEP; do
        continue_step "sweep-cpt-$lr" "$OUT/runs/dense" "$sweep_tokens" "$lr"
        continue_step "sweep-upcycled-$lr" "$OUT/runs/moe0-top$TOPK" "$sweep_up_tokens" "$lr"
    done
    best() { # KIND: the swept rate with the lowest final validation loss
        for lr in $LR_SWEEP; do
            printf '%s\t%s\n' "$lr" "$(records json "$OUT/runs/sweep-$1-$lr.mpk" | jq -s 'map(select(.event == "eval")) | last | .loss')"
        done | sort -t "$(printf '\t')" -k2,2g | head -1 | cut -f1
    }
    LR_CPT=$(best cpt)
    LR_UP=$(best upcycled)
    echo "study: learning-rate sweep ($LR_SWEEP) at $f0%: CPT $LR_CPT, upcycled $LR_UP" >&2
fi

for f in $FRACTIONS; do
    tokens=$((dense_tokens * f / 100))
    up_tokens=$(awk -v t="$tokens" -v m="$mult" 'BEGIN { printf "%d", t * m }')
    continue_step "cpt-$f" "$OUT/runs/dense" "$tokens" "$LR_CPT"
    continue_step "upcycled-$f" "$OUT/runs/moe0-top$TOPK" "$up_tokens" "$LR_UP"
done

step tasks evaluate build --force --data "$OUT/shards-cpt/val" --tokenizer "$OUT/tokenizer.json" --out "$OUT/tasks"
models="$OUT/runs/dense"
for f in $FRACTIONS; do
    models="$models $OUT/runs/cpt-$f $OUT/runs/upcycled-$f"
done
# shellcheck disable=SC2086
step evaluate sh -c "evaluate --device $DEVICE --precision $PRECISION --data '$OUT/shards-cpt/val' --suite '$OUT/tasks/icl_tasks.yaml' \
    --gauntlet '$OUT/tasks/eval_gauntlet.yaml' --limit $EVAL_LIMIT --seq-len $EVAL_SEQ $models > '$OUT/eval/evaluate.mpk'"

serve_models="dense moe0-top1"
[ "$TOPK" = 1 ] || serve_models="$serve_models moe0-top$TOPK"
for m in $serve_models; do
    step "serve-$m" sh -c "serve-bench --device $DEVICE --precision $PRECISION --model '$OUT/runs/$m' --scale $SERVE_SCALE \
        --requests $SERVE_REQUESTS --rates $RATES --kv-memory $KV_MEMORY > '$OUT/serve/$m.mpk'"
done

# the dense model's pretraining in tokens per parameter, for the settings line
params=$(config_params "$OUT/runs/dense/config.json" 2> /dev/null) &&
    tpp=$(awk -v t="$dense_tokens" -v p="$params" 'BEGIN { printf "%.4g", t / p }') || tpp=?
if [ -n "${DENSE:-}" ]; then
    start="dense model $DENSE, pretrained elsewhere on $dense_tokens tokens ($tpp per parameter)"
else
    start="config $(basename "$CONFIG"); vocabulary $VOCAB; dense pretraining $DENSE_STEPS steps, $dense_tokens tokens ($tpp per parameter; lr $LR_DENSE)"
fi
cat > "$OUT/settings.txt" <<EOF
scale $SCALE; device $DEVICE${LAUNCH:+ (train: $LAUNCH)}; $PRECISION GEMMs; $start; batch $BATCH x $SEQ tokens; budgets $FRACTIONS %; upcycle $EXPERTS experts, top-$TOPK (iso-FLOP multiplier $mult); lr CPT $LR_CPT, upcycled $LR_UP${LR_SWEEP:+ (best of $LR_SWEEP)}; cosine schedule, 10% warmup; serving at lengths / $SERVE_SCALE, rates $RATES
EOF
rm -f "$OUT/steps/report"   # the report is always rebuilt from the records
step report "$here/report.sh" "$OUT"
echo "study: the report is $OUT/report.md (figures in $OUT/figures/)" >&2
