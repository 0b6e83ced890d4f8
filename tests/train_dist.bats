#!/usr/bin/env bats
# train across processes (mpirun): N processes train the model one process
# would, resume (also on another N), stop together on a signal to any of
# them, and one failing process ends the job instead of hanging it.

load helpers

setup_file() {
    export D="$BATS_FILE_TMPDIR"
    command -v mpirun > /dev/null || return 0
    local corpus="/usr/share/games/fortunes/fortunes /usr/share/games/fortunes/science"
    # shellcheck disable=SC2086
    "$UPCYC_BIN/tokenize" train --vocab-size 512 --split separator=% -o "$D/tok.json" $corpus
    # shellcheck disable=SC2086
    "$UPCYC_BIN/tokenize" encode --tokenizer "$D/tok.json" --split separator=% -o "$D/tokens.mpk" $corpus
    "$UPCYC_BIN/shard" --val-fraction 0.05 --chunk-tokens 4096 "$D/shards" "$D/tokens.mpk"
    # the tiny model of tests/train.bats
    cp "$FIXTURES/model/tiny-512.json" "$D/tiny.json"
    # One thread per process: the 1-process runs compared against use one too.
    export BASE="--data $D/shards/train --tokenizer $D/tok.json --batch 4 --seq-len 32 --lr 1e-2 --warmup 2 --threads 1"
}

setup() {
    TMP="$BATS_TEST_TMPDIR"
    command -v mpirun > /dev/null || skip "mpirun is not installed (openmpi-bin)"
}

# mpirun as root, more processes than cores, Open MPI's leaks suppressed;
# "${MPIRUN[@]}" -np N train ... is mpirun itself (its pid for signals)
MPIRUN=(env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
    "LSAN_OPTIONS=suppressions=$FIXTURES/lsan-openmpi.supp:print_suppressions=0:fast_unwind_on_malloc=0" mpirun)

# mpi N ARGS...: ARGS in N processes
mpi() {
    local n=$1
    shift
    "${MPIRUN[@]}" -np "$n" "$@"
}

fields() {
    records json < "$1" | jq -r "select(.event==\"$2\") | .$3"
}

# "step loss grad_norm" of every train_step in $1
losses() {
    records json < "$1" | jq -r 'select(.event=="train_step") | "\(.step) \(.loss) \(.grad_norm)"'
}

# Fail unless the step losses of $1 and $2 agree within relative 1e-5 (and
# the gradient norms within 1e-4) at the same steps. Not bit for bit: the
# processes sum the gradients (and OpenBLAS splits the GEMMs) in another
# order than one process does.
same_losses() {
    paste <(losses "$1") <(losses "$2") | awk '
        { n++; d = ($2 - $5) / $2; g = ($3 - $6) / $3
          if ($1 != $4 || d > 1e-5 || d < -1e-5 || g > 1e-4 || g < -1e-4) { print "differ:", $0; bad = 1 } }
        END { if (n == 0) { print "no steps"; bad = 1 }; exit bad }'
}

# Fail unless model.safetensors of checkpoints $1 and $2 hold the same
# tensors with values within $3 of each other (absolute).
same_weights() {
    python3 - "$1/model.safetensors" "$2/model.safetensors" "$3" <<'EOF'
import array, json, struct, sys
def load(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n))
        data = f.read()
    head.pop("__metadata__", None)
    return {k: array.array("f", data[v["data_offsets"][0]:v["data_offsets"][1]]) for k, v in head.items()}
a, b, tol = load(sys.argv[1]), load(sys.argv[2]), float(sys.argv[3])
assert a.keys() == b.keys(), "different tensors"
worst = max(max(abs(x - y) for x, y in zip(a[k], b[k])) for k in a)
moved = max(max(abs(x) for x in a[k]) for k in a)
print("max |difference|", worst, "of weights up to", moved)
sys.exit(0 if worst <= tol else 1)
EOF
}

@test "train_dist: 2 processes train a dense model as 1 process does" {
    # shellcheck disable=SC2086
    train --init "$D/tiny.json" $BASE --micro-batch 2 --steps 8 --out "$TMP/one" > "$TMP/one.mpk"
    # shellcheck disable=SC2086
    mpi 2 train --init "$D/tiny.json" $BASE --steps 8 --out "$TMP/two" > "$TMP/two.mpk"
    same_losses "$TMP/one.mpk" "$TMP/two.mpk"
    # tokens count both processes' windows; the weights end where one process's do
    [ "$(fields "$TMP/two.mpk" train_step tokens | tail -1)" -eq $((8 * 4 * 32)) ]
    run same_weights "$TMP/one" "$TMP/two" 1e-5
    assert_status 0
    # only process 0 writes: one stream, one start and one end record
    [ "$(fields "$TMP/two.mpk" train_start world_size)" = 2 ]
    [ "$(fields "$TMP/one.mpk" train_start world_size)" = 1 ]
    [ "$(records json < "$TMP/two.mpk" | jq -r .event | sort | uniq -c | awk '{ printf "%s=%s ", $2, $1 }')" = \
        "train_end=1 train_start=1 train_step=8 " ]
    [ "$(jq .settings.world_size "$TMP/two/trainer_state.json")" -eq 2 ]
    # the micro-batch defaults to each process's share of the batch
    [ "$(jq '.settings["micro-batch"]' "$TMP/two/trainer_state.json")" -eq 2 ]
}

