#!/usr/bin/env bats
# model: lib/model.h on the CPU backend (tests/unit/test_model.c):
# finite-difference gradients of every tensor (dense, MoE, aux losses),
# upcycling identities, golden loss, save/load, determinism, bad input, and
# logits against an independent pure-Python HF forward (model_reference.py).

load helpers

require_unit() {
    [ -x "$UPCYC_UNIT/$1" ] || skip "unit test binary $1 not built in $UPCYC_UNIT"
}

@test "model: gradients, upcycling identities, golden loss, checkpoints, bad input" {
    require_unit test_model
    run "$UPCYC_UNIT/test_model" "$TMP"
    assert_status 0
    assert_output_contains "test_model: all checks passed"
    assert_output_contains "gradcheck moe E4 k2 aux losses only"
    assert_output_contains "gradcheck moe E4 k2 capacity 0.5"
    assert_output_contains "golden: tiny dense loss at seed 1234"
    assert_output_contains "digest: loss"
}

@test "model: the same loss and gradients on one thread and on several" {
    require_unit test_model
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 run "$UPCYC_UNIT/test_model" "$TMP"
    assert_status 0
    one="$output"
    mkdir -p "$TMP/b"
    run "$UPCYC_UNIT/test_model" "$TMP/b"
    assert_status 0
    [ "$one" = "$output" ] || { echo "outputs differ:"; diff <(echo "$one") <(echo "$output"); return 1; }
}

@test "model: test_model without its scratch directory is a usage error" {
    require_unit test_model
    run "$UPCYC_UNIT/test_model"
    assert_status 64
}

@test "model: logits and losses equal an independent pure-Python HF Llama/Mixtral forward" {
    require_unit test_model
    command -v python3 >/dev/null || skip "python3 not installed"
    run "$UPCYC_UNIT/test_model" --dump "$TMP"
    assert_status 0
    run python3 "$BATS_TEST_DIRNAME/model_reference.py" "$TMP/dense" "$TMP/moe" "$TMP/moe_raw"
    assert_status 0
    assert_output_contains "moe_raw: max |logit - reference|"
}

@test "model: the reference check fails when the weights are not the ones the logits came from" {
    require_unit test_model
    command -v python3 >/dev/null || skip "python3 not installed"
    run "$UPCYC_UNIT/test_model" --dump "$TMP"
    assert_status 0
    cp "$TMP/moe/model.safetensors" "$TMP/moe_raw/model.safetensors"
    run python3 "$BATS_TEST_DIRNAME/model_reference.py" "$TMP/moe_raw"
    assert_status 1
    assert_output_contains "disagrees with the reference"
}
