#!/usr/bin/env bats
# serve-bench: sweeps over rates and concurrency on random-weight shapes,
# the records and their arithmetic, MoE routing, generate, bad input.

load helpers

@test "serve-bench: usage errors and workloads that cannot fit say so, exit 64 with one line" {
    for args in "" "--shape tiny --model x" "--shape nope" "--shape tiny --rates 0" "--shape tiny --rates x" \
        "--shape tiny --prompt-len uniform:5" "--shape tiny --prompt hello" "--shape tiny --bogus 1"; do
        # shellcheck disable=SC2086
        run serve-bench $args
        assert_status 64
        assert_one_error_line serve-bench
    done
    run serve-bench --shape tiny --prompt-len 3500
    assert_status 64
    assert_output_contains "pass tiny's context of 1024; raise --scale"
    run serve-bench --shape 436m --kv-memory 1M --scale 100
    assert_status 64
    assert_output_contains "hold 16 tokens at 45056 bytes per token"
    run serve-bench --shape nope
    assert_output_contains "436m"
}

@test "serve-bench: a sweep gives a memory record and one sweep_point per point, with vLLM's arithmetic" {
    serve-bench --shape tiny --scale 50 --requests 12 --warmup 1 --rates inf,30 --concurrency 3 --per-request \
        > "$TMP/r.mpk" 2> "$TMP/table"
    records json < "$TMP/r.mpk" > "$TMP/r.jsonl"
    # 3500/50 = 70 prompt and 300/50 = 6 output tokens per request
    jq -s -e 'map(select(.event == "memory"))[0] | .kv_bytes_per_token == 2 * 4 * 2 * 32 * 4 and .request_tokens_mean == 76' \
        "$TMP/r.jsonl" > /dev/null
    # the 1 GiB pool holds 524288 tokens = 32768 blocks of 16, 5 blocks a
    # request of 76 tokens: 6553 requests, but 64 sequence slots (--max-seqs)
    jq -s -e 'map(select(.event == "memory"))[0] | .kv_capacity_tokens == 524288 and .max_concurrent_requests == 64' \
        "$TMP/r.jsonl" > /dev/null
    serve-bench --shape tiny --scale 50 --requests 2 --warmup 0 --concurrency 1 --kv-memory 160K --max-seqs 100 \
        > "$TMP/k.mpk" 2> /dev/null
    # 160 KiB at 2048 bytes a token: 80 tokens, 5 blocks: one request of 5 blocks
    records json < "$TMP/k.mpk" | jq -s -e 'map(select(.event == "memory"))[0] | .max_concurrent_requests == 1' > /dev/null
    [ "$(jq -c 'select(.event == "sweep_point") | [.completed, .prompt_tokens, .output_tokens]' "$TMP/r.jsonl" | sort -u)" = "[12,840,72]" ]
    [ "$(jq -c 'select(.event == "sweep_point") | [.rate_rps, .concurrency]' "$TMP/r.jsonl" | tr -d '\n')" = \
        '[{"$float":"inf"},0][30,0][{"$float":"inf"},3]' ]
    # throughputs are counts over the duration; TTFT <= E2E; TPOT = (E2E - TTFT) / (output - 1) per request
    jq -s -e '[.[] | select(.event == "sweep_point")] | all(
        ((.requests_per_s * .duration_s - .completed) | fabs) < 1e-6 and
        ((.output_tokens_per_s * .duration_s - .output_tokens) | fabs) < 1e-6 and
        ((.total_tokens_per_s * .duration_s - .output_tokens - .prompt_tokens) | fabs) < 1e-6 and
        .ttft_ms_mean <= .e2e_ms_mean and .ttft_ms_median <= .ttft_ms_p99)' "$TMP/r.jsonl" > /dev/null
    [ "$(jq -c 'select(.event == "request")' "$TMP/r.jsonl" | wc -l)" -eq 36 ]
    jq -s -e '[.[] | select(.event == "request")] | all(
        ((.tpot_ms - (.e2e_ms - .ttft_ms) / (.output_len - 1)) | fabs) < 1e-6 and .ttft_ms > 0)' "$TMP/r.jsonl" > /dev/null
    # open loop at 30/s: arrivals spread over about 12/30 s, so the point lasts at least the last arrival
    jq -s -e '[.[] | select(.event == "sweep_point" and .rate_rps == 30)][0] | .duration_s > 0.1' "$TMP/r.jsonl" > /dev/null
    grep -q "tiny c=3" "$TMP/table"
}

