#!/usr/bin/env bats
# gpu: the CUDA backend (gpu/) against the CPU backend: every kernel, a
# training step, 50 training steps and engine decode (tests/unit/
# test_gpu_kernels.c, test_gpu_model.c). Without a CUDA build or device these
# skip, saying why; what runs everywhere: backend selection (lib/backend.h)
# and the comparison harnesses with the CPU standing in for the GPU.

load helpers

CONFIG="$BATS_TEST_DIRNAME/../configs/tiny.json"

require_unit() {
    [ -x "$UPCYC_UNIT/$1" ] || skip "unit test binary $1 not built in $UPCYC_UNIT"
}

# Run a GPU test binary; exit 77 means no CUDA (build or device): skip with
# its reason.
run_gpu() {
    run "$@"
    if [ "$status" -eq 77 ]; then
        case "$output" in
        "no CUDA device: "*) skip "$output" ;;
        *) skip "no CUDA device: $output" ;;
        esac
    fi
}

@test "backend selection: cpu works, unknown names and unusable cuda fail with one clear line" {
    require_unit test_gpu_backend
    run "$UPCYC_UNIT/test_gpu_backend"
    assert_status 0
    assert_output_contains "test_gpu_backend: all checks passed"
    # which case this machine is in, said plainly
    case "$output" in
    *"cuda: not in this build (upcyc was built without CUDA"*) ;;
    *"cuda: built in, no CUDA device: "*) ;;
    *"cuda: device "*) ;;
    *) echo "unexpected: $output" >&2; return 1 ;;
    esac
}

@test "kernel comparison harness: the CPU against itself is exact (runs without a GPU)" {
    require_unit test_gpu_kernels
    run "$UPCYC_UNIT/test_gpu_kernels" --cpu
    assert_status 0
    assert_output_contains "test_gpu_kernels: all"
    ! printf '%s\n' "$output" | grep -E '^FAIL|max_abs [1-9]'
}

@test "model comparison harness: CPU against itself, a step and decode are exact (runs without a GPU)" {
    require_unit test_gpu_model
    run "$UPCYC_UNIT/test_gpu_model" step "$CONFIG" --cpu
    assert_status 0
    assert_output_contains "test_gpu_model step: all"
    assert_output_contains "worst relative L2 error 0.000e+00"
    run "$UPCYC_UNIT/test_gpu_model" decode "$CONFIG" --cpu
    assert_status 0
    assert_output_contains "worst logit difference 0.000e+00"
}

@test "every CUDA kernel matches the CPU backend within its tolerance" {
    require_unit test_gpu_kernels
    run_gpu "$UPCYC_UNIT/test_gpu_kernels"
    echo "$output"
    assert_status 0
    assert_output_contains "test_gpu_kernels: all"
}

@test "CUDA: the bf16 grouped GEMMs on cuBLAS per expert (UPC_GROUPED=cublas) match the CPU too" {
    require_unit test_gpu_kernels
    UPC_GROUPED=cublas run_gpu "$UPCYC_UNIT/test_gpu_kernels" --grouped
    echo "$output"
    assert_status 0
    assert_output_contains "# bf16 grouped GEMMs (UPC_GROUPED=cublas)"
    assert_output_contains "test_gpu_kernels --grouped: all"
}

@test "CUDA: UPC_BF16_GEMM=fast (cuBLAS's FAST_16BF on fp32 operands) changes only the GEMMs' results" {
    # seen on an H200: cuBLAS need not round the operands (small GEMMs came
    # out as fp32 ones), so its GEMMs are not the CPU's bf16 emulation;
    # every other kernel must still match
    require_unit test_gpu_kernels
    UPC_BF16_GEMM=fast run_gpu "$UPCYC_UNIT/test_gpu_kernels"
    echo "$output"
    assert_output_contains "test_gpu_kernels:"
    ! printf '%s\n' "$output" | grep '^FAIL' | grep -v -E '^FAIL (gemm|gemv|attention_gemm)'
}

@test "CUDA: bad data seen only on the device fails the tool naming the kernel" {
    require_unit test_gpu_kernels
    run_gpu "$UPCYC_UNIT/test_gpu_kernels" --bad-id
    assert_status 70
    assert_output_contains "test_gpu_kernels: cuda: embedding_fwd: token id out of range"
}

@test "CUDA: a training step (dense, MoE 8x2, MoE with capacity and jitter, MoE and dense on bf16 GEMMs) matches the CPU: loss and gradients" {
    require_unit test_gpu_model
    run_gpu "$UPCYC_UNIT/test_gpu_model" step "$CONFIG"
    echo "$output"
    assert_status 0
    assert_output_contains "test_gpu_model step: all"
}

@test "CUDA: 50 training steps track the CPU's loss curve (dense, MoE, MoE on bf16 GEMMs)" {
    require_unit test_gpu_model
    run_gpu "$UPCYC_UNIT/test_gpu_model" train "$CONFIG"
    echo "$output"
    assert_status 0
    assert_output_contains "test_gpu_model train: all"
}

@test "CUDA: engine prefill and batched decode logits match the CPU engine" {
    require_unit test_gpu_model
    run_gpu "$UPCYC_UNIT/test_gpu_model" decode "$CONFIG"
    echo "$output"
    assert_status 0
    assert_output_contains "test_gpu_model decode: all"
}

@test "NCCL all-reduce: a communicator of one sums a device buffer in place (needs a GPU and libnccl.so.2)" {
    require_unit test_gpu_backend
    run "$UPCYC_UNIT/test_gpu_backend" nccl
    [ "$status" -ne 77 ] || skip "$output"
    assert_status 0
    assert_output_contains "a communicator of one leaves the buffer as it was"
}
