#!/usr/bin/env bats
# records: msgpack streams to JSON Lines and TSV, JSON Lines back to msgpack;
# exact bytes, every tag, and bad input of every kind.

load helpers

# Hex bytes of a file (or stdin), one line, no spaces: easy to compare.
hex() {
    od -An -v -tx1 "$@" | tr -d ' \n'
}

# The metrics fixture as JSON Lines: two events, nesting, escapes, a NaN.
metrics_jsonl() {
    cat <<'EOF'
{"event":"train_step","step":1,"loss":2.5,"opt":{"lr":0.001,"beta":[0.9,0.95]},"note":"a\tb\nc\\d"}
{"event":"eval","step":1,"val_loss":3.25}
{"event":"train_step","step":2,"loss":2.25,"opt":{"lr":0.002},"extra":true}
{"event":"train_step","step":3,"loss":{"$float":"nan"},"note":null}
EOF
}

@test "--help and --version, and the man page lists every option --help does" {
    run records --help
    assert_status 0
    assert_output_contains "records json [--tokens] [--strict] [-o FILE] [STREAM|-]"
    help="$output"
    run records --version
    assert_status 0
    [ "$output" = "records (upcyc) 0.1.0" ]
    run records tsv --help
    assert_status 0
    [ "$output" = "$help" ]
    man1="$BATS_TEST_DIRNAME/../man/man1/records.1"
    for opt in --output --tokens --strict --event --fields --help --version; do
        grep -q -- "$opt" <<<"$help"
        grep -q -- "${opt//-/\\\\-}" "$man1"
    done
    for cmd in json pack tsv; do
        grep -q "^  $cmd " <<<"$help"
        grep -q "^\.B records $cmd" "$man1"
    done
}

@test "man pages render without groff warnings" {
    command -v groff >/dev/null || skip "groff is not installed"
    for page in man1/records.1 man5/upcyc-records.5; do
        run groff -man -Tutf8 -ww -z "$BATS_TEST_DIRNAME/../man/$page"
        assert_status 0
        [ -z "$output" ] || { echo "$page: $output" >&2; return 1; }
    done
}

@test "usage errors exit 64 with one line" {
    run records
    assert_status 64
    assert_one_error_line records
    run records frobnicate
    assert_status 64
    assert_one_error_line records
    assert_output_contains "unknown command 'frobnicate'"
    run records json --no-such-option
    assert_status 64
    assert_one_error_line records
    run records tsv --tokens
    assert_status 64
    assert_output_contains "unknown option '--tokens' for records tsv"
    run records pack --event x
    assert_status 64
    run records tsv --fields
    assert_status 64
    assert_output_contains "needs a value"
    run records tsv --fields a,,b
    assert_status 64
    run records json a b
    assert_status 64
    assert_output_contains "one input at most"
}

@test "missing input exits 66 for every command" {
    for cmd in json pack tsv; do
        run records $cmd "$TMP/no-such-file"
        assert_status 66
        assert_one_error_line records
        assert_output_contains "$TMP/no-such-file: cannot open"
    done
}

@test "full stdout exits 74; unwritable output path exits 73" {
    metrics_jsonl | records pack -o "$TMP/m.mpk"
    run sh -c 'records json "$1" > /dev/full' sh "$TMP/m.mpk"
    assert_status 74
    assert_one_error_line records
    run sh -c 'records tsv "$1" > /dev/full' sh "$TMP/m.mpk"
    assert_status 74
    metrics_jsonl > "$TMP/m.jsonl"
    run sh -c 'records pack "$1" > /dev/full' sh "$TMP/m.jsonl"
    assert_status 74
    run records json -o "$TMP/no-such-dir/out.jsonl" "$TMP/m.mpk"
    assert_status 73
    assert_one_error_line records
}

@test "full disk on an output file: exit 74, no file left behind" {
    # About 1 MiB of JSON from a stream of long strings.
    for i in $(seq 1 2000); do printf '{"i":%d,"s":"%0500d"}\n' "$i" 0; done > "$TMP/long.jsonl"
    records pack -o "$TMP/long.mpk" "$TMP/long.jsonl"
    run sh -c 'ulimit -f 64; records json -o "$1/out.jsonl" "$1/long.mpk"' sh "$TMP"
    assert_status 74
    assert_one_error_line records
    [ ! -e "$TMP/out.jsonl" ]
    run sh -c 'ulimit -f 64; records pack -o "$1/out.mpk" "$1/long.jsonl"' sh "$TMP"
    assert_status 74
    [ ! -e "$TMP/out.mpk" ]
    [ -z "$(find "$TMP" -name '*.tmp.*')" ]
}

