#!/usr/bin/env bats
# kernels: the CPU backend of lib/kernels.h against naive references, finite
# differences and hand-computed optimizer steps (tests/unit/test_kernels*.c).

load helpers

require_unit() {
    [ -x "$UPCYC_UNIT/$1" ] || skip "unit test binary $1 not built in $UPCYC_UNIT"
}

@test "dense kernels: GEMM, embedding, RMSNorm, RoPE, attention, SwiGLU, cross-entropy, optimizers" {
    require_unit test_kernels
    run "$UPCYC_UNIT/test_kernels"
    assert_status 0
    assert_output_contains "test_kernels: all checks passed"
}

@test "MoE kernels: router, dispatch, grouped GEMM, combine, aux losses, upcycling identity" {
    require_unit test_kernels_moe
    run "$UPCYC_UNIT/test_kernels_moe"
    assert_status 0
    assert_output_contains "test_kernels_moe: all checks passed"
}

@test "kernels give the same results on one thread and on several" {
    require_unit test_kernels_moe
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 run "$UPCYC_UNIT/test_kernels"
    assert_status 0
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 run "$UPCYC_UNIT/test_kernels_moe"
    assert_status 0
}

@test "UPC_PROFILE=1: every kernel runs through the timing table with the same results, and the profile adds up" {
    require_unit test_gpu_kernels
    # the CPU table wrapped by kernels_profile.c against the plain CPU table
    UPC_PROFILE=1 "$UPCYC_UNIT/test_gpu_kernels" --cpu > "$BATS_TEST_TMPDIR/out" 2> "$BATS_TEST_TMPDIR/prof" ||
        { tail -5 "$BATS_TEST_TMPDIR/out" "$BATS_TEST_TMPDIR/prof" >&2; return 1; }
    grep -q "test_gpu_kernels: all .* checks passed" "$BATS_TEST_TMPDIR/out"
    grep -q "kernel profile (UPC_PROFILE=1.*: cpu fp32 cpu bf16" "$BATS_TEST_TMPDIR/prof"
    # the rows' calls add up to the total line; every kernel family shows up;
    # the GEMMs carry an achieved rate
    awk '/ calls, / { total = $2 }
         $1 == "kernel" { table = 1; next }
         table { rows++; sum += $2; seen[$1] = 1; if ($1 == "gemm") rate = $6 }
         END {
             need = "gemm grouped_gemm_fwd grouped_gemm_dw attention_bwd paged_attention moe_dispatch adamw_step lion_step alloc upload"
             n = split(need, k, " ")
             for (i = 1; i <= n; i++) if (!(k[i] in seen)) { print "missing " k[i]; exit 1 }
             if (rows < 45 || sum != total || !(rate > 0)) { print rows, sum, total, rate; exit 1 }
         }' "$BATS_TEST_TMPDIR/prof"
}

@test "UPC_PROFILE: a value other than 1 or 0 fails with one line" {
    require_unit test_gpu_kernels
    UPC_PROFILE=yes run "$UPCYC_UNIT/test_gpu_kernels" --cpu
    assert_status 64
    assert_one_error_line test_gpu_kernels
    assert_output_contains "UPC_PROFILE=yes: expected 0 (the default) or 1"
}
