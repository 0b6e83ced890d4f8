#!/usr/bin/env bats
# cuda_tools: the tools end to end with --device cuda, against the same runs
# on the CPU: train (dense fp32; an upcycled MoE on bf16 GEMMs; a resume that
# continues bit for bit; tensor-core flash attention), evaluate and
# serve-bench. UPCYC_CUDA_BIN names the
# tools built with a CUDA backend: `make test` gives the emulated device's
# (BUILD/emu/bin, scripts/check-emu), `make gpu-check` the real one's.
# Without them, or without a device, each test skips saying why.

load helpers

setup_file() {
    export D="$BATS_FILE_TMPDIR"
    [ -x "$UPCYC_UNIT/gen_tokens" ] || return 0
    "$UPCYC_UNIT/gen_tokens" --docs 400 --vocab 512 --zipf 1.1 --seed 5 > "$D/tokens.mpk"
    "$UPCYC_BIN/shard" --val-fraction 0.1 --chunk-tokens 4096 "$D/shards" "$D/tokens.mpk" 2> /dev/null
    cp "$FIXTURES/model/tiny-512.json" "$D/tiny.json"
    export TRAIN="--init $D/tiny.json --data $D/shards/train --batch 4 --seq-len 32 --lr 1e-2 --warmup 2"
}

# Run tool $1 of the CUDA build with --device cuda, stdout into file $2;
# skip, with the tool's reason, when there is no CUDA build or device.
on_cuda() {
    local tool=$1 out=$2 rc=0
    shift 2
    [ -n "${UPCYC_CUDA_BIN:-}" ] || skip "UPCYC_CUDA_BIN is not set: no tools built with CUDA to run"
    [ -x "$UPCYC_UNIT/gen_tokens" ] || skip "gen_tokens is not built in $UPCYC_UNIT"
    "$UPCYC_CUDA_BIN/$tool" "$@" --device cuda > "$out" 2> "$TMP/cuda.err" || rc=$?
    if [ "$rc" -eq 64 ] && grep -q "no CUDA device\|built without CUDA" "$TMP/cuda.err"; then
        skip "$(cat "$TMP/cuda.err")"
    fi
    [ "$rc" -eq 0 ] || { echo "$tool --device cuda exited $rc:" >&2; cat "$TMP/cuda.err" >&2; return 1; }
}

losses() {
    records json < "$1" | jq -r 'select(.event=="train_step") | "\(.step) \(.loss)"'
}

heldout_loss() {
    records json < "$1" | jq -r 'select(.event=="lm") | .loss'
}

# every step's loss within $3 of the other run's (and both runs as long)
same_losses() {
    paste <(losses "$1") <(losses "$2") | awk -v tol="$3" '
        { n++; d = $2 - $4; if (d < 0) d = -d; if ($1 != $3 || d > tol) { print "step " $1 ": " $2 " vs " $4; bad = 1 } }
        END { exit bad || n == 0 }'
    [ "$(losses "$1" | wc -l)" -eq "$(losses "$2" | wc -l)" ]
}

@test "train --device cuda: a dense run tracks the CPU's losses, and its checkpoint scores as the CPU's" {
    on_cuda train "$TMP/gpu.mpk" $TRAIN --steps 6 --out "$TMP/gpu"
    # shellcheck disable=SC2086
    train $TRAIN --steps 6 --out "$TMP/cpu" > "$TMP/cpu.mpk"
    same_losses "$TMP/cpu.mpk" "$TMP/gpu.mpk" 2e-3
    # the checkpoint written from device memory, scored on the CPU
    evaluate --data "$D/shards/val" --seq-len 32 --batch 4 "$TMP/gpu" > "$TMP/ev-gpu.mpk" 2> /dev/null
    evaluate --data "$D/shards/val" --seq-len 32 --batch 4 "$TMP/cpu" > "$TMP/ev-cpu.mpk" 2> /dev/null
    awk -v a="$(heldout_loss "$TMP/ev-gpu.mpk")" -v b="$(heldout_loss "$TMP/ev-cpu.mpk")" \
        'BEGIN { d = a - b; exit !(a > 0 && (d < 0 ? -d : d) < 2e-3) }'
    cmp "$TMP/cpu/config.json" "$TMP/gpu/config.json"
}