@test "pack refuses to write msgpack to a terminal; json and tsv do not" {
    command -v script >/dev/null || skip "script(1) is not installed, no way to fake a terminal"
    printf '{"a":1}\n' > "$TMP/a.jsonl"
    run script -qec "records pack '$TMP/a.jsonl'" /dev/null
    [ "$status" -eq 64 ]
    assert_output_contains "refusing to write msgpack to a terminal"
    records pack -o "$TMP/a.mpk" "$TMP/a.jsonl"
    run script -qec "records json '$TMP/a.mpk'" /dev/null
    [ "$status" -eq 0 ]
    assert_output_contains '{"a":1}'
}

@test "pack: integers in the smallest form, up to uint64 max and down to int64 min" {
    printf '[0,127,128,255,256,65535,65536,4294967295,4294967296,18446744073709551615]\n' > "$TMP/u.jsonl"
    run hex <(records pack "$TMP/u.jsonl")
    [ "$output" = 9a007fcc80ccffcd0100cdffffce00010000ceffffffffcf0000000100000000cfffffffffffffffff ]
    printf '[-1,-32,-33,-128,-129,-32768,-32769,-2147483648,-2147483649,-9223372036854775808]\n' > "$TMP/n.jsonl"
    run hex <(records pack "$TMP/n.jsonl")
    [ "$output" = 9affe0d0dfd080d1ff7fd18000d2ffff7fffd280000000d3ffffffff7fffffffd38000000000000000 ]
    records pack -o "$TMP/u.mpk" "$TMP/u.jsonl"
    records pack -o "$TMP/n.mpk" "$TMP/n.jsonl"
    run records json "$TMP/u.mpk"
    [ "$output" = "$(cat "$TMP/u.jsonl")" ]
    run records json "$TMP/n.mpk"
    [ "$output" = "$(cat "$TMP/n.jsonl")" ]
}

@test "pack: integers outside msgpack's range are bad data with line and column" {
    printf '{"a":1}\n\n[1, 18446744073709551616]\n' > "$TMP/big.jsonl"
    run records pack -o "$TMP/out.mpk" "$TMP/big.jsonl"
    assert_status 65
    assert_one_error_line records
    assert_output_contains "$TMP/big.jsonl: line 3, column 5: integer above 18446744073709551615"
    [ ! -e "$TMP/out.mpk" ]
    run sh -c 'printf -- "-9223372036854775809\n" | records pack > /dev/null'
    assert_status 65
    assert_output_contains "stdin: line 1, column 1: integer below -9223372036854775808"
}

@test "json: every msgpack type from hand-made bytes, and back byte for byte" {
    # nil true false, fixstr, str8, float64 1.5, float32 0.1, bin, fixext,
    # ext8, invalid UTF-8 str, map with int key, duplicate keys, "$" key,
    # array16, NaN, -inf, -0.0, a float64 that is an integer.
    printf '\xc0\xc3\xc2\xa3abc' > "$TMP/all.mpk"
    printf '\xd9\x20%s' "$(printf '%032d' 7)" >> "$TMP/all.mpk"
    printf '\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00\xca\x3d\xcc\xcc\xcd' >> "$TMP/all.mpk"
    printf '\xc4\x03\x00\x01\xfe\xd4\x05\x2a\xc7\x03\xff\x01\x02\x03\xa2\xff\x41' >> "$TMP/all.mpk"
    printf '\x81\x01\xa1x\x82\xa1k\x01\xa1k\x02\x81\xa2$b\x00' >> "$TMP/all.mpk"
    printf '\xdc\x00\x10' >> "$TMP/all.mpk"; printf '\x01%.0s' $(seq 16) >> "$TMP/all.mpk"
    printf '\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00\xcb\xff\xf0\x00\x00\x00\x00\x00\x00' >> "$TMP/all.mpk"
    printf '\xcb\x80\x00\x00\x00\x00\x00\x00\x00\xcb\x40\x59\x00\x00\x00\x00\x00\x00' >> "$TMP/all.mpk"
    cat > "$TMP/expected.jsonl" <<'EOF'
null
true
false
"abc"
"00000000000000000000000000000007"
1.5
{"$float32":0.1}
{"$bin":"AAH+"}
{"$ext":5,"$data":"Kg=="}
{"$ext":-1,"$data":"AQID"}
{"$str":"/0E="}
{"$map":[[1,"x"]]}
{"$map":[["k",1],["k",2]]}
{"$map":[["$b",0]]}
[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]
{"$float":"nan"}
{"$float":"-inf"}
-0.0
100.0
EOF
    records json -o "$TMP/all.jsonl" "$TMP/all.mpk"
    diff -u "$TMP/expected.jsonl" "$TMP/all.jsonl"
    records pack "$TMP/all.jsonl" | cmp - "$TMP/all.mpk"
}

