#!/usr/bin/env bats
# The BPE trainer (lib/bpe_train.c), through its C unit test: merges equal a
# naive reference's, determinism, ties, min_frequency, special tokens.

load helpers

# Run one group of tests/unit/test_bpe_train.c.
train_group() {
    [ -x "$UPCYC_UNIT/test_bpe_train" ] || skip "unit test binary $UPCYC_UNIT/test_bpe_train not built"
    run "$UPCYC_UNIT/test_bpe_train" "$1" "$FIXTURES/tokenize" ${2:+"$2"}
    assert_status 0
    assert_output_contains "test_bpe_train $1: ok"
}

@test "bpe train: merges equal a naive reference's (random corpora, fortune text), encoding matches training" {
    train_group reference
}

@test "bpe train: 1000 merges on 128 KB of fortune text equal the naive reference's" {
    local f=/usr/share/games/fortunes/computers
    [ -f "$f" ] || skip "$f not installed (package fortunes-min)"
    train_group fortune-file "$f"
}

@test "bpe train: long pre-tokens (runs of one byte, long invalid UTF-8 gaps) equal the reference" {
    train_group long
}

@test "bpe train: pre-tokens are the ones encoding makes (U+180E: whitespace to PCRE2, not to tiktoken)" {
    train_group consistency
}

@test "bpe train: same input, same tokenizer; feeding order does not matter" {
    train_group determinism
}

@test "bpe train: equal counts are broken by the pair's bytes (left, then right), never by ids or order" {
    train_group ties
}

@test "bpe train: stops below min_frequency and warns that the vocabulary is smaller" {
    train_group min-frequency
    assert_output_contains "not the 306 asked for: no pair left occurs min_frequency (2) times"
}

@test "bpe train: special tokens get the last ids and are cut out of the training text" {
    train_group special
}

@test "bpe train: bad options fail with a clear message (vocabulary too small, bad regex, duplicate specials)" {
    train_group errors
}
