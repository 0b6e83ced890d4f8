#!/usr/bin/env bats
# loadgen: serve-bench's workload generator and metrics (lib/loadgen.h,
# lib/serve_metrics.h; tests/unit/test_loadgen.c): length specs, seeded
# determinism, Poisson and gamma arrival statistics, burst mode, vLLM's
# TTFT/TPOT/ITL/E2E and throughput on a hand-computed timeline, numpy-linear
# percentiles, records with fixed keys, the table.

load helpers

require_unit() {
    [ -x "$UPCYC_UNIT/$1" ] || skip "unit test binary $1 not built in $UPCYC_UNIT"
}

@test "loadgen: workloads, arrival statistics, metrics, records, table" {
    require_unit test_loadgen
    run "$UPCYC_UNIT/test_loadgen" "$TMP"
    assert_status 0
    assert_output_contains "test_loadgen: all checks passed"
    assert_output_contains "poisson rate 4:"
    assert_output_contains "gamma k 0.25 rate 10:"
    assert_output_contains "records: 4 request, 2 sweep_point"
}

@test "loadgen: the same workload on every run" {
    require_unit test_loadgen
    run "$UPCYC_UNIT/test_loadgen" "$TMP"
    assert_status 0
    one="$output"
    mkdir -p "$TMP/b"
    run "$UPCYC_UNIT/test_loadgen" "$TMP/b"
    assert_status 0
    [ "$one" = "$output" ] || { echo "outputs differ:"; diff <(echo "$one") <(echo "$output"); return 1; }
    cmp "$TMP/serve.msgpack" "$TMP/b/serve.msgpack"
}

@test "loadgen: records read as JSON with burst rate inf and constant keys" {
    require_unit test_loadgen
    [ -x "$UPCYC_BIN/records" ] || skip "records not built in $UPCYC_BIN"
    run "$UPCYC_UNIT/test_loadgen" "$TMP"
    assert_status 0
    run records json "$TMP/serve.msgpack"
    assert_status 0
    [ "$(printf '%s\n' "$output" | grep -c '"event":"request"')" -eq 4 ]
    [ "$(printf '%s\n' "$output" | grep -c '"event":"sweep_point"')" -eq 2 ]
    assert_output_contains '{"event":"request","label":"tiny/dense","index":1,"arrival_s":10.25,"prompt_len":3,"output_len":1,"ttft_ms":500.0,"tpot_ms":0.0,"e2e_ms":500.0,"itl_ms_mean":0.0}'
    assert_output_contains '"rate_rps":{"$float":"inf"},"concurrency":0,"completed":4,"duration_s":2.5,"requests_per_s":1.6,'
    assert_output_contains '"rate_rps":2.5,"concurrency":16,'
    assert_output_contains '"e2e_ms_p99":1977.'   # 1977.5 up to rounding, as numpy
    run records tsv --event sweep_point "$TMP/serve.msgpack"
    assert_status 0
    [ "$(printf '%s\n' "$output" | wc -l)" -eq 3 ]
    assert_output_contains "$(printf 'event\tlabel\trate_rps\tconcurrency\tcompleted\tduration_s\trequests_per_s')"
}

@test "loadgen: test_loadgen without its scratch directory is a usage error" {
    require_unit test_loadgen
    run "$UPCYC_UNIT/test_loadgen"
    assert_status 64
}