@test "floats: shortest digits that read back exactly, and tags for the rest" {
    printf '[0.1,1.0,-0.0,1e+300,5e-324,2.2250738585072014e-308,9007199254740993.0,0.30000000000000004,123456789.123]\n' > "$TMP/f.jsonl"
    printf '[{"$float32":0.1},{"$float32":16777216.0},{"$float32":1e-45},{"$float32":"inf"},{"$float32":"nan:7fc00001"}]\n' >> "$TMP/f.jsonl"
    printf '[{"$float":"inf"},{"$float":"-inf"},{"$float":"nan"},{"$float":"nan:fff8000000000001"}]\n' >> "$TMP/f.jsonl"
    records pack -o "$TMP/f.mpk" "$TMP/f.jsonl"
    run records json "$TMP/f.mpk"
    assert_status 0
    # 2^53+1 is not a double: it reads as 2^53.
    [ "${lines[0]}" = '[0.1,1.0,-0.0,1e+300,5e-324,2.2250738585072014e-308,9007199254740992.0,0.30000000000000004,123456789.123]' ]
    [ "${lines[1]}" = '[{"$float32":0.1},{"$float32":16777216.0},{"$float32":1e-45},{"$float32":"inf"},{"$float32":"nan:7fc00001"}]' ]
    [ "${lines[2]}" = "$(sed -n 3p "$TMP/f.jsonl")" ]
    records json "$TMP/f.mpk" | records pack | cmp - "$TMP/f.mpk"
    # The bits, checked by hand: float32 0.1 is 3dcccccd; the odd NaN keeps its payload.
    run hex "$TMP/f.mpk"
    assert_output_contains ca3dcccccd
    assert_output_contains cbfff8000000000001
    assert_output_contains cb0000000000000001
}

@test "token streams: byte-exact round trip, and --tokens shows the ids" {
    [ -x "$UPCYC_UNIT/gen_tokens" ] || skip "gen_tokens is not built in $UPCYC_UNIT"
    "$UPCYC_UNIT/gen_tokens" --docs 500 --seed 9 > "$TMP/t.mpk"
    records json "$TMP/t.mpk" | records pack | cmp - "$TMP/t.mpk"
    "$UPCYC_UNIT/gen_tokens" --docs 50 --vocab 70000 --seed 2 > "$TMP/t4.mpk"
    records json "$TMP/t4.mpk" | records pack | cmp - "$TMP/t4.mpk"
    # --tokens: decode the base64 of document 3 by hand and compare the ids.
    for f in t t4; do
        width=$(records json "$TMP/$f.mpk" | head -1 | jq .token_width)
        b64=$(records json "$TMP/$f.mpk" | sed -n 5p | jq -r '.tokens["$bin"]')
        fmt=$([ "$width" = 2 ] && echo u2 || echo u4)
        want=$(printf '%s' "$b64" | base64 -d | od -An -v -t"$fmt" --endian=little | tr -s ' \n' '  ' | sed 's/^ //; s/ $//')
        got=$(records json --tokens "$TMP/$f.mpk" | sed -n 5p | jq -r '.tokens | map(tostring) | join(" ")')
        [ -n "$got" ] && [ "$got" = "$want" ]
    done
    # The header is unchanged, and the result is the input's stream otherwise.
    diff <(records json "$TMP/t.mpk" | jq -c 'del(.tokens)') \
         <(records json --tokens "$TMP/t.mpk" | jq -c 'del(.tokens)')
}

