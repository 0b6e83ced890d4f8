#!/usr/bin/env bats
# tokenize: train, encode, decode, convert; round trips and bad input.

load helpers

# A small tokenizer learned once per file from a few fortune files.
setup_file() {
    export TOKDIR="$BATS_FILE_TMPDIR"
    export CORPUS_A=/usr/share/games/fortunes/fortunes
    export CORPUS_B=/usr/share/games/fortunes/science
    "$UPCYC_BIN/tokenize" train --vocab-size 600 --split separator=% \
        -o "$TOKDIR/tok.json" "$CORPUS_A" "$CORPUS_B"
}

# Seeded pseudo-random bytes: $1 count, $2 seed.
random_bytes() {
    LC_ALL=C awk -v n="$1" -v s="$2" 'BEGIN { srand(s); for (i = 0; i < n; i++) printf "%c", int(rand() * 256) }'
}

roundtrip() {   # file: encode then decode gives the same bytes
    tokenize encode --tokenizer "$TOKDIR/tok.json" -o "$TMP/rt.mpk" "$1"
    tokenize decode --tokenizer "$TOKDIR/tok.json" -o "$TMP/rt.out" "$TMP/rt.mpk"
    cmp "$1" "$TMP/rt.out"
}

@test "--help and --version" {
    run tokenize --help
    assert_status 0
    assert_output_contains "tokenize encode --tokenizer PATH"
    run tokenize --version
    assert_status 0
    assert_output_contains "upcyc"
}

@test "unknown command and option are usage errors" {
    run tokenize frobnicate
    assert_status 64
    assert_one_error_line tokenize
    run tokenize encode --no-such-option
    assert_status 64
    assert_one_error_line tokenize
    run tokenize encode
    assert_status 64
}

@test "train writes an HF tokenizer.json of the requested size" {
    run jq -r '.model.type' "$TOKDIR/tok.json"
    [ "$output" = BPE ]
    vocab=$(jq '.model.vocab | length' "$TOKDIR/tok.json")
    added=$(jq '.added_tokens | length' "$TOKDIR/tok.json")
    [ "$((vocab + added))" -eq 600 ]
    run jq -r '.added_tokens[0].content' "$TOKDIR/tok.json"
    [ "$output" = "<|endoftext|>" ]
}

@test "train is deterministic" {
    tokenize train --vocab-size 600 --split separator=% -o "$TMP/again.json" "$CORPUS_A" "$CORPUS_B"
    cmp "$TOKDIR/tok.json" "$TMP/again.json"
}

@test "train: vocabulary too small for the bytes and specials" {
    run tokenize train --vocab-size 100 -o "$TMP/t.json" "$CORPUS_A"
    assert_status 64
    [ ! -e "$TMP/t.json" ]
}

@test "round trip: plain English, fortune file" {
    roundtrip "$CORPUS_A"
}

@test "round trip: seeded random bytes (invalid UTF-8, NUL)" {
    random_bytes 200000 7 > "$TMP/rand.bin"
    roundtrip "$TMP/rand.bin"
}

@test "round trip: NUL bytes, CRLF, emoji, ZWJ sequences, odd whitespace" {
    printf 'a\0b\0\0c\r\nline two\r\n\r\n  \t tabs\n\xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x91\xa7 family\n\xff\xfe\xc3\x28 bad utf8 \xed\xa0\x80\n' > "$TMP/mixed.txt"
    roundtrip "$TMP/mixed.txt"
}

@test "round trip: a 2 MB line without newline" {
    LC_ALL=C awk 'BEGIN { for (i = 0; i < 200000; i++) printf "word%d, ", i % 977 }' > "$TMP/long.txt"
    roundtrip "$TMP/long.txt"
}

@test "round trip: empty file is one empty document" {
    : > "$TMP/empty.txt"
    roundtrip "$TMP/empty.txt"
    run records json --tokens "$TMP/rt.mpk"
    assert_status 0
    [ "$(printf '%s\n' "$output" | sed -n 2p | jq -c '[.id, .bytes, .tokens]')" = '[0,0,[]]' ]
}

@test "encode: header names the tokenizer, documents record their byte length" {
    printf 'hello world\nsecond line here\n' > "$TMP/two.txt"
    tokenize encode --tokenizer "$TOKDIR/tok.json" --split line -o "$TMP/two.mpk" "$TMP/two.txt"
    records json "$TMP/two.mpk" > "$TMP/two.jsonl"
    run jq -r 'select(.format) | "\(.format) \(.version) \(.vocab_size) \(.eos_id) \(.token_width)"' "$TMP/two.jsonl"
    [ "$output" = "upcyc.tokens 1 600 599 2" ]
    run jq -r 'select(.id != null) | "\(.id) \(.bytes)"' "$TMP/two.jsonl"
    [ "$output" = "$(printf '0 12\n1 17')" ]
    digest=$(jq -r 'select(.format) | .tokenizer' "$TMP/two.jsonl")
    [[ "$digest" =~ ^xxh64:[0-9a-f]{16}$ ]]
}

