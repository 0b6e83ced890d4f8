# Shared by every bats suite: where the tools are, scratch space, and
# assertions that print what they saw when they fail.

: "${UPCYC_BIN:=$BATS_TEST_DIRNAME/../bin}"
: "${UPCYC_UNIT:=$BATS_TEST_DIRNAME/../build/tests}"
export PATH="$UPCYC_BIN:$PATH"
FIXTURES="$BATS_TEST_DIRNAME/fixtures"
# Third-party reference tokenizers live beside the repository (../shared/data).
SHARED_DATA="${UPCYC_SHARED_DATA:-$BATS_TEST_DIRNAME/../../shared/data}"

setup() {
    TMP="$BATS_TEST_TMPDIR"
}

# Fail with the output shown unless the last `run` exited with $1.
assert_status() {
    if [ "$status" -ne "$1" ]; then
        echo "expected exit status $1, got $status; output:" >&2
        echo "$output" >&2
        return 1
    fi
}

# Fail unless the last `run` output contains $1.
assert_output_contains() {
    case "$output" in
    *"$1"*) return 0 ;;
    esac
    echo "expected output to contain: $1" >&2
    echo "got: $output" >&2
    return 1
}

# Fail unless the last `run` printed exactly one line on stderr-merged output
# that starts with the tool's name (the convention for errors).
assert_one_error_line() {
    local tool="$1"
    local n
    n=$(printf '%s\n' "$output" | grep -c .)
    if [ "$n" -ne 1 ] || [ "${output#"$tool: "}" = "$output" ]; then
        echo "expected one error line starting with '$tool: ', got:" >&2
        echo "$output" >&2
        return 1
    fi
}

# Skip, saying why, when the reference tokenizer files are not present.
require_shared_data() {
    [ -f "$SHARED_DATA/$1" ] || skip "reference file $1 not found in $SHARED_DATA"
}
