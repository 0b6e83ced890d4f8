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
