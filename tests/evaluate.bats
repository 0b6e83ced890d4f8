#!/usr/bin/env bats
# evaluate: continuation scoring (lib/lm_score.h), held-out cross-entropy,
# in-context-learning tasks, the task builder, and bad input.

load helpers

require_unit() {
    [ -x "$UPCYC_UNIT/$1" ] || skip "unit test binary $1 not built in $UPCYC_UNIT"
}

@test "lm_score: batched continuation log-likelihoods equal one-at-a-time forwards; greedy decoding" {
    require_unit test_lm_score
    run "$UPCYC_UNIT/test_lm_score"
    assert_status 0
    assert_output_contains "test_lm_score: all checks passed"
}

# A 512-token tokenizer, shards of two fortune files, a tiny model trained
# for a few steps (F32, bos = eos = the tokenizer's EOS), and the builder's
# tasks from the val split: made once per file.
setup_file() {
    export D="$BATS_FILE_TMPDIR"
    local corpus="/usr/share/games/fortunes/fortunes /usr/share/games/fortunes/science"
    # shellcheck disable=SC2086
    "$UPCYC_BIN/tokenize" train --vocab-size 512 --split separator=% -o "$D/tok.json" $corpus
    # shellcheck disable=SC2086
    "$UPCYC_BIN/tokenize" encode --tokenizer "$D/tok.json" --split separator=% -o "$D/tokens.mpk" $corpus
    "$UPCYC_BIN/shard" --val-fraction 0.1 --chunk-tokens 4096 "$D/shards" "$D/tokens.mpk"
    cp "$FIXTURES/model/tiny-512.json" "$D/tiny.json"
    "$UPCYC_BIN/train" --init "$D/tiny.json" --data "$D/shards/train" --val "$D/shards/val" \
        --tokenizer "$D/tok.json" --batch 4 --seq-len 32 --steps 30 --lr 1e-2 --warmup 2 \
        --out "$D/ckpt" > "$D/train.mpk" 2> /dev/null
    "$UPCYC_BIN/evaluate" build --data "$D/shards/val" --tokenizer "$D/tok.json" --out "$D/tasks" 2> /dev/null
}

@test "evaluate: usage errors exit 64 with one line" {
    for args in "" "$D/ckpt" "--gauntlet $D/tasks/eval_gauntlet.yaml $D/ckpt" \
        "--data $D/shards/val --out $TMP/x $D/ckpt" "build --data $D/shards/val" \
        "--data $D/shards/val --seq-len 500 $D/ckpt" "--bogus $D/ckpt"; do
        # shellcheck disable=SC2086
        run evaluate $args
        assert_status 64
        assert_one_error_line evaluate
    done
}

@test "evaluate build: the task files, deterministic, never replaced without --force" {
    for f in lambada.jsonl hellaswag.jsonl icl_tasks.yaml eval_gauntlet.yaml; do
        [ -s "$D/tasks/$f" ] || { echo "missing $f" >&2; return 1; }
    done
    # every line is an item of its type
    [ "$(jq -c 'select(has("context") and has("continuation"))' "$D/tasks/lambada.jsonl" | wc -l)" -eq "$(wc -l < "$D/tasks/lambada.jsonl")" ]
    [ "$(jq -c 'select((.choices | length) == 4 and .gold >= 0 and .gold < 4)' "$D/tasks/hellaswag.jsonl" | wc -l)" -eq "$(wc -l < "$D/tasks/hellaswag.jsonl")" ]
    evaluate build --data "$D/shards/val" --tokenizer "$D/tok.json" --out "$TMP/again" 2> /dev/null
    diff -r "$D/tasks" "$TMP/again"
    run evaluate build --data "$D/shards/val" --tokenizer "$D/tok.json" --out "$TMP/again"
    assert_status 73
    evaluate build --data "$D/shards/val" --tokenizer "$D/tok.json" --seed 7 --force --out "$TMP/again" 2> /dev/null
    ! cmp -s "$D/tasks/hellaswag.jsonl" "$TMP/again/hellaswag.jsonl" || { echo "another seed, same items" >&2; return 1; }
}

