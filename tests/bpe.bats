#!/usr/bin/env bats
# The byte-level BPE tokenizer library (lib/bpe*.c), through its C unit test:
# golden ids from tiktoken, loaders and saver, round trips, special tokens,
# bad files.

load helpers

# Run one group of tests/unit/test_bpe.c; exit 77 means reference files are
# missing, which it names.
bpe_group() {
    [ -x "$UPCYC_UNIT/test_bpe" ] || skip "unit test binary $UPCYC_UNIT/test_bpe not built"
    run "$UPCYC_UNIT/test_bpe" "$1" "$FIXTURES/tokenize" "$SHARED_DATA" "$TMP"
    if [ "$status" -eq 77 ]; then
        skip "$output"
    fi
    assert_status 0
    assert_output_contains "test_bpe $1: ok"
}

@test "bpe: merging is lowest rank first, leftmost on ties (heap path vs naive reference)" {
    bpe_group merging
}

@test "bpe: decode(encode(x)) == x for random bytes, invalid UTF-8, NUL, CRLF, emoji, 1 MB lines, empty" {
    bpe_group roundtrip
}

@test "bpe: special tokens allowed vs encoded as text; bad ids stop decoding" {
    bpe_group special
}

@test "bpe: tokenizer.json variants (merges as strings or pairs, ByteLevel or Split, ignore_merges, added tokens)" {
    bpe_group hf-json
}

@test "bpe: bad tokenizer files fail with one line naming the file and place" {
    bpe_group errors
}

@test "bpe: cl100k_base ids equal tiktoken's (rank file, and saved as tokenizer.json)" {
    require_shared_data cl100k_base.tiktoken
    bpe_group golden-cl100k
}

@test "bpe: gpt2 ids equal tiktoken's (vocab.json + merges, and saved as tokenizer.json)" {
    require_shared_data gpt2-encoder.json
    require_shared_data gpt2-vocab.bpe
    bpe_group golden-gpt2
}

@test "bpe: golden fixtures are present and non-empty" {
    for f in english code numbers whitespace crlf contractions scripts emoji special fortune unicode_spaces; do
        [ -s "$FIXTURES/tokenize/$f.txt" ]
        [ -s "$FIXTURES/tokenize/$f.cl100k.ids" ]
        [ -s "$FIXTURES/tokenize/$f.gpt2.ids" ]
    done
}