@test "evaluate --device cuda: the held-out loss of a checkpoint equals the CPU's" {
    # shellcheck disable=SC2086
    train $TRAIN --steps 3 --out "$TMP/ck" > /dev/null
    on_cuda evaluate "$TMP/gpu.mpk" --data "$D/shards/val" --seq-len 32 --batch 4 "$TMP/ck"
    evaluate --data "$D/shards/val" --seq-len 32 --batch 4 "$TMP/ck" > "$TMP/cpu.mpk" 2> /dev/null
    local a b
    a=$(heldout_loss "$TMP/gpu.mpk") b=$(heldout_loss "$TMP/cpu.mpk")
    awk -v a="$a" -v b="$b" 'BEGIN { d = a - b; exit !(a > 0 && (d < 0 ? -d : d) < 1e-4) }' ||
        { echo "cuda $a, cpu $b" >&2; return 1; }
    [ "$(records json < "$TMP/gpu.mpk" | jq -r 'select(.event=="summary") | .device')" = cuda ]
}

@test "train --device cuda --precision bf16: an upcycled MoE tracks the CPU's bf16 run" {
    # shellcheck disable=SC2086
    train $TRAIN --steps 3 --out "$TMP/dense" > /dev/null
    upcycle --experts 4 --top-k 2 "$TMP/dense" "$TMP/moe" > /dev/null 2>&1
    local args="--from $TMP/moe --data $D/shards/train --batch 4 --seq-len 32 --steps 4 --lr 1e-3 --precision bf16"
    # shellcheck disable=SC2086
    on_cuda train "$TMP/gpu.mpk" $args --out "$TMP/gpu"
    # shellcheck disable=SC2086
    train $args --out "$TMP/cpu" > "$TMP/cpu.mpk"
    same_losses "$TMP/cpu.mpk" "$TMP/gpu.mpk" 2e-2
    [ "$(records json < "$TMP/gpu.mpk" | jq -r 'select(.event=="train_start") | .precision')" = bf16 ]
    [ "$(jq .step "$TMP/gpu/trainer_state.json")" -eq 4 ]
}

@test "train --device cuda --precision bf16 with UPC_BF16_ATTENTION=flash (tensor-core flash attention) tracks the CPU's bf16 run" {
    local args="$TRAIN --steps 4 --precision bf16"
    # shellcheck disable=SC2086
    UPC_BF16_ATTENTION=flash on_cuda train "$TMP/gpu.mpk" $args --out "$TMP/gpu"
    # shellcheck disable=SC2086
    train $args --out "$TMP/cpu" > "$TMP/cpu.mpk"
    same_losses "$TMP/cpu.mpk" "$TMP/gpu.mpk" 2e-2
}

@test "train --device cuda: a resumed run continues bit for bit from the device's checkpoint" {
    local args="$TRAIN --schedule constant"
    # shellcheck disable=SC2086
    on_cuda train "$TMP/a.mpk" $args --steps 6 --out "$TMP/a"
    # shellcheck disable=SC2086
    on_cuda train "$TMP/b.mpk" $args --steps 3 --out "$TMP/b"
    on_cuda train "$TMP/b2.mpk" --resume --steps 6 --out "$TMP/b"
    diff <(losses "$TMP/a.mpk" | awk '$1 > 3') <(losses "$TMP/b2.mpk")
    cmp "$TMP/a/model.safetensors" "$TMP/b/model.safetensors"
    cmp "$TMP/a/optimizer.safetensors" "$TMP/b/optimizer.safetensors"
}

@test "serve-bench --device cuda: a sweep point serves every request, on a checkpoint and on a shape" {
    # shellcheck disable=SC2086
    train $TRAIN --steps 2 --out "$TMP/ck" > /dev/null
    on_cuda serve-bench "$TMP/ck.mpk" --model "$TMP/ck" --rates inf --requests 6 --warmup 1 \
        --prompt-len uniform:8:40 --output-len 8 --max-batch-tokens 64 --precision bf16
    records json < "$TMP/ck.mpk" | jq -e -s '
        (map(select(.event=="memory"))[0] | (.device | startswith("cuda")) and .precision == "bf16") and
        (map(select(.event=="sweep_point")) | length == 1 and .[0].completed == 6 and .[0].output_tokens == 48
            and .[0].output_tokens_per_s > 0)' > /dev/null
    on_cuda serve-bench "$TMP/shape.mpk" --shape tiny --rates inf --requests 3 --warmup 0 --scale 100
    records json < "$TMP/shape.mpk" | jq -e -s 'map(select(.event=="sweep_point"))[0].completed == 3' > /dev/null
}
