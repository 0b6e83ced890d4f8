#!/usr/bin/env bats
# shard: write shard directories, cat them back byte for byte, stat, verify,
# the data loader (tests/unit/test_loader.c), and bad input of every kind.

load helpers

GEN() { "$UPCYC_UNIT/gen_tokens" "$@"; }

# No OUTDIR and no temporary directory beside it.
assert_no_output() {
    if [ -e "$1" ] || compgen -G "$1.tmp.*" >/dev/null; then
        echo "expected neither $1 nor $1.tmp.* to exist:" >&2
        ls -la "$(dirname "$1")" >&2
        return 1
    fi
}

# Flip every bit of the byte at offset $2 of file $1.
flip_byte() {
    local b
    b=$(od -An -tu1 -j "$2" -N1 "$1" | tr -d ' ')
    printf "$(printf '\\%03o' $((b ^ 255)))" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

@test "--help and --version" {
    run shard --help
    assert_status 0
    assert_output_contains "shard [options] OUTDIR [STREAM|-]"
    assert_output_contains "shard verify DIR"
    run shard --version
    assert_status 0
    assert_output_contains "upcyc"
}

@test "--help matches the man page's synopsis and options" {
    command -v groff >/dev/null || skip "groff not installed"
    page=$(groff -man -Tutf8 -P-c -P-b -P-u "$BATS_TEST_DIRNAME/../man/man1/shard.1" 2>/dev/null)
    for opt in --val-fraction --seed --chunk-tokens --shard-size --level --force; do
        shard --help | grep -q -- "$opt"
        printf '%s\n' "$page" | grep -q -- "$opt"
    done
}

@test "usage errors: unknown option, missing OUTDIR, bad numbers" {
    run shard --frobnicate out
    assert_status 64
    assert_one_error_line shard
    run shard
    assert_status 64
    assert_one_error_line shard
    run shard --val-fraction 2 "$TMP/out"
    assert_status 64
    assert_one_error_line shard
    run shard --chunk-tokens 0 "$TMP/out"
    assert_status 64
    assert_no_output "$TMP/out"
}

@test "round trip: shard then cat gives the input byte for byte" {
    GEN --docs 3000 --id-stride 5 --seed 4 --max-len 200 > "$TMP/in.mpk"
    shard --val-fraction 0.2 --chunk-tokens 500 --shard-size 10k "$TMP/out" < "$TMP/in.mpk"
    [ -f "$TMP/out/train/index.mpk" ] && [ -f "$TMP/out/val/index.mpk" ]
    [ -f "$TMP/out/train/shard-00001.zst" ]          # rolled at --shard-size
    shard cat "$TMP/out" | cmp - "$TMP/in.mpk"
    shard cat -o "$TMP/back.mpk" "$TMP/out"
    cmp "$TMP/back.mpk" "$TMP/in.mpk"
}

@test "round trip with 32-bit tokens, empty documents and EOS inside documents" {
    GEN --docs 400 --vocab 70000 --eos 3 --max-len 50 --seed 9 > "$TMP/in.mpk"
    shard --chunk-tokens 64 --val-fraction 0.5 "$TMP/out" "$TMP/in.mpk"
    shard cat "$TMP/out" | cmp - "$TMP/in.mpk"
    shard verify "$TMP/out"
    # token width 4 in the source stream with a small vocabulary
    GEN --docs 50 --vocab 500 --width 4 > "$TMP/w4.mpk"
    shard "$TMP/w4" "$TMP/w4.mpk"
    shard cat "$TMP/w4" | cmp - "$TMP/w4.mpk"
}

@test "each split cats to its own documents; the two add up to the input" {
    GEN --docs 1000 --seed 2 > "$TMP/in.mpk"
    shard --val-fraction 0.3 "$TMP/out" "$TMP/in.mpk"
    shard cat "$TMP/out/train" > "$TMP/t.mpk"
    shard cat "$TMP/out/val" > "$TMP/v.mpk"
    run shard stat "$TMP/out/train"
    assert_status 0
    t=$(shard stat "$TMP/out/train" 2>&1 >/dev/null | awk '$1 == "train" {print $2}')
    v=$(shard stat "$TMP/out/val" 2>&1 >/dev/null | awk '$1 == "val" {print $2}')
    [ "$t" -gt 500 ] && [ "$v" -gt 150 ]
    [ $((t + v)) -eq 1000 ]
    # a split alone is a valid token stream: it shards again and cats back
    shard --val-fraction 0 "$TMP/again" "$TMP/v.mpk"
    shard cat "$TMP/again" | cmp - "$TMP/v.mpk"
}

@test "same input and seed give the same bits; another seed another split" {
    GEN --docs 500 > "$TMP/in.mpk"
    shard --seed 5 --val-fraction 0.2 "$TMP/a" "$TMP/in.mpk"
    shard --seed 5 --val-fraction 0.2 "$TMP/b" "$TMP/in.mpk"
    diff -r "$TMP/a" "$TMP/b"
    shard --seed 6 --val-fraction 0.2 "$TMP/c" "$TMP/in.mpk"
    run cmp -s "$TMP/a/val/docs.zst" "$TMP/c/val/docs.zst"
    [ "$status" -eq 1 ]
}

@test "--val-fraction 0 and 1 leave one split empty; cat still round-trips" {
    GEN --docs 200 > "$TMP/in.mpk"
    shard --val-fraction 0 "$TMP/z" "$TMP/in.mpk"
    shard --val-fraction 1 "$TMP/o" "$TMP/in.mpk"
    v=$(shard stat "$TMP/z/val" 2>&1 >/dev/null | awk '$1 == "val" {print $2}')
    t=$(shard stat "$TMP/o/train" 2>&1 >/dev/null | awk '$1 == "train" {print $2}')
    [ "$v" -eq 0 ] && [ "$t" -eq 0 ]
    shard cat "$TMP/z" | cmp - "$TMP/in.mpk"
    shard cat "$TMP/o" | cmp - "$TMP/in.mpk"
    shard verify "$TMP/z"
}

@test "stat writes one msgpack record and a human summary" {
    GEN --docs 300 > "$TMP/in.mpk"
    shard --val-fraction 0.1 "$TMP/out" "$TMP/in.mpk"
    shard stat "$TMP/out" > "$TMP/stat.mpk" 2> "$TMP/stat.txt"
    for key in upcyc.shards.stat train val total documents tokens chunks shard_files \
               compressed_bytes raw_token_bytes compression_ratio; do
        grep -q "$key" "$TMP/stat.mpk"
    done
    # first byte: a msgpack fixmap
    [ "$(od -An -tx1 -N1 "$TMP/stat.mpk" | tr -d ' ')" = 89 ]
    [ "$(awk '$1 == "total" {print $2}' "$TMP/stat.txt")" -eq 300 ]
    run shard stat "$TMP/out"
    assert_status 0
}

@test "verify says ok on a good directory and on one split" {
    GEN --docs 300 > "$TMP/in.mpk"
    shard --chunk-tokens 100 "$TMP/out" "$TMP/in.mpk"
    run shard verify "$TMP/out"
    assert_status 0
    assert_output_contains "ok"
    run shard verify "$TMP/out/train"
    assert_status 0
    assert_output_contains "ok"
}

@test "bad stream: invalid msgpack, wrong format, wrong version, token out of range, truncated" {
    printf '\xc1\x00' > "$TMP/bad1"
    GEN --format upcyc.nope > "$TMP/bad2"
    GEN --version 2 > "$TMP/bad3"
    GEN --docs 20 --bad-token > "$TMP/bad4"
    GEN --docs 20 > "$TMP/good"
    head -c $(( $(stat -c %s "$TMP/good") - 7 )) "$TMP/good" > "$TMP/bad5"
    for i in 1 2 3 4 5; do
        run shard "$TMP/out$i" "$TMP/bad$i"
        assert_status 65
        assert_one_error_line shard
        assert_output_contains "$TMP/bad$i"
        assert_no_output "$TMP/out$i"
    done
    run shard "$TMP/out4" "$TMP/bad4"
    assert_output_contains "outside the vocabulary"
    run shard "$TMP/out5" "$TMP/bad5"
    assert_output_contains "truncated"
    run shard "$TMP/out6" < /dev/null
    assert_status 65
    assert_one_error_line shard
}

@test "missing input file" {
    run shard "$TMP/out" "$TMP/no-such-file"
    assert_status 66
    assert_one_error_line shard
    assert_no_output "$TMP/out"
}

@test "existing OUTDIR: refused, or replaced with --force (only a shard directory)" {
    GEN --docs 100 --seed 1 > "$TMP/a.mpk"
    GEN --docs 120 --seed 2 > "$TMP/b.mpk"
    shard "$TMP/out" "$TMP/a.mpk"
    run shard "$TMP/out" "$TMP/b.mpk"
    assert_status 73
    assert_one_error_line shard
    shard cat "$TMP/out" | cmp - "$TMP/a.mpk"
    shard --force "$TMP/out" "$TMP/b.mpk"
    shard cat "$TMP/out" | cmp - "$TMP/b.mpk"
    assert_no_output "$TMP/nothing"
    [ -z "$(compgen -G "$TMP/out.tmp.*")" ]
    mkdir "$TMP/precious" && touch "$TMP/precious/file"
    run shard --force "$TMP/precious" "$TMP/a.mpk"
    assert_status 73
    assert_one_error_line shard
    [ -f "$TMP/precious/file" ]
}

@test "unwritable output directory" {
    GEN --docs 10 > "$TMP/in.mpk"
    touch "$TMP/afile"
    run shard "$TMP/afile/out" "$TMP/in.mpk"
    assert_status 73
    assert_one_error_line shard
    run shard "$TMP/no/such/dir/out" "$TMP/in.mpk"
    assert_status 73
    assert_one_error_line shard
    if [ "$(id -u)" -ne 0 ]; then
        mkdir "$TMP/ro" && chmod 555 "$TMP/ro"
        run shard "$TMP/ro/out" "$TMP/in.mpk"
        assert_status 73
        assert_no_output "$TMP/ro/out"
    fi
}

@test "full disk (file size limit): one error line, nothing left behind" {
    GEN --tokens 400000 --seed 3 > "$TMP/in.mpk"
    run bash -c "ulimit -f 64; exec shard --shard-size 1G '$TMP/out' '$TMP/in.mpk'"
    assert_status 74
    assert_one_error_line shard
    assert_output_contains "File too large"
    assert_no_output "$TMP/out"
}

@test "cat to a full stdout fails with an I/O error" {
    GEN --docs 3000 > "$TMP/in.mpk"
    shard "$TMP/out" "$TMP/in.mpk"
    run bash -c "shard cat '$TMP/out' > /dev/full"
    assert_status 74
    assert_one_error_line shard
}

@test "interrupted run leaves neither OUTDIR nor a temporary directory" {
    GEN --docs 2000 > "$TMP/in.mpk"
    mkfifo "$TMP/fifo"
    shard "$TMP/out" "$TMP/fifo" 2> "$TMP/err" &
    pid=$!
    exec 7> "$TMP/fifo"
    head -c 200000 "$TMP/in.mpk" >&7       # part of the stream; the writer stays open
    for _ in $(seq 100); do compgen -G "$TMP/out.tmp.*" >/dev/null && break; sleep 0.05; done
    compgen -G "$TMP/out.tmp.*" >/dev/null   # it was writing
    kill -TERM "$pid"
    st=0
    wait "$pid" || st=$?
    [ "$st" -eq 143 ]   # killed by SIGTERM, after removing its temporary output
    exec 7>&-
    assert_no_output "$TMP/out"
}

@test "truncated shard file: cat, verify and the loader name file, frame and offset" {
    GEN --docs 2000 --seed 5 > "$TMP/in.mpk"
    shard --chunk-tokens 1000 --val-fraction 0 "$TMP/out" "$TMP/in.mpk"
    f="$TMP/out/train/shard-00000.zst"
    truncate -s $(( $(stat -c %s "$f") - 100 )) "$f"
    for cmd in "shard cat -o $TMP/back.mpk $TMP/out" "shard verify $TMP/out" \
               "$UPCYC_UNIT/test_loader read $TMP/out/train"; do
        run $cmd
        assert_status 65
        [ "$(printf '%s\n' "$output" | grep -c .)" -eq 1 ]
        assert_output_contains "shard-00000.zst: frame "
        assert_output_contains "(byte "
        assert_output_contains "truncated"
    done
    [ ! -e "$TMP/back.mpk" ]
}

@test "bit-flipped shard file: cat, verify and the loader name file, frame and offset" {
    GEN --docs 2000 --seed 6 > "$TMP/in.mpk"
    shard --chunk-tokens 1000 --val-fraction 0 "$TMP/out" "$TMP/in.mpk"
    f="$TMP/out/train/shard-00000.zst"
    flip_byte "$f" $(( $(stat -c %s "$f") / 2 ))
    for cmd in "shard cat -o $TMP/back.mpk $TMP/out" "shard verify $TMP/out" \
               "$UPCYC_UNIT/test_loader read $TMP/out/train"; do
        run $cmd
        assert_status 65
        [ "$(printf '%s\n' "$output" | grep -c .)" -eq 1 ]
        [[ "$output" =~ shard-00000\.zst:\ frame\ [0-9]+\ \(byte\ [0-9]+\) ]]
    done
    [ ! -e "$TMP/back.mpk" ]
}

@test "corrupt index and document table are found" {
    GEN --docs 300 > "$TMP/in.mpk"
    shard --val-fraction 0 "$TMP/out" "$TMP/in.mpk"
    cp -r "$TMP/out" "$TMP/o2"
    printf '\x81\xa1x\x01' > "$TMP/out/train/index.mpk"
    run shard verify "$TMP/out"
    assert_status 65
    assert_one_error_line shard
    assert_output_contains "index.mpk"
    flip_byte "$TMP/o2/train/docs.zst" 20
    run shard cat "$TMP/o2"
    assert_status 65
    assert_one_error_line shard
    assert_output_contains "docs.zst"
}

@test "missing index or shard file" {
    GEN --docs 300 > "$TMP/in.mpk"
    shard "$TMP/out" "$TMP/in.mpk"
    cp -r "$TMP/out" "$TMP/o2"
    rm "$TMP/out/train/index.mpk"
    for sub in cat stat verify; do
        run shard $sub "$TMP/out"
        assert_status 66
        assert_one_error_line shard
        assert_output_contains "index.mpk"
    done
    rm "$TMP/o2/train/shard-00000.zst"
    run shard verify "$TMP/o2"
    assert_status 66
    assert_one_error_line shard
    assert_output_contains "shard-00000.zst"
    run shard cat "$TMP/no-such-dir"
    assert_status 66
    assert_one_error_line shard
    run "$UPCYC_UNIT/test_loader" read "$TMP/out/train"
    assert_status 66
}

@test "loader: coverage, lockstep, determinism, cursors (16-bit and 32-bit tokens)" {
    GEN --sequential --vocab 1048576 --docs 500 --max-len 400 --seed 8 > "$TMP/seq.mpk"
    shard --chunk-tokens 1000 --val-fraction 0.3 "$TMP/out" "$TMP/seq.mpk"
    run "$UPCYC_UNIT/test_loader" check "$TMP/out/train"
    assert_status 0
    assert_output_contains "0 failed"
    run "$UPCYC_UNIT/test_loader" check "$TMP/out/val"
    assert_status 0
    GEN --docs 300 --max-len 500 --vocab 5000 --zipf 1.1 > "$TMP/z.mpk"
    shard --chunk-tokens 777 --val-fraction 0 "$TMP/z" "$TMP/z.mpk"
    run "$UPCYC_UNIT/test_loader" check "$TMP/z/train"
    assert_status 0
    assert_output_contains "0 failed"
}

@test "loader: a cursor from another configuration is refused" {
    GEN --docs 300 > "$TMP/in.mpk"
    shard --chunk-tokens 500 --val-fraction 0 "$TMP/out" "$TMP/in.mpk"
    run "$UPCYC_UNIT/test_loader" cursor "$TMP/out/train"
    assert_status 65
    assert_output_contains "seed"
}

@test "loader: a split too small for one step is refused" {
    GEN --docs 2 --max-len 3 > "$TMP/in.mpk"
    shard --val-fraction 0 "$TMP/out" "$TMP/in.mpk"
    run "$UPCYC_UNIT/test_loader" cursor "$TMP/out/train"
    assert_status 65
    assert_output_contains "too few"
}
