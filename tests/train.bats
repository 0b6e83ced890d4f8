#!/usr/bin/env bats
# train: learning, schedules, micro-batches, checkpoints, exact resume after
# a signal or a kill -9, MoE from an upcycled checkpoint, and bad input.

load helpers

# A 512-token tokenizer, shards of two fortune files, and a tiny model
# config, made once per file.
setup_file() {
    export D="$BATS_FILE_TMPDIR"
    local corpus="/usr/share/games/fortunes/fortunes /usr/share/games/fortunes/science"
    # shellcheck disable=SC2086
    "$UPCYC_BIN/tokenize" train --vocab-size 512 --split separator=% -o "$D/tok.json" $corpus
    # shellcheck disable=SC2086
    "$UPCYC_BIN/tokenize" encode --tokenizer "$D/tok.json" --split separator=% -o "$D/tokens.mpk" $corpus
    "$UPCYC_BIN/shard" --val-fraction 0.05 --chunk-tokens 4096 "$D/shards" "$D/tokens.mpk"
    cp "$FIXTURES/model/tiny-512.json" "$D/tiny.json"
    export BASE="--data $D/shards/train --tokenizer $D/tok.json --batch 4 --seq-len 32 --lr 1e-2 --warmup 2"
}

# field of every record of event $2 in msgpack file $1, one per line
fields() {
    records json < "$1" | jq -r "select(.event==\"$2\") | .$3"
}

@test "train: --help, and usage errors exit 64 with one line" {
    run train --help
    assert_status 0
    assert_output_contains "--resume"
    # shellcheck disable=SC2086
    for args in "--data $D/shards/train --steps 3" \
        "--init $D/tiny.json --out $TMP/o --steps 3" \
        "--init $D/tiny.json --from $D --data $D/shards/train --out $TMP/o --steps 3" \
        "--init $D/tiny.json --data $D/shards/train --out $TMP/o" \
        "--init $D/tiny.json --data $D/shards/train --out $TMP/o --steps 3 --tokens 100" \
        "--init $D/tiny.json --data $D/shards/train --out $TMP/o --steps 3 --batch 4 --micro-batch 3" \
        "--init $D/tiny.json --data $D/shards/train --out $TMP/o --steps 3 --warmup 4" \
        "--init $D/tiny.json --data $D/shards/train --out $TMP/o --steps 3 --schedule step" \
        "--init $D/tiny.json --data $D/shards/train --out $TMP/o --steps 3 --optimizer sgd" \
        "--init $D/tiny.json --data $D/shards/train --out $TMP/o --steps 3 --seq-len 129" \
        "--init $D/tiny.json --data $D/shards/train --out $TMP/o --steps 3 --lr -1"; do
        run train $args
        assert_status 64
        assert_one_error_line train
    done
    [ ! -e "$TMP/o" ]
}