@test "evaluate: held-out loss equals train's validation loss on the same windows" {
    evaluate --data "$D/shards/val" --seq-len 32 --batch 4 "$D/ckpt" > "$TMP/e.mpk"
    want=$(records json < "$D/train.mpk" | jq -r 'select(.event=="eval") | .loss' | tail -1)
    got=$(records json < "$TMP/e.mpk" | jq -r 'select(.event=="lm") | .loss')
    awk -v a="$want" -v b="$got" 'BEGIN { d = a - b; exit !(d < 1e-9 && d > -1e-9) }' ||
        { echo "train eval $want, evaluate $got" >&2; return 1; }
    # bits per byte: fewer bits per byte than nats per token / ln 2 (tokens hold several bytes)
    records json < "$TMP/e.mpk" | jq -s -e 'map(select(.event=="lm"))[0] | .bpb > 0 and .bpb < .loss / 0.6931 and .ppl > 1' > /dev/null
    # --tokens limits the tokens scored
    evaluate --data "$D/shards/val" --seq-len 32 --batch 4 --tokens 300 "$D/ckpt" > "$TMP/t.mpk"
    [ "$(records json < "$TMP/t.mpk" | jq 'select(.event=="lm") | .tokens')" -le 384 ]
}

@test "evaluate: --precision bf16 scores close to fp32, recorded; its weights rounded once give the bits of rounding per GEMM" {
    local args="--data $D/shards/val --seq-len 32 --batch 4 --suite $D/tasks/icl_tasks.yaml --limit 4 --per-item"
    # shellcheck disable=SC2086
    evaluate $args "$D/ckpt" > "$TMP/f.mpk" 2> /dev/null
    # shellcheck disable=SC2086
    evaluate $args --precision bf16 "$D/ckpt" > "$TMP/h.mpk" 2> /dev/null
    # shellcheck disable=SC2086
    UPC_BF16_WEIGHTS=0 evaluate $args --precision bf16 "$D/ckpt" > "$TMP/h0.mpk" 2> /dev/null
    [ "$(records json < "$TMP/f.mpk" | jq -r 'select(.event=="summary") | .precision')" = fp32 ]
    [ "$(records json < "$TMP/f.mpk" | jq -r 'select(.event=="summary") | .device')" = cpu ]
    [ "$(records json < "$TMP/h.mpk" | jq -r 'select(.event=="summary") | .precision')" = bf16 ]
    f=$(records json < "$TMP/f.mpk" | jq -r 'select(.event=="lm") | .loss')
    h=$(records json < "$TMP/h.mpk" | jq -r 'select(.event=="lm") | .loss')
    awk -v a="$f" -v b="$h" 'BEGIN { d = (a - b) / a; exit !(a != b && d < 0.02 && d > -0.02) }' ||
        { echo "fp32 loss $f, bf16 $h" >&2; return 1; }
    # every score the same bits with the weights rounded per GEMM
    scores() { records json < "$1" | jq -c 'select(.event=="lm" or .event=="item") | del(.wall_s)'; }
    [ "$(scores "$TMP/h.mpk" | wc -l)" -gt 4 ]
    diff <(scores "$TMP/h.mpk") <(scores "$TMP/h0.mpk")
    run evaluate --data "$D/shards/val" --precision fp16 "$D/ckpt"
    assert_status 64
    assert_one_error_line evaluate
    assert_output_contains "--precision fp16: expected fp32 or bf16"
    run evaluate build --data "$D/shards/val" --tokenizer "$D/tok.json" --out "$TMP/b" --precision bf16
    assert_status 64
    [ ! -e "$TMP/b" ]
}