@test "--tokens needs a token stream" {
    metrics_jsonl | records pack -o "$TMP/m.mpk"
    run records json --tokens "$TMP/m.mpk"
    assert_status 65
    assert_one_error_line records
    assert_output_contains "record 0 (byte 0): --tokens needs a token stream"
    printf '{"format":"upcyc.tokens","version":1,"vocab_size":300,"eos_id":0,"token_width":2}\n{"id":0,"bytes":1,"tokens":{"$bin":"AAAA"}}\n' \
        | records pack -o "$TMP/odd.mpk"
    run records json --tokens "$TMP/odd.mpk"
    assert_status 65
    assert_output_contains "record 1 (byte 65): tokens bin of 3 bytes is not a multiple of the token width 2"
    : > "$TMP/empty.mpk"
    run records json --tokens "$TMP/empty.mpk"
    assert_status 65
}

@test "an empty stream gives empty output" {
    : > "$TMP/empty"
    run records json "$TMP/empty"
    assert_status 0
    [ -z "$output" ]
    printf '\n  \n\t\n' | records pack > "$TMP/out.mpk"
    [ ! -s "$TMP/out.mpk" ]
}

@test "invalid and truncated msgpack: exit 65 naming record and byte" {
    printf '\x81\xa1a\x01\xc1' > "$TMP/bad.mpk"
    run records json "$TMP/bad.mpk"
    assert_status 65
    assert_one_error_line records
    assert_output_contains "$TMP/bad.mpk: record 1 (byte 4): invalid msgpack"
    printf '\x01\x82\xa1a\x01' > "$TMP/trunc.mpk"
    run records json -o "$TMP/out.jsonl" "$TMP/trunc.mpk"
    assert_status 65
    assert_output_contains "record 1 (byte 1): truncated"
    [ ! -e "$TMP/out.jsonl" ]
    run records tsv "$TMP/trunc.mpk"
    assert_status 65
    printf '\xc4\x10abc' > "$TMP/trunc-bin.mpk"
    run sh -c 'records json < "$1"' sh "$TMP/trunc-bin.mpk"
    assert_status 65
    assert_output_contains "stdin: record 0 (byte 0): truncated"
}

@test "msgpack nested deeper than msgpack-c's 32 levels: exit 65 naming record and byte" {
    # A record 1 ahead, then 40 nested one-element arrays (0x91) around a 1.
    { printf '\x01'; printf '\x91%.0s' $(seq 40); printf '\x01'; } > "$TMP/deep.mpk"
    run records json -o "$TMP/out.jsonl" "$TMP/deep.mpk"
    assert_status 65
    assert_one_error_line records
    assert_output_contains "$TMP/deep.mpk: record 1 (byte 1): nested deeper than 32 levels"
    [ ! -e "$TMP/out.jsonl" ]
    # 32 levels is the limit itself: still read.
    { printf '\x91%.0s' $(seq 32); printf '\x01'; } > "$TMP/deep32.mpk"
    run records json "$TMP/deep32.mpk"
    assert_status 0
    [ "$output" = "$(printf '[%.0s' $(seq 32))1$(printf ']%.0s' $(seq 32))" ]
}

@test "non-canonical msgpack: a warning, or an error with --strict" {
    # 5 as uint16, 256 as int16 (same size as the canonical uint16), "ab" as str8.
    printf '\x01\xcd\x00\x05\xd1\x01\x00\xd9\x02ab' > "$TMP/odd.mpk"
    run records json "$TMP/odd.mpk"
    assert_status 0
    [ "${lines[0]}" = 1 ] && [ "${lines[1]}" = 5 ] && [ "${lines[2]}" = 256 ] && [ "${lines[3]}" = '"ab"' ]
    assert_output_contains "3 records not in canonical msgpack form (the first: record 1, byte 1)"
    run records json --strict "$TMP/odd.mpk"
    assert_status 65
    assert_output_contains "record 1 (byte 1): not in canonical msgpack form"
    # What pack writes back: the same values in canonical form.
    run hex <(records json "$TMP/odd.mpk" 2>/dev/null | records pack)
    [ "$output" = 0105cd0100a26162 ]
}

