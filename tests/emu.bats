#!/usr/bin/env bats
# emu: the CUDA backend's real sources (gpu/*.cu) on the emulated device of
# tests/emu/ (host threads, OpenBLAS for cuBLAS), against the CPU backend,
# through the unmodified GPU harnesses: every kernel, the device error path,
# a training step, 50 training steps, engine decode, backend selection.
# Built by scripts/check-emu into build/emu/tests (UPCYC_EMU overrides); not
# built: every test skips, saying so. Times on 2 cores: kernels ~5 s (twice
# more for the order test), step ~8 s, decode ~1.5 s, train ~4.5 min
# (UPCYC_EMU_TRAIN=0 skips it).

load helpers

: "${UPCYC_EMU:=$BATS_TEST_DIRNAME/../build/emu/tests}"
# The CPU backend's idle OpenMP threads would spin for the cores the
# emulated kernels run on between its parallel regions (a step took 3x as
# long): let them sleep.
: "${OMP_WAIT_POLICY:=passive}"
export OMP_WAIT_POLICY
CONFIG="$BATS_TEST_DIRNAME/../configs/tiny.json"

require_emu() {
    [ -x "$UPCYC_EMU/$1" ] || skip "$1 not built on the emulated device in $UPCYC_EMU (run scripts/check-emu)"
}

# Every harness line that says FAIL, for the log of a failing test.
show_failures() {
    printf '%s\n' "$output" | grep -E '^FAIL|^ +[0-9]+ of [0-9]+ elements' >&2 || true
}

@test "emu: every CUDA kernel matches the CPU backend within its tolerance" {
    require_emu test_gpu_kernels
    run "$UPCYC_EMU/test_gpu_kernels"
    show_failures
    assert_status 0
    assert_output_contains "# cuda: emulated CUDA device"
    assert_output_contains "test_gpu_kernels: all"
    ! printf '%s\n' "$output" | grep -q '^FAIL'
}

@test "emu: kernels in reverse thread order (EMU_ORDER=reverse) give the same results: no race inside a block" {
    require_emu test_gpu_kernels
    run env EMU_ORDER=reverse "$UPCYC_EMU/test_gpu_kernels"
    show_failures
    assert_status 0
    assert_output_contains "test_gpu_kernels: all"
    local reverse="$output"
    run env EMU_WORKERS=1 "$UPCYC_EMU/test_gpu_kernels"
    assert_status 0
    # the same numbers line for line, whatever the order of a block's threads
    # and however the blocks are spread over the workers
    [ "$(printf '%s\n' "$reverse" | grep -v '^#')" = "$(printf '%s\n' "$output" | grep -v '^#')" ] || {
        diff <(printf '%s\n' "$reverse") <(printf '%s\n' "$output") >&2
        return 1
    }
}

@test "emu: UPC_BF16_GEMM=fast hands cuBLAS fp32 operands to round (as the emulation does: to nearest even); a bad value fails at once" {
    require_emu test_gpu_kernels
    UPC_BF16_GEMM=fast run "$UPCYC_EMU/test_gpu_kernels"
    show_failures
    assert_status 0
    assert_output_contains "test_gpu_kernels: all"
    UPC_BF16_GEMM=packed run "$UPCYC_EMU/test_gpu_kernels"
    assert_status 64
    assert_one_error_line test_gpu_kernels
    assert_output_contains "UPC_BF16_GEMM=packed: expected pack (the default) or fast"
}

@test "emu: bad data seen only on the device fails the tool naming the kernel (device error word)" {
    require_emu test_gpu_kernels
    run "$UPCYC_EMU/test_gpu_kernels" --bad-id
    assert_status 70
    assert_output_contains "test_gpu_kernels: cuda: embedding_fwd: token id out of range"
    # with UPC_CUDA_SYNC=1 the kernel is named at once, after its launch
    UPC_CUDA_SYNC=1 run "$UPCYC_EMU/test_gpu_kernels" --bad-id
    assert_status 70
    assert_output_contains "test_gpu_kernels: cuda: embedding_fwd: token id out of range (found at embedding_fwd)"
}

@test "emu: a training step (dense, MoE 8x2, capacity and jitter, bf16) matches the CPU: loss and gradients" {
    require_emu test_gpu_model
    run "$UPCYC_EMU/test_gpu_model" step "$CONFIG"
    show_failures
    assert_status 0
    assert_output_contains "test_gpu_model step: all"
}

@test "emu: 50 training steps track the CPU's loss curve (dense, MoE, MoE on bf16 GEMMs)" {
    require_emu test_gpu_model
    [ "${UPCYC_EMU_TRAIN:-1}" != 0 ] || skip "UPCYC_EMU_TRAIN=0: the emulated 50-step run is left to make test (minutes on 2 cores, far more under ASan)"
    run "$UPCYC_EMU/test_gpu_model" train "$CONFIG"
    show_failures
    assert_status 0
    assert_output_contains "test_gpu_model train: all"
}

@test "emu: engine prefill and batched decode logits match the CPU engine" {
    require_emu test_gpu_model
    run "$UPCYC_EMU/test_gpu_model" decode "$CONFIG"
    show_failures
    assert_status 0
    assert_output_contains "test_gpu_model decode: all"
}

@test "emu: backend selection finds the device; the all-reduce takes the host path (UPC_NCCL=0)" {
    require_emu test_gpu_backend
    run "$UPCYC_EMU/test_gpu_backend"
    assert_status 0
    assert_output_contains "cuda: device cuda: emulated CUDA device (host threads)"
    assert_output_contains "test_gpu_backend: all checks passed"
    # not `test_gpu_backend nccl`: where a real libnccl.so.2 is installed it
    # would be handed the emulated device's host memory
}