@test "evaluate: log-likelihoods and choices equal an independent pure-Python forward" {
    command -v python3 > /dev/null || skip "python3 not installed"
    # short items: the pure-Python forward is slow
    jq -c 'select((.query + (.choices | join(""))) | length < 160)' "$D/tasks/hellaswag.jsonl" | head -6 > "$TMP/mc.jsonl"
    jq -c 'select((.context + .continuation) | length < 120)' "$D/tasks/lambada.jsonl" | head -4 > "$TMP/lm.jsonl"
    [ "$(wc -l < "$TMP/mc.jsonl")" -eq 6 ] && [ "$(wc -l < "$TMP/lm.jsonl")" -eq 4 ]
    cat > "$TMP/suite.yaml" <<'YAML'
icl_tasks:
- label: ref_mc
  dataset_uri: mc.jsonl
  num_fewshot: [0]
  icl_task_type: multiple_choice
- label: ref_lm
  dataset_uri: lm.jsonl
  num_fewshot: [0]
  icl_task_type: language_modeling
YAML
    evaluate --suite "$TMP/suite.yaml" --per-item --seq-len 128 "$D/ckpt" 2> /dev/null | records json > "$TMP/items.jsonl"
    mkdir "$TMP/texts"
    python3 "$BATS_TEST_DIRNAME/evaluate_reference.py" texts "$TMP/mc.jsonl" "$TMP/lm.jsonl" "$TMP/texts"
    tokenize encode --tokenizer "$D/tok.json" --split file -o "$TMP/ids.mpk" "$TMP"/texts/t*.txt
    records json --tokens "$TMP/ids.mpk" > "$TMP/ids.jsonl"
    run python3 "$BATS_TEST_DIRNAME/evaluate_reference.py" check "$D/ckpt" "$TMP/mc.jsonl" "$TMP/lm.jsonl" \
        "$TMP/ids.jsonl" "$TMP/items.jsonl"
    assert_status 0
    assert_output_contains "10 items agree"
    # and the check can fail: another checkpoint's weights give other numbers
    cp -r "$D/ckpt" "$TMP/other"
    train --init "$D/tiny.json" --data "$D/shards/train" --tokenizer "$D/tok.json" --batch 4 --seq-len 32 \
        --steps 1 --seed 9 --force --out "$TMP/other" > /dev/null 2>&1
    run python3 "$BATS_TEST_DIRNAME/evaluate_reference.py" check "$TMP/other" "$TMP/mc.jsonl" "$TMP/lm.jsonl" \
        "$TMP/ids.jsonl" "$TMP/items.jsonl"
    assert_status 1
}

@test "evaluate: several checkpoints, task and summary records, gauntlet arithmetic" {
    upcycle --experts 4 --top-k 2 "$D/ckpt" "$TMP/moe" > /dev/null 2>&1
    evaluate --suite "$D/tasks/icl_tasks.yaml" --gauntlet "$D/tasks/eval_gauntlet.yaml" --limit 20 \
        --seq-len 128 "$D/ckpt" "$TMP/moe" > "$TMP/e.mpk" 2> "$TMP/table"
    records json < "$TMP/e.mpk" > "$TMP/e.jsonl"
    # three task records per model (lambada 0 and 3 shots, hellaswag 0), 20 items each
    # (scored, or skipped when a continuation does not fit the window)
    [ "$(jq -c 'select(.event=="task") | [.model, .label, .num_fewshot, .items]' "$TMP/e.jsonl" | wc -l)" -eq 6 ]
    [ "$(jq 'select(.event=="task") | .items + .skipped' "$TMP/e.jsonl" | sort -u)" = 20 ]
    # the upcycled model reproduces its parent: same accuracies
    [ "$(jq -c 'select(.event=="task") | [.label, .num_fewshot, .acc, .acc_sum, .acc_norm]' "$TMP/e.jsonl" | sort | uniq | wc -l)" -eq 3 ]
    # the four choices of a hellaswag item run their shared context once
    # (whole blocks of it); lambada's items share nothing but the first token
    jq -s -e 'map(select(.event=="task" and .label=="hellaswag_heldout"))
              | length == 2 and all(.tokens_shared > 0 and .tokens_run > 0)' "$TMP/e.jsonl" > /dev/null
    jq -s -e 'map(select(.event=="task" and .label=="lambada_heldout")) | all(.tokens_shared == 0)' \
        "$TMP/e.jsonl" > /dev/null
    # core average = mean over the category's benchmarks of (acc - baseline) / (1 - baseline)
    jq -s -e '[.[] | select(.event=="task")] as $t | [.[] | select(.event=="summary")] | all(
        . as $s | ($t | map(select(.model == $s.model and .num_fewshot == 0))
                      | map(if .label == "hellaswag_heldout" then (.acc - 0.25) / 0.75 else .acc end)
                      | add / length) as $want
        | ($s.core_average - $want | fabs) < 1e-12)' "$TMP/e.jsonl" > /dev/null
    grep -q "core" "$TMP/table"
}