@test "train_dist: 2 processes train an upcycled MoE as 1 process does, expert counts summed" {
    # shellcheck disable=SC2086
    train --init "$D/tiny.json" $BASE --steps 6 --out "$TMP/dense" > /dev/null
    upcycle --experts 4 --top-k 2 "$TMP/dense" "$TMP/moe0" > /dev/null 2>&1
    # capacity mode too, so dropped slots are counted (and summed) per layer;
    # router jitter, whose noise follows the micro-batch, not the process
    jq '.upcyc.capacity_factor = 0.5 | .router_jitter_noise = 0.2' "$TMP/moe0/config.json" > "$TMP/c.json"
    mv "$TMP/c.json" "$TMP/moe0/config.json"
    local args="--data $D/shards/train --batch 4 --seq-len 32 --steps 4 --lr 1e-3 --seed 7 --threads 1"
    # shellcheck disable=SC2086
    train --from "$TMP/moe0" $args --micro-batch 2 --out "$TMP/one" > "$TMP/one.mpk"
    # shellcheck disable=SC2086
    mpi 2 train --from "$TMP/moe0" $args --out "$TMP/two" > "$TMP/two.mpk"
    same_losses "$TMP/one.mpk" "$TMP/two.mpk"
    paste <(fields "$TMP/one.mpk" train_step lb_loss) <(fields "$TMP/two.mpk" train_step lb_loss) |
        awk '{ d = ($1 - $2) / $1; if (d > 1e-5 || d < -1e-5) { print; bad = 1 } } END { exit bad }'
    # the whole batch's token slots (4 x 32 tokens x top-2) per layer, not one process's half
    [ "$(records json < "$TMP/two.mpk" | jq -c 'select(.event=="train_step") | [.expert_load[] | add]' | sort -u)" = "[256,256]" ]
    # the first step routes the same tokens with the same weights: the same counts
    local q='select(.event=="train_step" and .step==1) | [.expert_load, .dropped]'
    [ "$(records json < "$TMP/one.mpk" | jq -c "$q")" = "$(records json < "$TMP/two.mpk" | jq -c "$q")" ]
    [ "$(records json < "$TMP/two.mpk" | jq -c "$q" | jq '.[1] | add')" -gt 0 ]
    run same_weights "$TMP/one" "$TMP/two" 1e-5
    assert_status 0
}

@test "train_dist: SIGTERM to one process stops every one after the same step; --resume continues bit for bit" {
    local args="--init $D/tiny.json $BASE --steps 600"
    # shellcheck disable=SC2086
    mpi 2 train $args --out "$TMP/a" > "$TMP/a.mpk"
    # shellcheck disable=SC2086
    "${MPIRUN[@]}" -np 2 train $args --out "$TMP/b" > "$TMP/b.mpk" 2> "$TMP/b.err" &
    local pid=$!
    for _ in $(seq 400); do
        [ "$(records json < "$TMP/b.mpk" 2> /dev/null | grep -c train_step)" -ge 5 ] && break
        sleep 0.05
    done
    # one of mpirun's two processes (a scheduler signals them all; one is enough)
    local ranks
    mapfile -t ranks < <(ps -o pid= --ppid "$pid" | tr -d ' ')
    [ "${#ranks[@]}" -eq 2 ]
    kill -TERM "${ranks[1]}"
    local rc=0
    wait $pid || rc=$?
    [ "$rc" -eq 143 ] || { cat "$TMP/b.err" >&2; return 1; }
    local at
    at=$(jq .step "$TMP/b/trainer_state.json")
    [ "$at" -ge 5 ] && [ "$at" -lt 600 ]
    [ "$(fields "$TMP/b.mpk" train_end interrupted)" = true ]
    [ "$(fields "$TMP/b.mpk" train_end step)" -eq "$at" ]
    [ "$(grep -c 'stopped by signal 15' "$TMP/b.err")" -eq 1 ]   # said once, by process 0
    mpi 2 train --resume --out "$TMP/b" > "$TMP/b2.mpk"
    diff <(losses "$TMP/a.mpk" | awk -v s="$at" '$1 > s') <(losses "$TMP/b2.mpk")
    cmp "$TMP/a/model.safetensors" "$TMP/b/model.safetensors"
    cmp "$TMP/a/optimizer.safetensors" "$TMP/b/optimizer.safetensors"
    # SIGUSR1 to mpirun, which forwards it to every process, stops the run the same way
    # shellcheck disable=SC2086
    "${MPIRUN[@]}" -np 2 train $args --out "$TMP/c" > "$TMP/c.mpk" 2> /dev/null &
    pid=$!
    for _ in $(seq 400); do
        [ "$(records json < "$TMP/c.mpk" 2> /dev/null | grep -c train_step)" -ge 5 ] && break
        sleep 0.05
    done
    kill -USR1 $pid
    rc=0
    wait $pid || rc=$?
    [ "$rc" -eq 138 ]
    [ "$(fields "$TMP/c.mpk" train_end interrupted)" = true ]
    [ "$(jq .step "$TMP/c/trainer_state.json")" -lt 600 ]
}