@test "serve-bench: an upcycled shape reports the experts its steps touched" {
    serve-bench --shape tiny-moe8x2 --scale 50 --requests 8 --concurrency 1,8 > "$TMP/m.mpk" 2> "$TMP/err"
    records json < "$TMP/m.mpk" > "$TMP/m.jsonl"
    # one token at a time (c=1, decode) touches at most k = 2 experts per layer; eight at once, more
    [ "$(jq -c 'select(.event == "moe_routing") | .experts' "$TMP/m.jsonl" | sort -u)" = 8 ]
    jq -s -e '[.[] | select(.event == "moe_routing")] | length == 2 and .[0].experts_touched_mean < .[1].experts_touched_mean and .[1].experts_touched_mean <= 8' \
        "$TMP/m.jsonl" > /dev/null
    # decode-only steps of one request touch exactly k = 2 experts per layer;
    # steps with prefill chunks touch more
    jq -s -e '[.[] | select(.event == "moe_routing")] | .[0].experts_touched_decode_mean == 2 and .[0].experts_touched_mean > 2' \
        "$TMP/m.jsonl" > /dev/null
    jq -s -e 'map(select(.event == "memory"))[0] | .params > .active_params' "$TMP/m.jsonl" > /dev/null
    grep -q "experts per MoE layer per step" "$TMP/err"
}

# A tiny dense checkpoint trained for 20 steps on a fortune file, with its
# tokenizer (for generate's text), at $1.
trained_checkpoint() {
    corpus=/usr/share/games/fortunes/science
    tokenize train --vocab-size 300 --split separator=% -o "$TMP/tok.json" "$corpus" 2> /dev/null
    tokenize encode --tokenizer "$TMP/tok.json" --split separator=% -o "$TMP/t.mpk" "$corpus" 2> /dev/null
    shard "$TMP/shards" "$TMP/t.mpk"
    printf '{"architectures": ["LlamaForCausalLM"], "hidden_size": 32, "intermediate_size": 64, "max_position_embeddings": 128, "num_attention_heads": 2, "num_hidden_layers": 2, "num_key_value_heads": 1, "tie_word_embeddings": true, "vocab_size": 300}\n' > "$TMP/c.json"
    train --init "$TMP/c.json" --data "$TMP/shards/train" --tokenizer "$TMP/tok.json" --batch 4 --seq-len 32 \
        --steps 20 --lr 1e-2 --out "$1" > /dev/null 2>&1
}

@test "serve-bench generate: streams a checkpoint's continuation, greedy is deterministic" {
    trained_checkpoint "$TMP/ckpt"
    run serve-bench generate --model "$TMP/ckpt" --prompt "The laws of physics" --max-tokens 12
    assert_status 0
    first="$output"
    [ "${first#The laws of physics}" != "$first" ]
    run serve-bench generate --model "$TMP/ckpt" --prompt "The laws of physics" --max-tokens 12
    [ "$output" = "$first" ]
    echo "The laws of physics" | serve-bench generate --model "$TMP/ckpt" --max-tokens 12 --temperature 1 --seed 3 > "$TMP/a"
    echo "The laws of physics" | serve-bench generate --model "$TMP/ckpt" --max-tokens 12 --temperature 1 --seed 3 > "$TMP/b"
    cmp "$TMP/a" "$TMP/b"
    run serve-bench generate --model "$TMP/nothing" --prompt x
    assert_status 66
}

@test "serve-bench: --precision bf16 is recorded with its weight copy; greedy decode equals rounding per GEMM" {
    serve-bench --shape tiny-moe8x2 --scale 50 --requests 2 --warmup 0 --concurrency 1 > "$TMP/f.mpk" 2> /dev/null
    serve-bench --shape tiny-moe8x2 --scale 50 --requests 2 --warmup 0 --concurrency 1 --precision bf16 \
        > "$TMP/h.mpk" 2> /dev/null
    memory() { records json < "$1" | jq -c 'select(.event=="memory") | [.precision, .weight_bytes, .params]'; }
    memory "$TMP/f.mpk" | jq -e '.[0] == "fp32" and .[1] == 4 * .[2]' > /dev/null
    # the bf16 copy is the model's whole parameter buffer (padding included)
    memory "$TMP/h.mpk" | jq -e '.[0] == "bf16" and .[1] >= 6 * .[2] and .[1] < 6 * .[2] + 65536' > /dev/null
    # greedy and sampled continuations of a trained MoE checkpoint: the same
    # text with the weights rounded once and rounded in every GEMM
    trained_checkpoint "$TMP/dense"
    upcycle --experts 4 --top-k 2 "$TMP/dense" "$TMP/moe" > /dev/null 2>&1
    for t in 0 1; do
        serve-bench generate --model "$TMP/moe" --prompt "The laws of physics" --max-tokens 24 --precision bf16 \
            --temperature $t --seed 5 > "$TMP/once$t"
        UPC_BF16_WEIGHTS=0 serve-bench generate --model "$TMP/moe" --prompt "The laws of physics" --max-tokens 24 \
            --precision bf16 --temperature $t --seed 5 > "$TMP/each$t"
        cmp "$TMP/once$t" "$TMP/each$t"
        [ "$(wc -c < "$TMP/once$t")" -gt 24 ]
    done
    run serve-bench --shape tiny --precision int8
    assert_status 64
    assert_one_error_line serve-bench
}

@test "serve-bench: a full stdout is EX_IOERR" {
    run sh -c "serve-bench --shape tiny --scale 100 --requests 2 > /dev/full"
    assert_status 74
}