@test "pack: bad JSON lines exit 65 with line and column" {
    check() {   # $1 line, $2 expected message part
        printf '{"ok":1}\n%s\n' "$1" > "$TMP/bad.jsonl"
        run records pack -o "$TMP/out.mpk" "$TMP/bad.jsonl"
        assert_status 65
        assert_one_error_line records
        assert_output_contains "$TMP/bad.jsonl: line 2, column $2"
        [ ! -e "$TMP/out.mpk" ]
    }
    check '{"a":1' "7: expected ',' or '}', found the end of the line"
    check '{"a" 1}' "6: expected ':' after the key, found '1'"
    check '{a:1}' "2: expected a string key"
    check '[1,]' "4: expected a value"
    check '[01]' "3: expected ',' or ']'"
    check '1.' "3: expected a digit after the decimal point"
    check '"abc' "1: unterminated string"
    check '"a\qb"' "3: unknown escape"
    check '"\ud800x"' "2: unpaired surrogate"
    check "$(printf '"a\tb"')" "3: control character 0x09"
    check "$(printf '"\xff"')" "2: invalid UTF-8"
    check '1 2' "3: expected the end of the line after the value, found '2'"
    check 'nul' "1: expected a value"
    check '{"$foo":1}' '2: unknown tag "$foo"'
    check '{"$bin":"abc"}' '9: invalid base64'
    check '{"$bin":"AA==","x":1}' '1: the "$bin" tag takes exactly one key'
    check '{"$ext":300,"$data":""}' '9: expected an integer in [-128, 127]'
    check '{"$float":1.5}' '11: expected a string as the value of "$float"'
    check '{"$float":"nan:3ff0000000000000"}' '11: expected "inf", "-inf", "nan"'
    check '{"$map":[[1]]}' '10: expected a [key, value] pair'
    check '1e999' '1: number too large for a float64'
    check "$(printf '%.0s[' $(seq 33))$(printf '%.0s]' $(seq 33))" '33: nested deeper than 32 msgpack arrays and maps'
}

@test "pack: escapes, surrogate pairs, NUL, blank lines, CRLF" {
    printf '"\\u0000\\ud83d\\ude00\\/\\b\\f\\n\\r\\t\\"\\\\\\u00e9"\r\n\n   \n{ "a" : [ 1 , 2 ] }\n' > "$TMP/e.jsonl"
    records pack -o "$TMP/e.mpk" "$TMP/e.jsonl"
    run hex "$TMP/e.mpk"
    [ "$output" = af00f09f98802f080c0a0d09225cc3a981a161920102 ]
    run records json "$TMP/e.mpk"
    [ "${lines[0]}" = '"\u0000😀/\b\f\n\r\t\"\\é"' ]
    [ "${lines[1]}" = '{"a":[1,2]}' ]
}

@test "maps: a plain object when keys are distinct strings, else \$map" {
    printf '{"$map":[["a",1],["b",{"$map":[[true,null]]}]]}\n' > "$TMP/m.jsonl"
    # A map with string keys is plain even when written as $map.
    run sh -c 'records pack "$1" | records json' sh "$TMP/m.jsonl"
    [ "$output" = '{"a":1,"b":{"$map":[[true,null]]}}' ]
    # A "$" key later than the first is an ordinary key.
    printf '{"a":1,"$b":2}\n' > "$TMP/d.jsonl"
    run sh -c 'records pack "$1" | records json' sh "$TMP/d.jsonl"
    [ "$output" = '{"a":1,"$b":2}' ]
    # The key order is kept.
    printf '{"z":1,"a":2,"m":3}\n' > "$TMP/o.jsonl"
    run sh -c 'records pack "$1" | records json' sh "$TMP/o.jsonl"
    [ "$output" = '{"z":1,"a":2,"m":3}' ]
}

@test "jq works on the JSON Lines (the man page example)" {
    metrics_jsonl | records pack -o "$TMP/metrics.mpk"
    run sh -c 'records json "$1" | jq -c "select(.event == \"train_step\") | [.step, .loss]"' sh "$TMP/metrics.mpk"
    assert_status 0
    [ "${lines[0]}" = '[1,2.5]' ]
    [ "${lines[1]}" = '[2,2.25]' ]
    [ "${lines[2]}" = '[3,{"$float":"nan"}]' ]
    [ "${#lines[@]}" -eq 3 ]
}