@test "train_dist: a resume may change the number of processes and continues the same run" {
    # the first half decays over the whole run's 8 steps, as the uninterrupted one does
    # shellcheck disable=SC2086
    mpi 2 train --init "$D/tiny.json" $BASE --steps 8 --out "$TMP/a" > "$TMP/a.mpk"
    # shellcheck disable=SC2086
    mpi 2 train --init "$D/tiny.json" $BASE --steps 4 --decay-steps 8 --out "$TMP/c" > /dev/null
    run bash -c 'train --resume --steps 8 --out "$1" > "$2"' _ "$TMP/c" "$TMP/c2.mpk"
    assert_status 0
    assert_output_contains "resuming on 1 processes, the run was saved on 2"
    [ "$(jq .settings.world_size "$TMP/c/trainer_state.json")" -eq 1 ]
    paste <(losses "$TMP/a.mpk" | awk '$1 > 4') <(losses "$TMP/c2.mpk") | awk '
        { n++; d = ($2 - $5) / $2; if ($1 != $4 || d > 1e-5 || d < -1e-5) { print; bad = 1 } }
        END { exit bad || n != 4 }'
    run same_weights "$TMP/a" "$TMP/c" 1e-5
    assert_status 0
    # a 1-process run's micro-batch (the whole batch of 4) does not divide 2
    # windows per process: refused, unless the resume gives one that does
    # shellcheck disable=SC2086
    train --init "$D/tiny.json" $BASE --steps 2 --out "$TMP/d" > /dev/null
    run mpi 2 train --resume --steps 3 --out "$TMP/d"
    assert_status 64
    assert_output_contains "--micro-batch 4 does not divide the 2 windows per process"
    [ "$(jq .step "$TMP/d/trainer_state.json")" -eq 2 ]
    mpi 2 train --resume --steps 3 --micro-batch 2 --out "$TMP/d" > "$TMP/d.mpk"
    [ "$(fields "$TMP/d.mpk" train_step step)" -eq 3 ]
}

@test "train_dist: a batch that does not split over the processes is refused, said once" {
    # shellcheck disable=SC2086
    run mpi 2 train --init "$D/tiny.json" $BASE --batch 3 --steps 2 --out "$TMP/o"
    assert_status 64
    assert_output_contains "--batch 3 does not split over 2 processes"
    [ "$(printf '%s\n' "$output" | grep -c '^train: ')" -eq 1 ]
    # shellcheck disable=SC2086
    run mpi 2 train --init "$D/tiny.json" $BASE --micro-batch 4 --steps 2 --out "$TMP/o"
    assert_status 64
    assert_output_contains "--micro-batch 4 does not divide the 2 windows per process"
    [ ! -e "$TMP/o" ]
}

@test "train_dist: one failing process ends the job with its status instead of hanging it" {
    # process 1 alone is given a tokenizer that did not make the data: it
    # fails at startup while process 0 goes on to the first all-reduce
    tokenize train --vocab-size 300 -o "$TMP/other.json" /usr/share/games/fortunes/science
    # shellcheck disable=SC2086
    run timeout 120 "${MPIRUN[@]}" -np 1 train --init "$D/tiny.json" $BASE --steps 50 --out "$TMP/o" \
        : -np 1 train --init "$D/tiny.json" $BASE --tokenizer "$TMP/other.json" --steps 50 --out "$TMP/o"
    assert_status 65   # process 1's EX_DATAERR, through MPI_Abort (124: it hung)
    assert_output_contains "differs from the one that made"
    [ ! -e "$TMP/o" ]
    [ -z "$(ls -d "$TMP"/o.tmp.* 2> /dev/null)" ]
}