@test "train: the loss falls, the checkpoint is complete and loads again" {
    # shellcheck disable=SC2086
    train --init "$D/tiny.json" $BASE --val "$D/shards/val" --steps 40 --eval-every 20 \
        --out "$TMP/run" > "$TMP/r.mpk"
    for f in config.json model.safetensors optimizer.safetensors tokenizer.json trainer_state.json; do
        [ -s "$TMP/run/$f" ] || { echo "missing $f" >&2; return 1; }
    done
    cmp "$D/tok.json" "$TMP/run/tokenizer.json"
    [ "$(fields "$TMP/r.mpk" train_step step | wc -l)" -eq 40 ]
    first=$(fields "$TMP/r.mpk" train_step loss | head -1)
    evals=$(fields "$TMP/r.mpk" eval loss | tr '\n' ' ')
    set -- $evals
    [ $# -eq 2 ]
    # from ln(512) = 6.24 at init; the val loss falls and stays below the start
    awk -v a="$first" -v e1="$1" -v e2="$2" 'BEGIN { exit !(a > 6.0 && e1 < a - 0.5 && e2 < e1) }' ||
        { echo "first $first evals $evals" >&2; return 1; }
    [ "$(jq .step "$TMP/run/trainer_state.json")" -eq 40 ]
    [ "$(jq .tokens "$TMP/run/trainer_state.json")" -eq $((40 * 4 * 32)) ]
    [ "$(fields "$TMP/r.mpk" train_end interrupted)" = false ]
    # continue pretraining from it: step 1 of the new run starts near the old end
    # shellcheck disable=SC2086
    train --from "$TMP/run" --data "$D/shards/train" --batch 4 --seq-len 32 --steps 1 \
        --out "$TMP/cpt" > "$TMP/c.mpk"
    cpt=$(fields "$TMP/c.mpk" train_step ce)
    awk -v c="$cpt" -v e="$2" 'BEGIN { exit !(c < e + 0.5) }' || { echo "cpt $cpt eval $2" >&2; return 1; }
    cmp "$D/tok.json" "$TMP/cpt/tokenizer.json"
}

@test "train: the learning-rate schedule follows warmup, decay and floor" {
    # shellcheck disable=SC2086
    train --init "$D/tiny.json" --data "$D/shards/train" --batch 2 --seq-len 16 --steps 12 \
        --lr 0.01 --warmup 4 --schedule linear --min-lr-ratio 0.5 --out "$TMP/s" > "$TMP/s.mpk"
    run fields "$TMP/s.mpk" train_step lr
    lrs=($output)
    # steps 1..4 warm up linearly, then linear decay from 0.01 to 0.005 at step 12
    for i in 1 2 4 8 12; do
        want=$(awk -v s=$i 'BEGIN { if (s <= 4) print 0.01 * s / 4; else print 0.01 - 0.005 * (s - 4) / 8 }')
        awk -v g="${lrs[$((i - 1))]}" -v w="$want" 'BEGIN { d = g - w; exit !(d < 1e-12 && d > -1e-12) }' ||
            { echo "step $i lr ${lrs[$((i - 1))]}, want $want" >&2; return 1; }
    done
    # cosine reaches its floor at the end; constant stays at the peak
    train --init "$D/tiny.json" --data "$D/shards/train" --batch 2 --seq-len 16 --steps 6 \
        --lr 0.01 --min-lr-ratio 0.1 --out "$TMP/c" > "$TMP/c.mpk"
    fields "$TMP/c.mpk" train_step lr | awk 'NR == 1 { a = $1 } END {
        w = 0.001 + 0.009 * (1 + cos(3.14159265358979 / 6)) / 2
        exit !(a - w < 1e-12 && w - a < 1e-12 && $1 - 0.001 < 1e-12 && 0.001 - $1 < 1e-12) }'
    train --init "$D/tiny.json" --data "$D/shards/train" --batch 2 --seq-len 16 --steps 3 \
        --lr 0.01 --schedule constant --out "$TMP/k" > "$TMP/k.mpk"
    [ "$(fields "$TMP/k.mpk" train_step lr | sort -u)" = "0.01" ]
}

@test "train: micro-batches accumulate to the full batch's loss and gradient" {
    # shellcheck disable=SC2086
    train --init "$D/tiny.json" $BASE --steps 3 --out "$TMP/full" > "$TMP/full.mpk"
    # shellcheck disable=SC2086
    train --init "$D/tiny.json" $BASE --steps 3 --micro-batch 1 --out "$TMP/micro" > "$TMP/micro.mpk"
    paste <(fields "$TMP/full.mpk" train_step loss) <(fields "$TMP/micro.mpk" train_step loss) \
        <(fields "$TMP/full.mpk" train_step grad_norm) <(fields "$TMP/micro.mpk" train_step grad_norm) |
        awk '{ d = $1 - $2; g = ($3 - $4) / $3; if (d > 1e-5 || d < -1e-5 || g > 1e-4 || g < -1e-4) { print; bad = 1 } }
             END { exit bad }'
}

