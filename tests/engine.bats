#!/usr/bin/env bats
# The inference engine (lib/engine.h), through its unit test: logits equal
# the training forward's (dense and MoE; whole, chunked and token-by-token
# prefill), batched sequences equal each alone, paged equals contiguous,
# greedy decoding follows the training forward.

load helpers

@test "engine: paged KV cache and batched steps reproduce the training forward" {
    [ -x "$UPCYC_UNIT/test_engine" ] || skip "unit test binary test_engine not built in $UPCYC_UNIT"
    run "$UPCYC_UNIT/test_engine"
    assert_status 0
    assert_output_contains "test_engine: all checks passed"
}

@test "sampling: greedy, temperature frequencies, top-p nucleus, seeded" {
    [ -x "$UPCYC_UNIT/test_sampling" ] || skip "unit test binary test_sampling not built in $UPCYC_UNIT"
    run "$UPCYC_UNIT/test_sampling"
    assert_status 0
    assert_output_contains "test_sampling: all checks passed"
}
