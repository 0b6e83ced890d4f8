#!/usr/bin/env bats
# upcycle: dense Llama checkpoint -> Mixtral checkpoint. The transformation
# itself is checked tensor by tensor in the unit test; here the tool: its
# outputs, its summary record and every kind of bad input.

load helpers

CKPT_FIXTURES="$BATS_TEST_DIRNAME/fixtures/checkpoint"

dense() {   # dense DIR [f32|bf16] [tied]
    "$UPCYC_UNIT/test_upcycle" make-dense "$1" "${2:-f32}" ${3:-}
}

# Nothing but the given names in $TMP (no OUT_DIR, no *.tmp.*).
assert_nothing_left() {
    local left
    left=$(ls -A "$TMP" | grep -v -x -e dense "$@" || true)
    if [ -n "$left" ]; then
        echo "left behind: $left" >&2
        return 1
    fi
}

@test "upcycle: transformation, variants, arithmetic, bad options (unit)" {
    run "$UPCYC_UNIT/test_upcycle" "$CKPT_FIXTURES" "$TMP"
    echo "$output"
    assert_status 0
    assert_output_contains " 0 failed"
}

@test "upcycle: writes a Mixtral checkpoint, tokenizer and a summary record" {
    dense "$TMP/dense"
    upcycle --experts 4 --top-k 2 --seed 3 "$TMP/dense" "$TMP/moe" >"$TMP/sum.mpk" 2>"$TMP/err"
    [ -f "$TMP/moe/model.safetensors" ]
    cmp "$TMP/dense/tokenizer.json" "$TMP/moe/tokenizer.json"
    [ "$(jq -r '.architectures[0]' "$TMP/moe/config.json")" = MixtralForCausalLM ]
    [ "$(jq '.num_local_experts' "$TMP/moe/config.json")" -eq 4 ]
    [ "$(jq '.num_experts_per_tok' "$TMP/moe/config.json")" -eq 2 ]
    [ "$(jq '.router_aux_loss_coef' "$TMP/moe/config.json")" = 0.01 ]
    [ "$(jq '.norm_topk_prob' "$TMP/moe/config.json")" = true ]
    [ "$(jq '.upcyc.upcycle.seed' "$TMP/moe/config.json")" -eq 3 ]
    grep -q "iso-FLOP" "$TMP/err"
    records json "$TMP/sum.mpk" >"$TMP/sum.json"
    [ "$(wc -l <"$TMP/sum.json")" -eq 1 ]
    [ "$(jq -r .event "$TMP/sum.json")" = upcycle ]
    # Tiny model by hand: V=64 d=16 f=24 L=3, kv 8; untied.
    # dense = 2*64*16 + 3*(2*16*16 + 2*16*8 + 3*16*24 + 2*16) + 16 = 7920
    # moe   = dense + 3*(3*3*16*24 + 4*16) = 18480; active = dense + 3*(3*16*24 + 4*16) = 11568
    [ "$(jq .dense.params "$TMP/sum.json")" -eq 7920 ]
    [ "$(jq .moe.params "$TMP/sum.json")" -eq 18480 ]
    [ "$(jq .moe.active_params "$TMP/sum.json")" -eq 11568 ]
    [ "$(jq .dense.weight_bytes "$TMP/sum.json")" -eq $((7920 * 4)) ]
    [ "$(jq .moe.weight_bytes "$TMP/sum.json")" -eq $((18480 * 4)) ]
    # FLOPs: 6*active matmul + 12*L*H*hd*T; hd = 4, T = 4096
    # dense matmul = 64*16 (head) + 3*(2*256 + 2*128 + 3*384) = 6784
    # moe matmul   = 6784 + 3*(3*384 + 64) = 10432
    jq -e ".dense.train_flops_per_token == $((6 * 6784 + 12 * 3 * 4 * 4 * 4096))" "$TMP/sum.json"
    jq -e ".moe.train_flops_per_token == $((6 * 10432 + 12 * 3 * 4 * 4 * 4096))" "$TMP/sum.json"
    jq -e '(.iso_flop_multiplier - (.dense.train_flops_per_token / .moe.train_flops_per_token)) | fabs < 1e-12' "$TMP/sum.json"
}

@test "upcycle: same seed, same bytes; --routing, --aux-loss-coef, --layers recorded" {
    dense "$TMP/dense"
    upcycle --experts 2 --top-k 1 --seed 5 "$TMP/dense" "$TMP/a" >/dev/null 2>&1
    upcycle --experts 2 --top-k 1 --seed 5 "$TMP/dense" "$TMP/b" >/dev/null 2>&1
    cmp "$TMP/a/model.safetensors" "$TMP/b/model.safetensors"
    upcycle --experts 2 --top-k 1 --seed 6 "$TMP/dense" "$TMP/c" >/dev/null 2>&1
    run cmp -s "$TMP/a/model.safetensors" "$TMP/c/model.safetensors"
    [ "$status" -eq 1 ]
    upcycle --experts 2 --top-k 2 --routing softmax-topk --aux-loss-coef 0.02 --layers every:2 \
        "$TMP/dense" "$TMP/d" >/dev/null 2>&1
    [ "$(jq '.norm_topk_prob' "$TMP/d/config.json")" = false ]
    [ "$(jq '.router_aux_loss_coef' "$TMP/d/config.json")" = 0.02 ]
    [ "$(jq -c '.upcyc.moe_layers' "$TMP/d/config.json")" = "[1]" ]
}