@test "train: Lion trains, and --tokens sets the number of steps" {
    # shellcheck disable=SC2086
    train --init "$D/tiny.json" $BASE --optimizer lion --lr 1e-2 --tokens 2000 --out "$TMP/l" > "$TMP/l.mpk"
    # ceil(2000 / (4 * 32)) = 16 steps
    [ "$(fields "$TMP/l.mpk" train_step step | tail -1)" -eq 16 ]
    fields "$TMP/l.mpk" train_step loss | awk 'NR == 1 { a = $1 } END { exit !($1 < a - 0.3) }'
    # Lion keeps one moment, AdamW two
    run python3 -c 'import json,struct,sys
f = open(sys.argv[1], "rb"); n = struct.unpack("<Q", f.read(8))[0]; h = json.loads(f.read(n))
print(h["__metadata__"]["optimizer"], sum(k.endswith(".exp_avg_sq") for k in h), sum(k.endswith(".exp_avg") for k in h))' \
        "$TMP/l/optimizer.safetensors"
    assert_status 0
    [ "$output" = "lion 0 $(python3 -c 'import json,struct,sys
f = open(sys.argv[1], "rb"); n = struct.unpack("<Q", f.read(8))[0]; h = json.loads(f.read(n))
print(sum(1 for k in h if k != "__metadata__"))' "$TMP/l/model.safetensors")" ]
}

# The steps and losses of every train_step in $1, as "step loss" lines.
losses() {
    records json < "$1" | jq -r 'select(.event=="train_step") | "\(.step) \(.loss) \(.grad_norm)"'
}

# The interrupted runs below are given far more steps than they get to run,
# so the signal always lands mid-run however fast the machine is, and a
# constant schedule, so their steps match a reference run of 80 steps; the
# resume then asks for those 80 (a run's length may change on resume).
@test "train: SIGTERM saves, exits 143, and --resume continues bit for bit" {
    local args="--init $D/tiny.json $BASE --schedule constant"
    # shellcheck disable=SC2086
    train $args --steps 80 --out "$TMP/a" > "$TMP/a.mpk"
    # shellcheck disable=SC2086
    train $args --steps 1000000 --out "$TMP/b" > "$TMP/b.mpk" &
    local pid=$!
    for _ in $(seq 400); do
        [ "$(records json < "$TMP/b.mpk" 2> /dev/null | grep -c train_step)" -ge 5 ] && break
        sleep 0.05
    done
    kill -TERM $pid
    local rc=0
    wait $pid || rc=$?
    [ "$rc" -eq 143 ]
    local at
    at=$(jq .step "$TMP/b/trainer_state.json")
    [ "$at" -ge 5 ] && [ "$at" -lt 80 ]
    [ "$(fields "$TMP/b.mpk" train_end interrupted)" = true ]
    # --resume; the other settings come from the checkpoint
    train --resume --steps 80 --out "$TMP/b" > "$TMP/b2.mpk"
    diff <(losses "$TMP/a.mpk" | awk -v s="$at" '$1 > s') <(losses "$TMP/b2.mpk")
    cmp "$TMP/a/model.safetensors" "$TMP/b/model.safetensors"
    cmp "$TMP/a/optimizer.safetensors" "$TMP/b/optimizer.safetensors"
}

@test "train: after kill -9 --resume continues from the last save, bit for bit" {
    local args="--init $D/tiny.json $BASE --schedule constant --save-every 4"
    # shellcheck disable=SC2086
    train $args --steps 80 --out "$TMP/a" > "$TMP/a.mpk"
    # shellcheck disable=SC2086
    train $args --steps 1000000 --out "$TMP/b" > "$TMP/b.mpk" &
    local pid=$!
    for _ in $(seq 400); do
        [ "$(records json < "$TMP/b.mpk" 2> /dev/null | grep -c train_step)" -ge 10 ] && break
        sleep 0.05
    done
    kill -KILL $pid
    local rc=0
    wait $pid || rc=$?
    [ "$rc" -eq 137 ]   # killed mid-run, not finished
    local at
    at=$(jq .step "$TMP/b/trainer_state.json")
    [ "$at" -ge 8 ] && [ "$at" -lt 80 ] && [ $((at % 4)) -eq 0 ]
    train --resume --steps 80 --out "$TMP/b" > "$TMP/b2.mpk"
    diff <(losses "$TMP/a.mpk" | awk -v s="$at" '$1 > s') <(losses "$TMP/b2.mpk")
    cmp "$TMP/a/model.safetensors" "$TMP/b/model.safetensors"
    # no temporary directory left beside the checkpoint
    [ -z "$(ls -d "$TMP"/b.tmp.* 2> /dev/null)" ]
}

@test "train: --resume may extend the run but refuses other changes" {
    # shellcheck disable=SC2086
    train --init "$D/tiny.json" $BASE --steps 4 --out "$TMP/r" > /dev/null
    run train --resume --out "$TMP/r" --lr 0.5
    assert_status 64
    assert_output_contains "--lr differs from the run being resumed"
    run train --resume --out "$TMP/r" --steps 2
    assert_status 64
    [ "$(jq .step "$TMP/r/trainer_state.json")" -eq 4 ]
    # a save cut short by kill -9 (its process gone) is cleaned up; a live one is not
    sleep 0 &
    local dead=$!
    wait $dead
    mkdir -p "$TMP/r.tmp.$dead/x" "$TMP/r.tmp.$$"
    train --resume --out "$TMP/r" --steps 6 > "$TMP/r.mpk"
    [ ! -e "$TMP/r.tmp.$dead" ] && [ -d "$TMP/r.tmp.$$" ]
    [ "$(fields "$TMP/r.mpk" train_step step | tr '\n' ' ')" = "5 6 " ]
    # the decay ended at the first run's length: the extension trains at the floor
    [ "$(fields "$TMP/r.mpk" train_step lr | sort -u)" = "0.001" ]
    [ "$(fields "$TMP/r.mpk" train_start start_step)" -eq 4 ]
    # paths are stored resolved: a resume from another directory reads the same data
    (cd "$D" && train --init tiny.json --data shards/train --batch 2 --seq-len 16 --steps 2 --out "$TMP/rel" > /dev/null)
    (cd / && train --resume --out "$TMP/rel" --steps 3 > "$TMP/rel.mpk")
    [ "$(fields "$TMP/rel.mpk" train_step step)" -eq 3 ]
    [ "$(jq -r .settings.data "$TMP/rel/trainer_state.json")" = "$(cd "$D/shards/train" && pwd -P)" ]
    run train --resume --out "$TMP/nothing" --steps 6
    assert_status 66
    assert_one_error_line train
}

@test "train: an upcycled MoE starts at its dense parent's loss and reports expert load" {
    # shellcheck disable=SC2086
    train --init "$D/tiny.json" $BASE --steps 10 --out "$TMP/dense" > /dev/null
    upcycle --experts 4 --top-k 2 "$TMP/dense" "$TMP/moe0" > /dev/null 2>&1
    local args="--data $D/shards/train --batch 4 --seq-len 32 --steps 3 --lr 1e-3 --seed 7"
    # shellcheck disable=SC2086
    train --from "$TMP/dense" $args --out "$TMP/cpt" > "$TMP/cpt.mpk"
    # shellcheck disable=SC2086
    train --from "$TMP/moe0" $args --out "$TMP/moe" > "$TMP/moe.mpk"
    # step 1 sees the same batch: the MoE's cross-entropy is the dense one's
    awk -v a="$(fields "$TMP/cpt.mpk" train_step ce | head -1)" -v b="$(fields "$TMP/moe.mpk" train_step ce | head -1)" \
        'BEGIN { d = (a - b) / a; exit !(d < 1e-5 && d > -1e-5) }'
    # the load-balancing loss of a fresh router is near its minimum of 1 (HF scale: k)
    fields "$TMP/moe.mpk" train_step lb_loss | head -1 | awk '{ exit !($1 > 1.5 && $1 < 2.5) }'
    # expert load: per layer, the token slots (4 * 32 tokens x top-2) over 4 experts
    run sh -c "records json < '$TMP/moe.mpk' | jq -c 'select(.event==\"train_step\") | [.expert_load[] | add]' | sort -u"
    [ "$output" = "[256,256]" ]
    [ "$(records json < "$TMP/moe.mpk" | jq -c 'select(.event=="train_step") | .expert_load[0] | length' | sort -u)" = 4 ]
    grep -q '"num_local_experts": 4' "$TMP/moe/config.json"
    # capacity mode (upcyc.capacity_factor): dropped slots are counted per layer
    jq '.upcyc.capacity_factor = 0.5' "$TMP/moe0/config.json" > "$TMP/c.json"
    mv "$TMP/c.json" "$TMP/moe0/config.json"
    # shellcheck disable=SC2086
    train --from "$TMP/moe0" $args --out "$TMP/cap" > "$TMP/cap.mpk"
    # capacity ceil(0.5 * 128 * 2 / 4) = 32 of each expert's slots: at least 256 - 4 * 32 dropped
    run sh -c "records json < '$TMP/cap.mpk' | jq -c 'select(.event==\"train_step\") | .dropped | map(. >= 128 and . < 256) | all' | sort -u"
    [ "$output" = true ]
    # no drops recorded without a capacity factor
    [ "$(records json < "$TMP/moe.mpk" | jq -c 'select(.event=="train_step") | has("dropped")' | sort -u)" = false ]
}

@test "train: router jitter noise trains, resumes bit for bit, and never touches validation" {
    # shellcheck disable=SC2086
    train --init "$D/tiny.json" $BASE --steps 10 --out "$TMP/dense" > /dev/null
    upcycle --experts 4 --top-k 2 "$TMP/dense" "$TMP/calm" > /dev/null 2>&1
    cp -r "$TMP/calm" "$TMP/jit"
    jq '.router_jitter_noise = 0.2' "$TMP/calm/config.json" > "$TMP/jit/config.json"
    local args="--data $D/shards/train --val $D/shards/val --eval-tokens 2048 --batch 4 --micro-batch 2 --seq-len 32 --seed 7 --schedule constant"
    # shellcheck disable=SC2086
    train --from "$TMP/calm" $args --steps 6 --lr 1e-3 --out "$TMP/c6" > "$TMP/c6.mpk" 2> "$TMP/c6.err"
    # shellcheck disable=SC2086
    train --from "$TMP/jit" $args --steps 6 --lr 1e-3 --out "$TMP/j6" > "$TMP/j6.mpk" 2> "$TMP/j6.err"
    ! grep -q jitter "$TMP/j6.err"
    # the same batch at step 1, another loss: the noise is there
    [ "$(fields "$TMP/c6.mpk" train_step ce | head -1)" != "$(fields "$TMP/j6.mpk" train_step ce | head -1)" ]
    # a run cut in two draws the same noise: the same losses and weights
    # shellcheck disable=SC2086
    train --from "$TMP/jit" $args --steps 3 --lr 1e-3 --out "$TMP/j3" > /dev/null
    train --resume --steps 6 --out "$TMP/j3" > "$TMP/j3b.mpk"
    diff <(losses "$TMP/j6.mpk" | awk '$1 > 3') <(losses "$TMP/j3b.mpk")
    cmp "$TMP/j6/model.safetensors" "$TMP/j3/model.safetensors"
    # with a learning rate too small to move a weight, validation sees the
    # same model with and without jitter: validation is not jittered
    # shellcheck disable=SC2086
    train --from "$TMP/calm" $args --steps 1 --lr 1e-30 --out "$TMP/c0" > "$TMP/c0.mpk"
    # shellcheck disable=SC2086
    train --from "$TMP/jit" $args --steps 1 --lr 1e-30 --out "$TMP/j0" > "$TMP/j0.mpk"
    [ "$(fields "$TMP/c0.mpk" eval loss)" = "$(fields "$TMP/j0.mpk" eval loss)" ]
    [ "$(fields "$TMP/c0.mpk" train_step ce)" != "$(fields "$TMP/j0.mpk" train_step ce)" ]
}

@test "train: --precision bf16 trains close to fp32, is recorded, and a resume keeps it" {
    local args="--init $D/tiny.json $BASE --steps 12 --schedule constant"
    # shellcheck disable=SC2086
    train $args --out "$TMP/f" > "$TMP/f.mpk"
    # shellcheck disable=SC2086
    train $args --precision bf16 --out "$TMP/h" > "$TMP/h.mpk"
    [ "$(fields "$TMP/h.mpk" train_start precision)" = bf16 ]
    [ "$(fields "$TMP/f.mpk" train_start precision)" = fp32 ]
    # the same batches: bf16 losses within 2% of fp32's, and not the same bits
    paste <(fields "$TMP/f.mpk" train_step loss) <(fields "$TMP/h.mpk" train_step loss) |
        awk '{ d = ($1 - $2) / $1; if (d > 0.02 || d < -0.02) { print "differ:", $0; bad = 1 } if ($1 != $2) diff = 1 }
             END { exit bad || !diff }'
    # a resume runs bf16 again without being told, bit for bit
    # shellcheck disable=SC2086
    train $args --precision bf16 --steps 6 --out "$TMP/h2" > /dev/null
    train --resume --steps 12 --out "$TMP/h2" > "$TMP/h2b.mpk"
    [ "$(fields "$TMP/h2b.mpk" train_start precision)" = bf16 ]
    diff <(losses "$TMP/h.mpk" | awk '$1 > 6') <(losses "$TMP/h2b.mpk")
    cmp "$TMP/h/model.safetensors" "$TMP/h2/model.safetensors"
    # another precision on resume is allowed, and said
    run train --resume --steps 14 --precision fp32 --out "$TMP/h2"
    assert_status 0
    [ "$(printf '%s\n' "$output" | grep -c "resuming with --precision fp32, the run was saved with bf16")" -eq 1 ]
    # a run saved before --precision existed (no settings.precision) resumes as fp32
    # shellcheck disable=SC2086
    train $args --steps 6 --out "$TMP/old" > /dev/null
    jq 'del(.settings.precision)' "$TMP/old/trainer_state.json" > "$TMP/ts.json"
    mv "$TMP/ts.json" "$TMP/old/trainer_state.json"
    train --resume --steps 12 --out "$TMP/old" > "$TMP/old.mpk" 2> "$TMP/old.err"
    [ "$(fields "$TMP/old.mpk" train_start precision)" = fp32 ]
    ! grep -q precision "$TMP/old.err"
    diff <(losses "$TMP/f.mpk" | awk '$1 > 6') <(losses "$TMP/old.mpk")
    # shellcheck disable=SC2086
    run train $args --precision fp8 --out "$TMP/x"
    assert_status 64
    assert_one_error_line train
    assert_output_contains "--precision fp8: expected fp32 or bf16"
    [ ! -e "$TMP/x" ]
}

@test "train: bf16 weights rounded once per step give the bits of rounding them in every GEMM (dense, MoE, validation)" {
    # shellcheck disable=SC2086
    train --init "$D/tiny.json" $BASE --steps 4 --out "$TMP/dense" > /dev/null
    upcycle --experts 4 --top-k 2 "$TMP/dense" "$TMP/moe" > /dev/null 2>&1
    local args="--data $D/shards/train --val $D/shards/val --eval-every 2 --batch 4 --seq-len 32 --steps 4 --lr 1e-3"
    for from in dense moe; do
        # shellcheck disable=SC2086
        train --from "$TMP/$from" $args --precision bf16 --out "$TMP/$from-once" > "$TMP/$from-once.mpk"
        # shellcheck disable=SC2086
        UPC_BF16_WEIGHTS=0 train --from "$TMP/$from" $args --precision bf16 --out "$TMP/$from-each" > "$TMP/$from-each.mpk"
        [ "$(losses "$TMP/$from-once.mpk" | wc -l)" -eq 4 ]
        diff <(losses "$TMP/$from-once.mpk") <(losses "$TMP/$from-each.mpk")
        [ "$(fields "$TMP/$from-once.mpk" eval loss | wc -l)" -eq 2 ]
        diff <(fields "$TMP/$from-once.mpk" eval loss) <(fields "$TMP/$from-each.mpk" eval loss)
        cmp "$TMP/$from-once/model.safetensors" "$TMP/$from-each/model.safetensors"
    done
}

@test "train: UPC_PROFILE=1 prints a kernel profile on stderr and changes no result (dense and MoE, bf16)" {
    # shellcheck disable=SC2086
    train --init "$D/tiny.json" $BASE --steps 2 --out "$TMP/dense" > /dev/null
    upcycle --experts 4 --top-k 2 "$TMP/dense" "$TMP/moe" > /dev/null 2>&1
    local args="--data $D/shards/train --batch 4 --seq-len 32 --steps 3 --lr 1e-3 --precision bf16"
    for from in dense moe; do
        # shellcheck disable=SC2086
        train --from "$TMP/$from" $args --out "$TMP/$from-plain" > "$TMP/$from-plain.mpk"
        # shellcheck disable=SC2086
        UPC_PROFILE=1 train --from "$TMP/$from" $args --out "$TMP/$from-prof" > "$TMP/$from-prof.mpk" \
            2> "$TMP/$from-prof.err"
        [ "$(losses "$TMP/$from-prof.mpk" | wc -l)" -eq 3 ]
        diff <(losses "$TMP/$from-plain.mpk") <(losses "$TMP/$from-prof.mpk")
        cmp "$TMP/$from-plain/model.safetensors" "$TMP/$from-prof/model.safetensors"
        grep -q "^train: kernel profile (UPC_PROFILE=1.*: cpu bf16$" "$TMP/$from-prof.err"
        grep -q "^gemm " "$TMP/$from-prof.err"
    done
    grep -q "^grouped_gemm_fwd " "$TMP/moe-prof.err"
    ! grep -q "^grouped_gemm_fwd " "$TMP/dense-prof.err"
}

@test "train: UPC_BF16_ATTENTION=flash runs bf16 attention through the fused kernels; a bad value fails before anything is written" {
    local args="--init $D/tiny.json --data $D/shards/train --batch 4 --seq-len 32 --steps 2 --precision bf16"
    # shellcheck disable=SC2086
    train $args --out "$TMP/gemm" > "$TMP/gemm.mpk"
    # shellcheck disable=SC2086
    UPC_BF16_ATTENTION=flash train $args --out "$TMP/flash" > "$TMP/flash.mpk"
    # on the CPU the fused kernels are fp32: close to the GEMMs' bf16 rounding, not equal
    paste <(losses "$TMP/gemm.mpk") <(losses "$TMP/flash.mpk") |
        awk '{ d = $2 - $5; if (d < 0) d = -d; if (d > 2e-2 || $2 == $5) bad = 1 } END { exit bad || NR != 2 }'
    # shellcheck disable=SC2086
    UPC_BF16_ATTENTION=fused run train $args --out "$TMP/bad"
    assert_status 64
    assert_one_error_line train
    assert_output_contains "UPC_BF16_ATTENTION=fused: expected gemm (the default) or flash"
    [ ! -e "$TMP/bad" ]
}

@test "train: data or tokenizer that do not fit the model are refused, nothing written" {
    sed 's/"vocab_size": 512/"vocab_size": 300/' "$D/tiny.json" > "$TMP/small.json"
    run train --init "$TMP/small.json" --data "$D/shards/train" --seq-len 32 --steps 2 --out "$TMP/o"
    assert_status 65
    assert_one_error_line train
    assert_output_contains "exceeds the model's vocab_size 300"
    tokenize train --vocab-size 300 -o "$TMP/other.json" /usr/share/games/fortunes/science
    run train --init "$D/tiny.json" --data "$D/shards/train" --tokenizer "$TMP/other.json" --seq-len 32 --steps 2 --out "$TMP/o"
    assert_status 65
    assert_output_contains "differs from the one that made"
    echo '{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}' > "$TMP/gpt2.json"
    run train --init "$TMP/gpt2.json" --data "$D/shards/train" --steps 2 --out "$TMP/o"
    assert_status 65
    assert_one_error_line train
    run train --init "$D/tiny.json" --data "$TMP/none" --steps 2 --out "$TMP/o"
    assert_status 66
    [ ! -e "$TMP/o" ]
    [ -z "$(ls "$TMP" | grep tmp)" ]
}

@test "train: an existing --out is kept unless --force; a diverging run keeps the last save" {
    # shellcheck disable=SC2086
    train --init "$D/tiny.json" $BASE --steps 2 --out "$TMP/o" > /dev/null
    cp -r "$TMP/o" "$TMP/before"
    # shellcheck disable=SC2086
    run train --init "$D/tiny.json" $BASE --steps 2 --out "$TMP/o"
    assert_status 73
    assert_one_error_line train
    # --force never replaces a file, and says so before training
    echo keep > "$TMP/file"
    # shellcheck disable=SC2086
    run train --init "$D/tiny.json" $BASE --steps 2 --force --out "$TMP/file"
    assert_status 73
    assert_one_error_line train
    [ "$(cat "$TMP/file")" = keep ]
    # a learning rate that overflows the weights: NaN, exit 70, the checkpoint untouched
    # shellcheck disable=SC2086
    run train --resume --out "$TMP/o" --steps 40 --save-every 1000 --lr 1e30
    assert_status 64
    # shellcheck disable=SC2086
    run train --from "$TMP/o" --data "$D/shards/train" --seq-len 32 --clip 0 --lr 1e30 --steps 40 --force --out "$TMP/o"
    assert_status 70
    assert_output_contains "diverged"
    diff -r "$TMP/before" "$TMP/o"
}

@test "train: a full disk fails with EX_IOERR and keeps the previous checkpoint" {
    # shellcheck disable=SC2086
    train --init "$D/tiny.json" $BASE --steps 2 --out "$TMP/o" > /dev/null
    cp -r "$TMP/o" "$TMP/before"
    run sh -c "ulimit -f 64; exec train --resume --steps 4 --out '$TMP/o' > /dev/null"
    assert_status 74
    assert_one_error_line train
    diff -r "$TMP/before" "$TMP/o"
    [ -z "$(ls -d "$TMP"/o.tmp.* 2> /dev/null)" ]
    run sh -c "exec train --resume --steps 4 --out '$TMP/o' > /dev/full"
    assert_status 74
    diff -r "$TMP/before" "$TMP/o"
}
