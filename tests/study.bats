#!/usr/bin/env bats
# pipelines/study.sh at the micro scale, end to end: every step, every table
# and figure, the tables consistent with the records, reruns skip finished
# steps, and a failed step stops the pipeline naming the step and its log.

load helpers

setup_file() {
    export S="$BATS_FILE_TMPDIR/study"
    command -v gnuplot > /dev/null || return 0
    SCALE=micro OUT="$S" BIN="$UPCYC_BIN" "$BATS_TEST_DIRNAME/../pipelines/study.sh" 2> "$BATS_FILE_TMPDIR/first.err"
}

require_gnuplot() {
    command -v gnuplot > /dev/null || skip "gnuplot not installed (package gnuplot-nox)"
}

@test "study: the report, its tables and its figures (PNG and SVG) are all there" {
    require_gnuplot
    [ -s "$S/report.md" ]
    for t in runs pairs serving serve_points loss; do
        [ -s "$S/tables/$t.tsv" ] || { echo "missing table $t" >&2; return 1; }
    done
    for f in improvement ce latency loss; do
        [ "$(head -c 8 "$S/figures/$f.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || { echo "$f.png is not a PNG" >&2; return 1; }
        grep -q "<svg" "$S/figures/$f.svg" || { echo "$f.svg is not SVG" >&2; return 1; }
        grep -q "figures/$f.png" "$S/report.md" || { echo "report.md does not show $f" >&2; return 1; }
    done
    # the grid: dense, then CPT and upcycled at 50 and 100 percent
    [ "$(cut -f1 "$S/tables/runs.tsv" | tail -n +2 | tr '\n' ' ')" = "dense cpt-50 upcycled-50 cpt-100 upcycled-100 " ]
}

@test "study: tables agree with the records they come from" {
    require_gnuplot
    # each run's loss is its evaluate lm record's; improvement is against the dense loss
    records json "$S/eval/evaluate.mpk" | jq -r 'select(.event == "lm") | [(.model | split("/") | last), .loss] | @tsv' |
        sort > "$TMP/lm.tsv"
    tail -n +2 "$S/tables/runs.tsv" | cut -f1,8 | sort > "$TMP/table.tsv"
    diff "$TMP/lm.tsv" "$TMP/table.tsv"
    awk -F'\t' 'NR == 2 { d = $8 } NR > 1 { want = (d - $8) / d * 100; x = $11 - want; if (x > 1e-9 || x < -1e-9) exit 1 }' \
        "$S/tables/runs.tsv"
    # val_loss_last3: the mean of the run's last three eval records
    for run in cpt-50 upcycled-100; do
        want=$(records json "$S/runs/$run.mpk" | jq -s 'map(select(.event == "eval") | .loss) | .[-3:] | add / length')
        got=$(awk -F'\t' -v r="$run" '$1 == r { print $12 }' "$S/tables/runs.tsv")
        awk -v a="$want" -v b="$got" 'BEGIN { d = a - b; exit !(d < 1e-9 && d > -1e-9) }' || { echo "$run: $got, want $want" >&2; return 1; }
    done
    [ "$(records json "$S/runs/cpt-100.mpk" | jq -s 'map(select(.event == "eval")) | length')" -ge 3 ]
    # tokens are the runs' train_end records'; equal FLOPs per budget within one step's FLOPs
    for run in cpt-100 upcycled-50; do
        want=$(records json "$S/runs/$run.mpk" | jq 'select(.event == "train_end") | .tokens')
        [ "$(awk -F'\t' -v r="$run" '$1 == r { print $4 }' "$S/tables/runs.tsv")" = "$want" ]
    done
    awk -F'\t' 'NR > 1 { r = $3 / $2; if (r < 0.7 || r > 1.3) exit 1 }' "$S/tables/pairs.tsv"
    # serving: the maximum over each model's points, and the decrease against dense
    for m in dense moe0-top1 moe0-top2; do
        want=$(records json "$S/serve/$m.mpk" | jq -s 'map(select(.event == "sweep_point") | .total_tokens_per_s) | max')
        got=$(awk -F'\t' -v m="$m" '$1 == m { print $2 }' "$S/tables/serving.tsv")
        awk -v a="$want" -v b="$got" 'BEGIN { d = a - b; exit !(d < 1e-6 && d > -1e-6) }'
    done
    awk -F'\t' '$1 == "dense" { d = $2 } NR > 1 && d { x = $4 - (d - $2) / d * 100; if (x > 1e-9 || x < -1e-9) exit 1 }' \
        "$S/tables/serving.tsv"
}

@test "study: a rerun skips every finished step and rebuilds the same report" {
    require_gnuplot
    cp "$S/report.md" "$TMP/before.md"
    run env SCALE=micro OUT="$S" BIN="$UPCYC_BIN" "$BATS_TEST_DIRNAME/../pipelines/study.sh"
    assert_status 0
    [ "$(printf '%s\n' "$output" | grep -c 'done (skipped)')" -eq 17 ]
    cmp "$TMP/before.md" "$S/report.md"
}

@test "study: damaged outputs of a finished step are made again; a learning-rate sweep picks the best rate" {
    require_gnuplot
    cp -r "$S" "$TMP/s2"
    rm "$TMP/s2/runs/cpt-50/model.safetensors"
    run env SCALE=micro OUT="$TMP/s2" BIN="$UPCYC_BIN" LR_SWEEP="1e-4 3e-3" "$BATS_TEST_DIRNAME/../pipelines/study.sh"
    assert_status 0
    assert_output_contains "cpt-50                       outputs missing or damaged: running it again"
    [ -s "$TMP/s2/runs/cpt-50/model.safetensors" ]
    # the sweep trained both rates for both kinds and kept the lower validation loss
    for kind in cpt upcycled; do
        for lr in 1e-4 3e-3; do
            [ -s "$TMP/s2/runs/sweep-$kind-$lr.mpk" ] || { echo "no sweep run $kind $lr" >&2; return 1; }
        done
    done
    best=$(for lr in 1e-4 3e-3; do
        printf '%s %s\n' "$lr" "$(records json "$TMP/s2/runs/sweep-cpt-$lr.mpk" | jq -s 'map(select(.event == "eval")) | last | .loss')"
    done | sort -k2,2g | head -1 | cut -d' ' -f1)
    assert_output_contains "learning-rate sweep (1e-4 3e-3) at 50%: CPT $best"
}

@test "study: a tokenizer larger than the config's vocabulary grows the model's (SCALE=small's 16384 over tiny.json's 8192)" {
    require_gnuplot
    run env SCALE=micro OUT="$TMP/v" BIN="$UPCYC_BIN" VOCAB=9000 DENSE_STEPS=2 FRACTIONS=50 RATES=inf \
        "$BATS_TEST_DIRNAME/../pipelines/study.sh"
    assert_status 0
    [ "$(jq .vocab_size "$BATS_TEST_DIRNAME/../configs/tiny.json")" = 8192 ]
    [ "$(jq .vocab_size "$TMP/v/config.json")" = 9024 ]    # 9000 ids, to a multiple of 64
    [ "$(jq .vocab_size "$TMP/v/runs/dense/config.json")" = 9024 ]
}

@test "study: a failed step stops the pipeline, naming the step and its log" {
    echo '{"architectures": ["GPT2LMHeadModel"]}' > "$TMP/bad.json"
    run env SCALE=micro OUT="$TMP/s" CONFIG="$TMP/bad.json" BIN="$UPCYC_BIN" "$BATS_TEST_DIRNAME/../pipelines/study.sh"
    assert_status 65
    assert_output_contains "study: step dense failed; its log is $TMP/s/logs/dense.log"
    [ ! -e "$TMP/s/steps/dense" ] && [ -e "$TMP/s/steps/shards-cpt" ]
    run env SCALE=huge "$BATS_TEST_DIRNAME/../pipelines/study.sh"
    assert_status 64
}

@test "study: DEVICE reaches train, TOKENIZER replaces training one, SCALE=paper says what it needs" {
    # a tokenizer given in another form (tiktoken ranks here would do too) is converted, not trained
    "$UPCYC_BIN/tokenize" train --vocab-size 300 -o "$TMP/tok.json" "$BATS_TEST_DIRNAME/../README.md" 2> /dev/null
    run env SCALE=micro OUT="$TMP/s3" TOKENIZER="$TMP/tok.json" DEVICE=nope BIN="$UPCYC_BIN" \
        "$BATS_TEST_DIRNAME/../pipelines/study.sh"
    assert_status 64
    assert_output_contains "study: step dense failed"
    grep -q -- "--device nope: unknown device" "$TMP/s3/logs/dense.log"
    [ -e "$TMP/s3/steps/tokenizer" ]
    [ "$(jq '.model.vocab | length' "$TMP/s3/tokenizer.json")" = "$(jq '.model.vocab | length' "$TMP/tok.json")" ]
    run env SCALE=paper "$BATS_TEST_DIRNAME/../pipelines/study.sh"
    assert_status 64
    assert_output_contains "SCALE=paper needs CORPUS"
    run env SCALE=paper CORPUS=README.md "$BATS_TEST_DIRNAME/../pipelines/study.sh"
    assert_status 64
    assert_output_contains "SCALE=paper needs TOKENIZER"
    run env SCALE=paper PAPER_MODEL=8b CORPUS=README.md TOKENIZER=x "$BATS_TEST_DIRNAME/../pipelines/study.sh"
    assert_status 64
    assert_output_contains "expected 436m or 1.4b"
}

@test "study: DURATIONS pretrains one dense model per duration and compares them" {
    require_gnuplot
    # tokens per parameter: 0.001 and 0.002 of tiny.json's 1836160 parameters
    # at 4 x 64 tokens a step are 7 and 14 steps
    run env SCALE=micro OUT="$TMP/d" BIN="$UPCYC_BIN" DURATIONS="0.001 0.002" FRACTIONS=100 \
        "$BATS_TEST_DIRNAME/../pipelines/study.sh"
    assert_status 0
    assert_output_contains "pretraining for 0.002 tokens per parameter (14 steps of 4 x 64, 1836160 parameters)"
    for d in 0.001 0.002; do
        records json "$TMP/d/tpp-$d/runs/dense.mpk" | jq -s -e 'map(select(.event == "train_start")) | first | .params == 1836160' > /dev/null
        [ -s "$TMP/d/tpp-$d/report.md" ] || { echo "no report for $d" >&2; return 1; }
    done
    [ "$(records json "$TMP/d/tpp-0.001/runs/dense.mpk" | jq 'select(.event == "train_end") | .step')" = 7 ]
    [ "$(records json "$TMP/d/tpp-0.002/runs/dense.mpk" | jq 'select(.event == "train_end") | .tokens')" = 3584 ]
    # one tokenizer and one set of shards, shared
    [ "$(readlink "$TMP/d/tpp-0.002/shards-cpt")" = ../shards-cpt ]
    [ ! -e "$TMP/d/runs/dense" ]
    # the comparison table is the durations' own pairs, with their dense start
    for d in 0.001 0.002; do
        want=$(awk -F'\t' -v d="$d" 'NR == FNR { if ($1 == "dense") l = $8; next } FNR > 1 { print d, l, $1, $6, $7, $8 }' \
            "$TMP/d/tpp-$d/tables/runs.tsv" "$TMP/d/tpp-$d/tables/pairs.tsv")
        got=$(awk -F'\t' -v d="$d" '$1 == d { print $1, $3, $4, $5, $6, $7 }' "$TMP/d/tables/durations.tsv")
        [ "$want" = "$got" ] || { echo "$d: got '$got', want '$want'" >&2; return 1; }
    done
    [ "$(awk -F'\t' 'NR > 1 { print $1, $2 }' "$TMP/d/tables/serving.tsv" | tr '\n' ,)" = \
        "0.001 dense,0.001 moe0-top1,0.001 moe0-top2,0.002 dense,0.002 moe0-top1,0.002 moe0-top2," ]
    for f in improvement advantage; do
        [ "$(head -c 8 "$TMP/d/figures/$f.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ]
        grep -q "<svg" "$TMP/d/figures/$f.svg"
        grep -q "figures/$f.png" "$TMP/d/report.md"
    done
    grep -q "(tpp-0.002/report.md)" "$TMP/d/report.md"
    # a rerun skips every step of every duration
    run env SCALE=micro OUT="$TMP/d" BIN="$UPCYC_BIN" DURATIONS="0.001 0.002" FRACTIONS=100 \
        "$BATS_TEST_DIRNAME/../pipelines/study.sh"
    assert_status 0
    [ "$(printf '%s\n' "$output" | grep -c '^study: dense .*done (skipped)')" -eq 2 ]
    # refusals: not a number; DENSE is already pretrained
    run env SCALE=micro OUT="$TMP/d" BIN="$UPCYC_BIN" DURATIONS="1e" "$BATS_TEST_DIRNAME/../pipelines/study.sh"
    assert_status 64
    assert_output_contains "DURATIONS: 1e is not a number of tokens per parameter"
    run env SCALE=micro OUT="$TMP/d" BIN="$UPCYC_BIN" DURATIONS=1 DENSE="$TMP/d/tpp-0.001/runs/dense" DENSE_TOKENS=1792 \
        "$BATS_TEST_DIRNAME/../pipelines/study.sh"
    assert_status 64
    assert_output_contains "DURATIONS are pretraining durations"
}

@test "study: DENSE starts from a model pretrained elsewhere (HF layout), linked and left as it was" {
    require_gnuplot
    mkdir "$TMP/hf"
    cp "$S/runs/dense/config.json" "$S/runs/dense/model.safetensors" "$S/runs/dense/tokenizer.json" "$TMP/hf/"
    sum=$(cat "$TMP/hf"/* | cksum)
    run env SCALE=micro OUT="$TMP/s" BIN="$UPCYC_BIN" DENSE="$TMP/hf" "$BATS_TEST_DIRNAME/../pipelines/study.sh"
    assert_status 64
    assert_output_contains "DENSE needs DENSE_TOKENS"
    run env SCALE=micro OUT="$TMP/s" BIN="$UPCYC_BIN" DENSE="$TMP/nothing" DENSE_TOKENS=10 "$BATS_TEST_DIRNAME/../pipelines/study.sh"
    assert_status 66
    assert_output_contains "expected a checkpoint directory with config.json and tokenizer.json"
    # budgets are fractions of DENSE_TOKENS: 50% of 3072 is 1536 tokens, 6 steps of 4 x 64
    run env SCALE=micro OUT="$TMP/s" BIN="$UPCYC_BIN" DENSE="$TMP/hf" DENSE_TOKENS=3072 FRACTIONS=50 \
        "$BATS_TEST_DIRNAME/../pipelines/study.sh"
    assert_status 0
    [ "$(readlink "$TMP/s/runs/dense")" = "$TMP/hf" ]
    [ "$(records json "$TMP/s/runs/cpt-50.mpk" | jq 'select(.event == "train_end") | .tokens')" = 1536 ]
    cmp "$TMP/hf/tokenizer.json" "$TMP/s/tokenizer.json"
    # the dense model is scored like the others, and nothing wrote into it
    [ "$(cut -f1 "$TMP/s/tables/runs.tsv" | tail -n +2 | tr '\n' ' ')" = "dense cpt-50 upcycled-50 " ]
    awk -F'\t' '$1 == "dense" { exit !($8 > 0) }' "$TMP/s/tables/runs.tsv"
    grep -q "pretrained elsewhere on 3072 tokens" "$TMP/s/report.md"
    [ "$(ls "$TMP/hf" | tr '\n' ' ')" = "config.json model.safetensors tokenizer.json " ]
    [ "$(cat "$TMP/hf"/* | cksum)" = "$sum" ]
}

@test "study: a moved study still skips; a changed setting reruns its step and every step after it" {
    require_gnuplot
    cp -r "$S" "$TMP/moved"
    run env SCALE=micro OUT="$TMP/moved" BIN="$UPCYC_BIN" LR_CPT=1e-3 "$BATS_TEST_DIRNAME/../pipelines/study.sh"
    assert_status 0
    for s in tokenizer shards-pretrain shards-cpt shards-verify config dense upcycle-top2 upcycle-top1; do
        printf '%s\n' "$output" | grep -q "^study: $s  *done (skipped)$" || { echo "$s was not skipped: $output" >&2; return 1; }
    done
    assert_output_contains "cpt-50                       settings changed: running it again"
    assert_output_contains "upcycled-50                  an earlier step ran again: running it again"
    assert_output_contains "serve-moe0-top2              an earlier step ran again: running it again"
    [ "$(records json "$TMP/moved/runs/cpt-50.mpk" | jq -s 'map(select(.event == "train_step")) | map(.lr) | max')" = 0.001 ]
    # the study it was copied from is untouched
    [ "$(records json "$S/runs/cpt-50.mpk" | jq -s 'map(select(.event == "train_step")) | map(.lr) | max')" = 0.0003 ]
}

@test "study: a tokenize that fails mid-stream fails the shard step, though shard saw a well-formed stream" {
    mkdir "$TMP/bin"
    for t in "$UPCYC_BIN"/*; do ln -s "$t" "$TMP/bin/"; done
    rm "$TMP/bin/tokenize"
    # encode writes the first file's tokens, then fails as a full disk would
    cat > "$TMP/bin/tokenize" <<EOF
#!/bin/sh
if [ "\$1" = encode ]; then
    "$UPCYC_BIN/tokenize" encode --tokenizer "\$3" --split "\$5" "\$6" || exit
    echo "tokenize: stdout: No space left on device" >&2
    exit 74
fi
exec "$UPCYC_BIN/tokenize" "\$@"
EOF
    chmod +x "$TMP/bin/tokenize"
    run env SCALE=micro OUT="$TMP/s" BIN="$TMP/bin" "$BATS_TEST_DIRNAME/../pipelines/study.sh"
    assert_status 74
    assert_output_contains "study: step shards-pretrain failed"
    assert_output_contains "No space left on device"
    [ ! -e "$TMP/s/shards-pre" ] && [ ! -e "$TMP/s/steps/shards-pretrain" ]
}

@test "study: LAUNCH, PRECISION and MICRO_BATCH reach every training step; PRECISION evaluate and serve-bench too" {
    require_gnuplot
    command -v mpirun > /dev/null || skip "mpirun is not installed (openmpi-bin)"
    run env SCALE=micro OUT="$TMP/m" BIN="$UPCYC_BIN" DENSE_STEPS=4 FRACTIONS=50 RATES=inf \
        OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 \
        "LSAN_OPTIONS=suppressions=$FIXTURES/lsan-openmpi.supp:print_suppressions=0:fast_unwind_on_malloc=0" \
        LAUNCH="mpirun -np 2" PRECISION=bf16 MICRO_BATCH=1 "$BATS_TEST_DIRNAME/../pipelines/study.sh"
    assert_status 0
    for run in dense cpt-50 upcycled-50; do
        [ "$(records json "$TMP/m/runs/$run.mpk" | jq -s -c 'map(select(.event == "train_start")) | first | [.world_size, .precision]')" = '[2,"bf16"]' ] ||
            { echo "$run did not run in 2 processes on bf16 GEMMs" >&2; return 1; }
        [ "$(jq '.settings["micro-batch"]' "$TMP/m/runs/$run/trainer_state.json")" = 1 ]
    done
    [ "$(records json "$TMP/m/eval/evaluate.mpk" | jq -r 'select(.event == "summary") | .precision' | sort -u)" = bf16 ]
    for m in dense moe0-top1 moe0-top2; do
        [ "$(records json "$TMP/m/serve/$m.mpk" | jq -r 'select(.event == "memory") | .precision')" = bf16 ] ||
            { echo "serve-$m did not serve bf16" >&2; return 1; }
    done
    grep -q "(train: mpirun -np 2); bf16 GEMMs" "$TMP/m/report.md"
}