@test "encode: split modes give the expected documents" {
    printf 'one\n\ntwo a\ntwo b\n\n\nthree\n' > "$TMP/p.txt"
    printf 'q1\n%%\nq2 l1\nq2 l2\n%%\n%%\nq3\n' > "$TMP/s.txt"
    count() { tokenize encode --tokenizer "$TOKDIR/tok.json" --split "$1" "$2" | records json | jq -s 'length - 1'; }
    [ "$(count line "$TMP/p.txt")" -eq 7 ]
    [ "$(count paragraph "$TMP/p.txt")" -eq 3 ]
    [ "$(count file "$TMP/p.txt")" -eq 1 ]
    [ "$(count separator=% "$TMP/s.txt")" -eq 3 ]
    # Documents keep their lines' bytes; separator lines belong to none.
    tokenize encode --tokenizer "$TOKDIR/tok.json" --split separator=% "$TMP/s.txt" |
        tokenize decode --tokenizer "$TOKDIR/tok.json" --join '|' > "$TMP/s.out"
    [ "$(cat "$TMP/s.out")" = "$(printf 'q1\n|q2 l1\nq2 l2\n|q3\n|')" ]
}

@test "encode: several files and stdin, ids continue across files" {
    printf 'alpha\n' > "$TMP/a.txt"
    printf 'beta\n' > "$TMP/b.txt"
    run sh -c "printf 'gamma\n' | tokenize encode --tokenizer '$TOKDIR/tok.json' '$TMP/a.txt' - '$TMP/b.txt' | tokenize decode --tokenizer '$TOKDIR/tok.json' --join '\n'"
    assert_status 0
    [ "$output" = "$(printf 'alpha\n\ngamma\n\nbeta\n')" ]
}

@test "encode: output does not depend on the thread count" {
    tokenize encode --tokenizer "$TOKDIR/tok.json" --split line --threads 1 -o "$TMP/t1.mpk" "$CORPUS_A" "$CORPUS_B"
    tokenize encode --tokenizer "$TOKDIR/tok.json" --split line --threads 2 -o "$TMP/t2.mpk" "$CORPUS_A" "$CORPUS_B"
    tokenize encode --tokenizer "$TOKDIR/tok.json" --split line --threads 7 -o "$TMP/t7.mpk" "$CORPUS_A" "$CORPUS_B"
    cmp "$TMP/t1.mpk" "$TMP/t2.mpk"
    cmp "$TMP/t1.mpk" "$TMP/t7.mpk"
}

@test "encode: special tokens only with --allow-special" {
    printf 'x<|endoftext|>y' > "$TMP/sp.txt"
    tokenize encode --tokenizer "$TOKDIR/tok.json" --allow-special "$TMP/sp.txt" | records json --tokens > "$TMP/on.jsonl"
    tokenize encode --tokenizer "$TOKDIR/tok.json" "$TMP/sp.txt" | records json --tokens > "$TMP/off.jsonl"
    run jq -c 'select(.id != null) | .tokens | map(select(. == 599)) | length' "$TMP/on.jsonl"
    [ "$output" = 1 ]
    run jq -c 'select(.id != null) | .tokens | map(select(. == 599)) | length' "$TMP/off.jsonl"
    [ "$output" = 0 ]
    # Either way the text comes back.
    tokenize encode --tokenizer "$TOKDIR/tok.json" --allow-special "$TMP/sp.txt" |
        tokenize decode --tokenizer "$TOKDIR/tok.json" > "$TMP/sp.out"
    cmp "$TMP/sp.txt" "$TMP/sp.out"
}

@test "encode: --eos must name a special token" {
    run tokenize encode --tokenizer "$TOKDIR/tok.json" --eos '<nope>' "$CORPUS_A"
    assert_status 64
    assert_one_error_line tokenize
}

@test "convert: GPT-2 files to tokenizer.json give the same ids" {
    require_shared_data gpt2-encoder.json
    require_shared_data gpt2-vocab.bpe
    mkdir "$TMP/gpt2"
    cp "$SHARED_DATA/gpt2-encoder.json" "$TMP/gpt2/vocab.json"
    cp "$SHARED_DATA/gpt2-vocab.bpe" "$TMP/gpt2/merges.txt"
    tokenize convert --tokenizer "$TMP/gpt2/vocab.json" -o "$TMP/gpt2.json"
    tokenize encode --tokenizer "$TMP/gpt2/vocab.json" -o "$TMP/a.mpk" "$CORPUS_A"
    tokenize encode --tokenizer "$TMP/gpt2.json" -o "$TMP/b.mpk" "$CORPUS_A"
    records json --tokens "$TMP/a.mpk" | sed 1d > "$TMP/a.jsonl"
    records json --tokens "$TMP/b.mpk" | sed 1d > "$TMP/b.jsonl"
    cmp "$TMP/a.jsonl" "$TMP/b.jsonl"
    [ "$(jq '.model.vocab | length' "$TMP/gpt2.json")" -eq 50256 ] || [ "$(jq '.model.vocab | length' "$TMP/gpt2.json")" -eq 50257 ]
}

