#!/usr/bin/env bats
# Checkpoints: safetensors reading/writing and HF config.json (lib/safetensors.h,
# lib/model_config.h), through their unit tests, plus full-disk and
# unwritable-output cases that need a shell around them.

load helpers

CKPT_FIXTURES="$BATS_TEST_DIRNAME/fixtures/checkpoint"

@test "safetensors: reader, writer, conversions, sharding, bad input (unit)" {
    run "$UPCYC_UNIT/test_safetensors" "$CKPT_FIXTURES" "$TMP"
    echo "$output"
    assert_status 0
    assert_output_contains " 0 failed"
}

@test "model config: Llama-3-8B, Mixtral-8x7B, upcyc settings, bad configs (unit)" {
    run "$UPCYC_UNIT/test_model_config" "$CKPT_FIXTURES" "$TMP"
    echo "$output"
    assert_status 0
    assert_output_contains " 0 failed"
}

@test "safetensors: a full disk fails with EX_IOERR and leaves nothing behind" {
    mkdir "$TMP/ck"
    run bash -c "ulimit -f 1024; exec '$UPCYC_UNIT/test_safetensors' write-big '$TMP/ck' 4"
    assert_status 74
    assert_one_error_line test_safetensors
    assert_output_contains "model.safetensors: write failed"
    [ -z "$(ls -A "$TMP/ck")" ]
    # Sharded: the first 1 MB shard no longer fits either.
    run bash -c "ulimit -f 512; exec '$UPCYC_UNIT/test_safetensors' write-big '$TMP/ck' 4 1"
    assert_status 74
    assert_one_error_line test_safetensors
    assert_output_contains "model-00001-of-00004.safetensors: write failed"
    [ -z "$(ls -A "$TMP/ck")" ]
}

@test "safetensors: a failed write keeps the previous checkpoint intact" {
    mkdir "$TMP/ck"
    "$UPCYC_UNIT/test_safetensors" write-big "$TMP/ck" 2
    cp "$TMP/ck/model.safetensors" "$TMP/before"
    run bash -c "ulimit -f 2048; exec '$UPCYC_UNIT/test_safetensors' write-big '$TMP/ck' 4"
    assert_status 74
    cmp "$TMP/before" "$TMP/ck/model.safetensors"
    [ "$(ls -A "$TMP/ck")" = model.safetensors ]
}

@test "safetensors: sharding keeps each file under the limit" {
    mkdir "$TMP/ck"
    run bash -c "ulimit -f 2048; exec '$UPCYC_UNIT/test_safetensors' write-big '$TMP/ck' 6 1"
    assert_status 0
    [ "$(ls "$TMP/ck" | grep -c '^model-0000[1-6]-of-00006.safetensors$')" -eq 6 ]
    [ "$(jq '.weight_map | length' "$TMP/ck/model.safetensors.index.json")" -eq 6 ]
    [ "$(jq '.metadata.total_size' "$TMP/ck/model.safetensors.index.json")" -eq $((6 * 1048576)) ]
}

@test "safetensors: an output directory that does not exist is EX_CANTCREAT" {
    run "$UPCYC_UNIT/test_safetensors" write-big "$TMP/no/such/dir" 1
    assert_status 73
    assert_one_error_line test_safetensors
    assert_output_contains "$TMP/no/such/dir"
}

@test "fixtures: make_fixtures.py reproduces the committed files" {
    command -v python3 >/dev/null || skip "python3 not installed (the fixtures are committed)"
    cp -r "$CKPT_FIXTURES" "$TMP/fx"
    rm "$TMP/fx/tiny.safetensors" "$TMP/fx/sharded/"*
    (cd "$TMP/fx" && python3 make_fixtures.py)
    cmp "$CKPT_FIXTURES/tiny.safetensors" "$TMP/fx/tiny.safetensors"
    for f in "$CKPT_FIXTURES"/sharded/*; do
        cmp "$f" "$TMP/fx/sharded/$(basename "$f")"
    done
}
