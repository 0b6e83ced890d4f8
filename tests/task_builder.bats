#!/usr/bin/env bats
# task_builder: lib/task_builder.h (tests/unit/test_task_builder.c): exact
# items for hand-made documents, determinism, distractor and gold rules,
# max_items, the YAML suite read back with libyaml, a realistic build from the
# fortune corpus, and bad output directories (missing, full disk).

load helpers

require_unit() {
    [ -x "$UPCYC_UNIT/$1" ] || skip "unit test binary $1 not built in $UPCYC_UNIT"
}

FORTUNES=/usr/share/games/fortunes/fortunes

@test "task_builder: hand-made items, determinism, distractors, gold, max_items, YAML" {
    require_unit test_task_builder
    run "$UPCYC_UNIT/test_task_builder" "$TMP"
    assert_status 0
    assert_output_contains "test_task_builder: all checks passed"
    assert_output_contains "hand-made: 2 lambada, 5 hellaswag, 8 skipped (4 not UTF-8)"
}

@test "task_builder: test_task_builder without its scratch directory is a usage error" {
    require_unit test_task_builder
    run "$UPCYC_UNIT/test_task_builder"
    assert_status 64
}

@test "task_builder: tasks from the fortune corpus, counts match the files, same bytes twice" {
    require_unit test_task_builder
    [ -f "$FORTUNES" ] || skip "fortune corpus $FORTUNES not installed (package fortunes-min)"
    mkdir "$TMP/a" "$TMP/b"
    run "$UPCYC_UNIT/test_task_builder" --fortune "$FORTUNES" "$TMP/a"
    assert_status 0
    assert_output_contains "fortune: "
    echo "$output"
    lambada=$(sed -n 's/.*: \([0-9]*\) lambada items.*/\1/p' <<<"$output")
    hellaswag=$(sed -n 's/.*, \([0-9]*\) hellaswag items.*/\1/p' <<<"$output")
    [ "$lambada" -gt 50 ] && [ "$hellaswag" -gt 50 ]
    [ "$(wc -l <"$TMP/a/lambada.jsonl")" -eq "$lambada" ]
    [ "$(wc -l <"$TMP/a/hellaswag.jsonl")" -eq "$hellaswag" ]
    run "$UPCYC_UNIT/test_task_builder" --fortune "$FORTUNES" "$TMP/b"
    assert_status 0
    for f in lambada.jsonl hellaswag.jsonl icl_tasks.yaml eval_gauntlet.yaml; do
        cmp "$TMP/a/$f" "$TMP/b/$f"
    done
}

@test "task_builder: a missing output directory fails with one line, exit 73" {
    require_unit test_task_builder
    run "$UPCYC_UNIT/test_task_builder" --synthetic "$TMP/missing"
    assert_status 73
    assert_one_error_line test_task_builder
    assert_output_contains "$TMP/missing"
}

@test "task_builder: a full disk fails with exit 74 and leaves no file behind" {
    require_unit test_task_builder
    mkdir "$TMP/out"
    run bash -c "ulimit -f 8; exec '$UPCYC_UNIT/test_task_builder' --synthetic '$TMP/out'"
    assert_status 74
    assert_one_error_line test_task_builder
    assert_output_contains "write failed"
    [ -z "$(ls -A "$TMP/out")" ] || { ls -la "$TMP/out"; return 1; }
    # The same build fits without the limit.
    run "$UPCYC_UNIT/test_task_builder" --synthetic "$TMP/out"
    assert_status 0
    [ -s "$TMP/out/hellaswag.jsonl" ]
}
