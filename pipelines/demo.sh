#!/bin/sh
# The demo: the whole study (pipelines/study.sh) at the tiny scale on the
# built-in corpus (Debian's fortunes): a 1.8M-parameter dense model
# pretrained, continued (CPT) and sparse-upcycled (8 experts, top-2) at five
# equal-FLOP budgets, every model evaluated, dense and MoE served, and the
# report with its tables and figures written. About seven minutes on two cores.
#
#   OUT=DIR        where results go (default demo-out)
#   SCALE=micro    a much shorter run (seconds), or small (hours)
#   BIN=DIR        where the tools are (default bin)
# Any variable of pipelines/study.sh (CORPUS, CPT_CORPUS, FRACTIONS, ...) works too.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-demo-out}
SCALE=${SCALE:-tiny}
export OUT SCALE
"$here/study.sh"
show() { column -t -s "$(printf '\t')" "$1" >&2 || cat "$1" >&2; }
if [ -n "${DURATIONS:-}" ]; then
    printf '\nImprovement over each dense model at equal training FLOPs, per pretraining duration:\n' >&2
    show "$OUT/tables/durations.tsv"
else
    printf '\nHeld-out loss and improvement over the dense model, at equal training FLOPs:\n' >&2
    show "$OUT/tables/pairs.tsv"
fi
printf '\nServing (maximum throughput over the rate sweep):\n' >&2
show "$OUT/tables/serving.tsv"
printf '\nThe report: %s/report.md (figures in %s/figures/)\n' "$OUT" "$OUT" >&2
