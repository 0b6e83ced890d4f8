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
