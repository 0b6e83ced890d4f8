#!/usr/bin/env bats
# What every tool promises (DESIGN.md, Conventions): --help and --version,
# a man page that renders cleanly and names every long option --help lists,
# usage errors as exit 64 with one line, and no binary on a terminal.

load helpers

tools() {
    for t in "$UPCYC_BIN"/*; do
        [ -x "$t" ] && basename "$t"
    done
}

@test "every tool has --help, --version and a man page naming its options" {
    n=0
    for t in $(tools); do
        run "$t" --help
        assert_status 0
        help="$output"
        run "$t" --version
        assert_status 0
        [[ "$output" == "$t (upcyc) "* ]] || { echo "$t --version: $output" >&2; return 1; }
        page="$BATS_TEST_DIRNAME/../man/man1/$t.1"
        [ -f "$page" ] || { echo "no man page for $t" >&2; return 1; }
        run groff -man -Tutf8 -ww "$page"
        assert_status 0
        [ -z "$(groff -man -Tutf8 -ww "$page" 2>&1 >/dev/null)" ] || { echo "$page has groff warnings" >&2; return 1; }
        rendered=$(groff -man -Tascii "$page" 2>/dev/null | sed 's/.\x08//g')
        for opt in $(printf '%s\n' "$help" | grep -o -- '--[a-z][a-z-]*' | sort -u); do
            case "$rendered" in
            *"$opt"*) ;;
            *) echo "$t: --help lists $opt but man/man1/$t.1 does not" >&2; return 1 ;;
            esac
        done
        n=$((n + 1))
    done
    [ "$n" -ge 3 ]
}

@test "every man5 and man7 page renders without warnings" {
    for page in "$BATS_TEST_DIRNAME"/../man/man5/*.5 "$BATS_TEST_DIRNAME"/../man/man7/*.7; do
        [ -z "$(groff -man -Tutf8 -ww "$page" 2>&1 >/dev/null)" ] || { echo "$page has groff warnings" >&2; return 1; }
    done
}

@test "every tool rejects an unknown option with exit 64 and one line" {
    for t in $(tools); do
        run "$t" --no-such-option-anywhere
        assert_status 64
        assert_one_error_line "$t"
    done
}