@test "evaluate: bad task files, mismatched tokenizer, missing checkpoint: one line, nothing half-written" {
    printf '{"query": "a", "choices": ["b", "c"], "gold": 1}\n{"query": "a", "choices": ["b"], "gold": 3}\n' > "$TMP/bad.jsonl"
    printf 'icl_tasks:\n- label: bad\n  dataset_uri: bad.jsonl\n  num_fewshot: [0]\n  icl_task_type: multiple_choice\n' > "$TMP/s.yaml"
    run evaluate --suite "$TMP/s.yaml" "$D/ckpt"
    assert_status 65
    assert_output_contains "bad.jsonl:2"
    printf '{"query": "a", "choices": ["b", "c"], "gold": 1\n' > "$TMP/bad.jsonl"
    run evaluate --suite "$TMP/s.yaml" "$D/ckpt"
    assert_status 65
    assert_output_contains "bad.jsonl:1"
    tokenize train --vocab-size 300 -o "$TMP/other.json" /usr/share/games/fortunes/science 2> /dev/null
    cp -r "$D/ckpt" "$TMP/c2"
    cp "$TMP/other.json" "$TMP/c2/tokenizer.json"
    run evaluate --data "$D/shards/val" --seq-len 32 "$TMP/c2"
    assert_status 65
    assert_output_contains "differs from the one that made"
    run evaluate --data "$D/shards/val" "$TMP/nothing"
    assert_status 66
    assert_one_error_line evaluate
    run sh -c "evaluate --data '$D/shards/val' --seq-len 32 '$D/ckpt' > /dev/full"
    assert_status 74
}

@test "evaluate: schema and generation tasks through the tool" {
    cp "$BATS_TEST_DIRNAME/fixtures/icl/schema.jsonl" "$BATS_TEST_DIRNAME/fixtures/icl/gen.jsonl" "$TMP/"
    cat > "$TMP/s.yaml" <<'YAML'
icl_tasks:
- label: wsc
  dataset_uri: schema.jsonl
  num_fewshot: [0, 1]
  icl_task_type: schema
- label: qa
  dataset_uri: gen.jsonl
  num_fewshot: [0]
  icl_task_type: generation_task_with_answers
YAML
    evaluate --suite "$TMP/s.yaml" --per-item --seq-len 128 "$D/ckpt" 2> /dev/null | records json > "$TMP/r.jsonl"
    # schema: one candidate per context option; the prediction is the highest mean log-likelihood
    jq -s -e --argjson n "$(wc -l < "$TMP/schema.jsonl")" '[.[] | select(.event=="item" and .label=="wsc")] |
        length == 2 * $n and all(
            (.logprob | length) >= 2 and
            ([.logprob, .tokens] | transpose | map(.[0] / .[1])) as $m |
            ($m | index($m | max)) == .pred and .correct == (.pred == .gold))' "$TMP/r.jsonl" > /dev/null
    # generation: an answer equal to what the model generates is correct, another is not
    gen0=$(jq -r 'select(.event=="item" and .label=="qa" and .item==0) | .generated' "$TMP/r.jsonl")
    jq -n -c --arg g "$gen0" '{context: "Q: Capital of France?", answer: $g}' > "$TMP/gen.jsonl"
    jq -n -c '{context: "Q: Capital of France?", answer: "zzqx qxzz"}' >> "$TMP/gen.jsonl"
    evaluate --suite "$TMP/s.yaml" --per-item --seq-len 128 "$D/ckpt" 2> /dev/null | records json > "$TMP/r2.jsonl"
    [ "$(jq -c 'select(.event=="item" and .label=="qa") | [.item, .correct]' "$TMP/r2.jsonl" | tr -d '\n')" = "[0,true][1,false]" ]
    [ "$(jq 'select(.event=="task" and .label=="qa") | .acc' "$TMP/r2.jsonl")" = 0.5 ]
}