@test "cl100k_base and gpt2: encode matches tiktoken's ids for the golden texts" {
    require_shared_data cl100k_base.tiktoken
    require_shared_data gpt2-encoder.json
    mkdir "$TMP/gpt2"
    cp "$SHARED_DATA/gpt2-encoder.json" "$TMP/gpt2/vocab.json"
    cp "$SHARED_DATA/gpt2-vocab.bpe" "$TMP/gpt2/merges.txt"
    checked=0
    for enc in cl100k gpt2; do
        tok="$SHARED_DATA/cl100k_base.tiktoken"
        [ "$enc" = gpt2 ] && tok="$TMP/gpt2/vocab.json"
        for mode in plain special; do
            suffix=$enc.ids flag=
            [ "$mode" = special ] && suffix=$enc.special.ids flag=--allow-special
            texts=() wants=()
            for txt in "$FIXTURES"/tokenize/*.txt; do
                [ -f "${txt%.txt}.$suffix" ] || continue
                texts+=("$txt")
                wants+=("${txt%.txt}.$suffix")
            done
            [ "${#texts[@]}" -gt 0 ] || continue
            # One document per file, in order: one tokenizer load for all.
            tokenize encode --tokenizer "$tok" $flag "${texts[@]}" | records json --tokens | sed 1d |
                jq -r '.tokens | map(tostring) | join(" ")' > "$TMP/got"
            for i in "${!texts[@]}"; do
                sed -n "$((i + 1))p" "$TMP/got" | tr ' ' '\n' | sed '/^$/d' > "$TMP/got1"
                tr -s ' \n' '\n\n' < "${wants[$i]}" | sed '/^$/d' > "$TMP/want1"
                if ! cmp -s "$TMP/got1" "$TMP/want1"; then
                    echo "ids differ for ${texts[$i]} ($enc, $mode)" >&2
                    return 1
                fi
                checked=$((checked + 1))
            done
        done
    done
    [ "$checked" -ge 20 ]
}

@test "decode: tokenizer mismatch is refused" {
    tokenize encode --tokenizer "$TOKDIR/tok.json" -o "$TMP/a.mpk" "$CORPUS_A"
    tokenize train --vocab-size 600 -o "$TMP/other.json" "$CORPUS_B"
    run tokenize decode --tokenizer "$TMP/other.json" "$TMP/a.mpk"
    assert_status 65
    assert_one_error_line tokenize
    assert_output_contains "tokenizer mismatch"
}

@test "bad input: missing files" {
    run tokenize encode --tokenizer "$TMP/nope.json" "$CORPUS_A"
    assert_status 66
    assert_one_error_line tokenize
    run tokenize encode --tokenizer "$TOKDIR/tok.json" "$TMP/missing.txt"
    assert_status 66
    assert_one_error_line tokenize
    assert_output_contains "missing.txt"
    run tokenize train -o "$TMP/t.json" "$TMP/missing.txt"
    assert_status 66
    [ ! -e "$TMP/t.json" ]
}

@test "bad input: corrupt tokenizer.json" {
    head -c 1000 "$TOKDIR/tok.json" > "$TMP/cut.json"
    run tokenize encode --tokenizer "$TMP/cut.json" "$CORPUS_A"
    assert_status 65
    assert_one_error_line tokenize
    assert_output_contains "cut.json"
}

@test "bad input: decode of invalid, truncated, headerless or out-of-range streams" {
    tokenize encode --tokenizer "$TOKDIR/tok.json" -o "$TMP/good.mpk" "$CORPUS_A"
    printf '\xc1\xc1\xc1' > "$TMP/invalid.mpk"
    run tokenize decode --tokenizer "$TOKDIR/tok.json" "$TMP/invalid.mpk"
    assert_status 65
    assert_one_error_line tokenize
    assert_output_contains "invalid msgpack"

    head -c $(( $(stat -c %s "$TMP/good.mpk") - 5 )) "$TMP/good.mpk" > "$TMP/trunc.mpk"
    run tokenize decode --tokenizer "$TOKDIR/tok.json" -o "$TMP/out.txt" "$TMP/trunc.mpk"
    assert_status 65
    assert_output_contains "truncated"
    [ ! -e "$TMP/out.txt" ]

    printf '\x81\xa6format\xa3xyz' > "$TMP/wrong.mpk"
    run tokenize decode --tokenizer "$TOKDIR/tok.json" "$TMP/wrong.mpk"
    assert_status 65
    assert_output_contains "upcyc.tokens"

    records json "$TMP/good.mpk" | sed '1s/"version": *1/"version": 99/' | records pack > "$TMP/v99.mpk"
    run tokenize decode --tokenizer "$TOKDIR/tok.json" "$TMP/v99.mpk"
    assert_status 65
    assert_output_contains "version"

    # A document whose id 0xFFFF is outside the 600-token vocabulary.
    printf '%s\n' "$(records json "$TMP/good.mpk" | sed -n 1p)" '{"id": 0, "bytes": 1, "tokens": {"$bin": "//8="}}' | records pack > "$TMP/oor.mpk"
    run tokenize decode --tokenizer "$TOKDIR/tok.json" "$TMP/oor.mpk"
    assert_status 65
    assert_one_error_line tokenize
    assert_output_contains "65535"
}

@test "bad output: full disk, unwritable path, terminal" {
    run tokenize encode --tokenizer "$TOKDIR/tok.json" -o /dev/full "$CORPUS_A"
    assert_status 74
    assert_one_error_line tokenize
    [ -c /dev/full ]   # written to, not replaced by a file
    run sh -c "tokenize encode --tokenizer '$TOKDIR/tok.json' '$CORPUS_A' > /dev/full"
    assert_status 74
    assert_one_error_line tokenize
    run tokenize encode --tokenizer "$TOKDIR/tok.json" -o "$TMP/no/such/dir/x.mpk" "$CORPUS_A"
    assert_status 73
    assert_one_error_line tokenize
    run tokenize train -o "$TMP/no/such/dir/t.json" "$CORPUS_A"
    assert_status 73
}

@test "bad output: a file-size limit (disk full) leaves no partial output" {
    run bash -c "ulimit -f 8; exec tokenize encode --tokenizer '$TOKDIR/tok.json' -o '$TMP/big.mpk' '$CORPUS_A' '$CORPUS_B'"
    assert_status 74
    assert_one_error_line tokenize
    [ ! -e "$TMP/big.mpk" ]
    [ -z "$(ls "$TMP" | grep tmp)" ]
}

@test "interrupted encode leaves no output and no temporary file" {
    mkfifo "$TMP/in.fifo"
    tokenize encode --tokenizer "$TOKDIR/tok.json" -o "$TMP/out.mpk" "$TMP/in.fifo" &
    pid=$!
    exec 7> "$TMP/in.fifo"
    printf 'some text that never ends' >&7
    sleep 0.5
    kill -TERM "$pid"
    st=0
    wait "$pid" || st=$?
    [ "$st" -eq 143 ]   # killed by SIGTERM, after removing its temporary file
    exec 7>&-
    [ ! -e "$TMP/out.mpk" ]
    [ -z "$(ls "$TMP" | grep 'out.mpk')" ]
}

@test "encode: a FIFO input is read once, whole (no second open that loses its data)" {
    mkfifo "$TMP/in.fifo"
    printf 'text through a named pipe\n' > "$TMP/in.txt"
    cat "$TMP/in.txt" > "$TMP/in.fifo" &
    run timeout 20 tokenize encode --tokenizer "$TOKDIR/tok.json" -o "$TMP/fifo.mpk" "$TMP/in.fifo"
    assert_status 0
    wait
    tokenize encode --tokenizer "$TOKDIR/tok.json" -o "$TMP/file.mpk" "$TMP/in.txt"
    tokenize decode --tokenizer "$TOKDIR/tok.json" -o "$TMP/fifo.txt" "$TMP/fifo.mpk"
    cmp "$TMP/in.txt" "$TMP/fifo.txt"
}

@test "encode: a large document cut into segments encodes as if whole" {
    find /usr/share/games/fortunes -maxdepth 1 -type f ! -name '*.dat' ! -name '*.u8' | sort | xargs cat > "$TMP/big.txt"
    [ "$(stat -c %s "$TMP/big.txt")" -gt 2200000 ]
    # The same pattern with a never-matching alternative: same tokens, but
    # not a pattern the encoder knows how to cut.
    jq '.pre_tokenizer.pretokenizers[0].pattern.Regex += "|(?!)"' "$TOKDIR/tok.json" > "$TMP/uncut.json"
    tokenize encode --tokenizer "$TOKDIR/tok.json" "$TMP/big.txt" | records json --tokens | sed -n 2p > "$TMP/cut.jsonl"
    tokenize encode --tokenizer "$TMP/uncut.json" "$TMP/big.txt" | records json --tokens | sed -n 2p > "$TMP/whole.jsonl"
    [ "$(jq '.tokens | length' "$TMP/cut.jsonl")" -gt 100000 ]
    cmp "$TMP/cut.jsonl" "$TMP/whole.jsonl"
}
