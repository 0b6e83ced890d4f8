#!/usr/bin/env bats
# icl: the in-context-learning task layer of `evaluate` (lib/icl.h), through
# tests/unit/test_icl.c: Foundry's four JSONL task types, few-shot prompts
# byte for byte (0- and 2-shot, custom delimiters, prompt string,
# prelimiter), few-shot sampling (never the item, seeded), schema and
# multiple-choice candidates, answer normalisation and matching, suite and
# gauntlet YAML (tests/fixtures/icl), gauntlet arithmetic, and bad input.

load helpers

require_unit() {
    [ -x "$UPCYC_UNIT/$1" ] || skip "unit test binary $1 not built in $UPCYC_UNIT"
}

@test "icl: task files, prompts, sampling, matching, suites, gauntlet, bad input" {
    require_unit test_icl
    run "$UPCYC_UNIT/test_icl" "$FIXTURES/icl" "$TMP"
    assert_status 0
    assert_output_contains "test_icl: all checks passed"
}

@test "icl: the same output from a second run (seeded few-shot draws)" {
    require_unit test_icl
    run "$UPCYC_UNIT/test_icl" "$FIXTURES/icl" "$TMP"
    assert_status 0
    first="$output"
    mkdir -p "$TMP/b"
    run "$UPCYC_UNIT/test_icl" "$FIXTURES/icl" "$TMP/b"
    assert_status 0
    [ "$first" = "$output" ]
}

@test "icl: test_icl without its directories is a usage error" {
    require_unit test_icl
    run "$UPCYC_UNIT/test_icl"
    assert_status 64
    assert_one_error_line test_icl
}