@test "upcycle: --dtype bf16 halves the weights; --shard-size shards with an index" {
    dense "$TMP/dense"
    upcycle --experts 2 --top-k 1 --dtype bf16 --shard-size 4K "$TMP/dense" "$TMP/moe" >"$TMP/sum.mpk" 2>/dev/null
    [ "$(jq -r .torch_dtype "$TMP/moe/config.json")" = bfloat16 ]
    [ -f "$TMP/moe/model.safetensors.index.json" ]
    [ "$(ls "$TMP/moe" | grep -c '^model-.*\.safetensors$')" -gt 1 ]
    records json "$TMP/sum.mpk" >"$TMP/sum.json"
    [ "$(jq .moe.weight_bytes "$TMP/sum.json")" -eq "$(jq .metadata.total_size "$TMP/moe/model.safetensors.index.json")" ]
    [ "$(jq '.moe.weight_bytes * 2' "$TMP/sum.json")" -eq "$(jq '.moe.params * 4' "$TMP/sum.json")" ]
    # a bf16 dense model with tied embeddings reads back, sharded, into f32
    dense "$TMP/dense16" bf16 tied
    upcycle --experts 2 --top-k 2 --dtype f32 "$TMP/dense16" "$TMP/moe32" >/dev/null 2>&1
    [ "$(jq -r .tie_word_embeddings "$TMP/moe32/config.json")" = true ]
}

@test "upcycle: --force replaces an existing OUT_DIR, otherwise refused" {
    dense "$TMP/dense"
    mkdir "$TMP/moe"
    touch "$TMP/moe/old-file"
    run upcycle --experts 2 --top-k 1 "$TMP/dense" "$TMP/moe"
    assert_status 73
    assert_one_error_line upcycle
    assert_output_contains "already exists"
    [ -f "$TMP/moe/old-file" ]
    upcycle --force --experts 2 --top-k 1 "$TMP/dense" "$TMP/moe" >/dev/null 2>&1
    [ ! -e "$TMP/moe/old-file" ] && [ -f "$TMP/moe/model.safetensors" ]
    assert_nothing_left moe
}

@test "upcycle: usage errors: E < 1, K > E, missing args, bad values" {
    dense "$TMP/dense"
    for args in "--experts 0 --top-k 1" "--experts 2 --top-k 3" "--top-k 1" "--experts 2" \
        "--experts 2 --top-k 1 --router-init bogus" "--experts 2 --top-k 1 --dtype f64" \
        "--experts 2 --top-k 1 --layers 9" "--experts 2 --top-k 1 --drop-ratio 2" \
        "--experts 4 --top-k 2 --granularity 3" "--experts 2 --top-k 1 --shard-size 0"; do
        run upcycle $args "$TMP/dense" "$TMP/moe"
        echo "args: $args"
        assert_status 64
        assert_one_error_line upcycle
    done
    run upcycle --experts 2 --top-k 3 "$TMP/dense" "$TMP/moe"
    assert_output_contains "--top-k 3 is more than --experts 2"
    assert_nothing_left
}

@test "upcycle: missing directory, missing config, MoE config" {
    run upcycle --experts 2 --top-k 1 "$TMP/nope" "$TMP/moe"
    assert_status 66
    assert_one_error_line upcycle
    assert_output_contains "$TMP/nope"
    mkdir "$TMP/dense"
    run upcycle --experts 2 --top-k 1 "$TMP/dense" "$TMP/moe"
    assert_status 66
    assert_one_error_line upcycle
    assert_output_contains "config.json"
    cp "$CKPT_FIXTURES/mixtral-8x7b.config.json" "$TMP/dense/config.json"
    run upcycle --experts 2 --top-k 1 "$TMP/dense" "$TMP/moe"
    assert_status 65
    assert_one_error_line upcycle
    assert_output_contains "re-upcycling is not supported"
    assert_nothing_left
}