@test "tsv: exact output on the metrics fixture" {
    metrics_jsonl | records pack -o "$TMP/metrics.mpk"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' \
        event step loss opt.lr opt.beta note \
        train_step 1 2.5 0.001 '[0.9,0.95]' 'a\tb\nc\\d' \
        eval 1 '' '' '' '' \
        train_step 2 2.25 0.002 '' '' \
        train_step 3 nan '' '' '' > "$TMP/expected.tsv"
    records tsv -o "$TMP/all.tsv" "$TMP/metrics.mpk"
    cmp "$TMP/expected.tsv" "$TMP/all.tsv"
    printf 'step\tval_loss\tmissing\n1\t3.25\t\n' > "$TMP/expected-eval.tsv"
    records tsv --event eval --fields step,val_loss,missing "$TMP/metrics.mpk" | cmp "$TMP/expected-eval.tsv" -
    records tsv --event train_step --fields=step,opt.lr,extra "$TMP/metrics.mpk" > "$TMP/ts.tsv"
    printf 'step\topt.lr\textra\n1\t0.001\t\n2\t0.002\ttrue\n3\t\t\n' | cmp - "$TMP/ts.tsv"
}

@test "tsv: keys with dots, nested maps asked for whole, bin and non-map records" {
    printf '{"a.b":1,"a":{"b":2,"c":{"d":3}},"bin":{"$bin":"AAE="},"e":{}}\n' | records pack -o "$TMP/x.mpk"
    run records tsv "$TMP/x.mpk"
    [ "${lines[0]}" = "$(printf 'a.b\ta.b\ta.c.d\tbin\te')" ]
    [ "${lines[1]}" = "$(printf '1\t1\t3\t{"$bin":"AAE="}\t{}')" ]
    run records tsv --fields a.c,a.b "$TMP/x.mpk"
    [ "${lines[1]}" = "$(printf '{"d":3}\t1')" ]
    printf '{"a":1}\n[1,2]\n' | records pack -o "$TMP/y.mpk"
    run records tsv -o "$TMP/y.tsv" "$TMP/y.mpk"
    assert_status 65
    assert_output_contains "record 1 (byte 4): expected a map"
    [ ! -e "$TMP/y.tsv" ]
    run records tsv --event nothing "$TMP/x.mpk"
    assert_status 0
    assert_output_contains "no record with that event"
}

@test "json and pack are exact inverses on a seeded random stream" {
    # Seeded pseudo-random records of every JSON-visible kind.
    awk -v seed=11 'BEGIN {
        srand(seed)
        split("hello|é ü|😀 x|tab\\there|", w, "|")
        for (k = 0; k < 5; k++) word[k] = w[k + 1]
        for (i = 0; i < 3000; i++) {
            r = int(rand() * 6)
            if (r == 0) printf "{\"i\":%d,\"f\":%.17g,\"s\":\"x%d\"}\n", i, rand() * 1e6 - 5e5, int(rand() * 1e9)
            else if (r == 1) printf "[%.0f,-%.0f,%d.5]\n", int(rand() * 2^31) * 65536, int(rand() * 2^31) * 4096, int(rand() * 1000)
            else if (r == 2) printf "{\"$bin\":\"%s\"}\n", substr("QUJDREVGR0hJSktMTU5PUA==", 1, 4 * int(rand() * 5))
            else if (r == 3) printf "{\"e\":{\"n\":%g,\"t\":[true,false,null]}}\n", rand()
            else if (r == 4) printf "%.0f\n", -int(rand() * 2^40)
            else printf "\"%s\"\n", word[int(rand() * 5)]
        }
    }' > "$TMP/r.jsonl"
    records pack -o "$TMP/r.mpk" "$TMP/r.jsonl"
    records json -o "$TMP/r2.jsonl" "$TMP/r.mpk"
    records pack "$TMP/r2.jsonl" | cmp - "$TMP/r.mpk"
    # And json is stable: packing its output and converting again changes nothing.
    records pack "$TMP/r2.jsonl" | records json | cmp - "$TMP/r2.jsonl"
    [ "$(wc -l < "$TMP/r2.jsonl")" -eq 3000 ]
}