@test "upcycle: missing, misshapen and truncated tensors" {
    dense "$TMP/dense"
    # a config with a fourth layer the weights do not have
    jq '.num_hidden_layers = 4' "$TMP/dense/config.json" >"$TMP/c" && mv "$TMP/c" "$TMP/dense/config.json"
    run upcycle --experts 2 --top-k 1 "$TMP/dense" "$TMP/moe"
    assert_status 65
    assert_one_error_line upcycle
    assert_output_contains "model.layers.3.input_layernorm.weight: missing"
    # a wider FFN than the weights
    jq '.num_hidden_layers = 3 | .intermediate_size = 32' "$TMP/dense/config.json" >"$TMP/c" && mv "$TMP/c" "$TMP/dense/config.json"
    run upcycle --experts 2 --top-k 1 "$TMP/dense" "$TMP/moe"
    assert_status 65
    assert_one_error_line upcycle
    assert_output_contains "expected [32, 16]"
    # truncated weights
    jq '.intermediate_size = 24' "$TMP/dense/config.json" >"$TMP/c" && mv "$TMP/c" "$TMP/dense/config.json"
    size=$(stat -c %s "$TMP/dense/model.safetensors")
    truncate -s $((size - 100)) "$TMP/dense/model.safetensors"
    run upcycle --experts 2 --top-k 1 "$TMP/dense" "$TMP/moe"
    assert_status 65
    assert_one_error_line upcycle
    assert_output_contains "model.safetensors"
    # no weights at all
    rm "$TMP/dense/model.safetensors"
    run upcycle --experts 2 --top-k 1 "$TMP/dense" "$TMP/moe"
    assert_status 66
    assert_one_error_line upcycle
    assert_nothing_left
}

@test "upcycle: unwritable output directory" {
    dense "$TMP/dense"
    run upcycle --experts 2 --top-k 1 "$TMP/dense" "$TMP/no/such/moe"
    assert_status 73
    assert_one_error_line upcycle
    assert_output_contains "$TMP/no/such/moe"
    mkdir "$TMP/ro"
    chmod 555 "$TMP/ro"
    if [ -w "$TMP/ro" ]; then
        chmod 755 "$TMP/ro"
        skip "running as root: a read-only directory is still writable (the missing-parent case ran)"
    fi
    run upcycle --experts 2 --top-k 1 "$TMP/dense" "$TMP/ro/moe"
    chmod 755 "$TMP/ro"
    assert_status 73
    assert_one_error_line upcycle
    [ -z "$(ls -A "$TMP/ro")" ]
}

@test "upcycle: full disk and full stdout: nothing half-written left behind" {
    dense "$TMP/dense"
    # the MoE weights are 18480*4 bytes; allow 40 KB per file
    run bash -c "ulimit -f 40; exec upcycle --experts 4 --top-k 2 '$TMP/dense' '$TMP/moe' >/dev/null"
    assert_status 74
    assert_one_error_line upcycle
    assert_output_contains "write failed"
    assert_nothing_left
    # the record comes last: the checkpoint itself is complete
    run bash -c "exec upcycle --experts 4 --top-k 2 '$TMP/dense' '$TMP/moe2' >/dev/full"
    assert_status 74
    assert_output_contains "upcycle: "
    [ -f "$TMP/moe2/config.json" ] && [ -f "$TMP/moe2/model.safetensors" ]
    rm -rf "$TMP/moe2"
    assert_nothing_left
}

@test "upcycle: init and variant options reach the checkpoint and the summary" {
    dense "$TMP/dense"
    summary() { records json | jq -r "$1"; }
    upcycle --experts 4 --top-k 2 --router-init uniform --router-std 0.5 --expert-noise 0.01 \
        --drop-ratio 0.25 --granularity 2 --seq-len 128 "$TMP/dense" "$TMP/a" 2>/dev/null > "$TMP/a.mpk"
    run jq -c '.upcyc.upcycle | [.router_init, .router_std, .expert_noise, .drop_ratio, .granularity]' "$TMP/a/config.json"
    [ "$output" = '["uniform",0.5,0.01,0.25,2]' ]
    [ "$(jq '.intermediate_size' "$TMP/a/config.json")" -eq 12 ]   # 24 / G
    # --seq-len moves only the attention term: 12 * layers * heads * head_dim per token of context.
    upcycle --experts 4 --top-k 2 --seq-len 256 "$TMP/dense" "$TMP/b" 2>/dev/null > "$TMP/b.mpk"
    f128=$(summary .dense.train_flops_per_token < "$TMP/a.mpk")
    f256=$(summary .dense.train_flops_per_token < "$TMP/b.mpk")
    read -r L H D < <(jq -r '"\(.num_hidden_layers) \(.num_attention_heads) \(.head_dim // (.hidden_size / .num_attention_heads))"' "$TMP/dense/config.json")
    [ "$((f256 - f128))" -eq "$((12 * L * H * D * 128))" ]
    # Each option changes the weights it names: noise the experts, the init the router.
    upcycle --experts 4 --top-k 2 "$TMP/dense" "$TMP/plain" >/dev/null 2>&1
    upcycle --experts 4 --top-k 2 --expert-noise 0.01 "$TMP/dense" "$TMP/noisy" >/dev/null 2>&1
    upcycle --experts 4 --top-k 2 --router-init zeros "$TMP/dense" "$TMP/zeros" >/dev/null 2>&1
    upcycle --experts 4 --top-k 2 --router-std 0.5 "$TMP/dense" "$TMP/wide" >/dev/null 2>&1
    for v in noisy zeros wide; do
        run cmp -s "$TMP/plain/model.safetensors" "$TMP/$v/model.safetensors"
        [ "$status" -eq 1 ]
    done
    [ "$(stat -c %s "$TMP/plain/model.safetensors")" -eq "$(stat -c %s "$TMP/zeros/model.safetensors")" ]
}
