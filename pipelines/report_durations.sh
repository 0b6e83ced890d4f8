#!/bin/sh
# pipelines/report_durations.sh OUT D...: the report that compares the
# study's pretraining durations (pipelines/study.sh with DURATIONS), from
# each duration's own report in OUT/tpp-D/ (pipelines/report.sh).
#
#   OUT/tables/durations.tsv   per duration and budget: the dense start, CPT
#                              and upcycled improvement at equal FLOPs
#   OUT/tables/serving.tsv     maximum throughput per duration and model
#   OUT/figures/improvement    relative improvement against additional
#                              training, a line per duration and kind
#   OUT/figures/advantage      upcycled minus CPT held-out loss per budget
set -eu
# shellcheck source=pipelines/report_lib.sh
. "$(dirname "$0")/report_lib.sh"
OUT=${1:?usage: report_durations.sh OUT DURATION...}
shift
[ $# -gt 0 ] || { echo "usage: report_durations.sh OUT DURATION..." >&2; exit 64; }
mkdir -p "$OUT/tables" "$OUT/figures"
T=$OUT/tables
F=$OUT/figures

printf 'duration_tpp\tdense_tokens\tdense_loss\tfraction_pct\tcpt_improvement_pct\tupcycled_improvement_pct\tupcycled_minus_cpt_loss\n' > "$T/durations.tsv.tmp"
printf 'duration_tpp\tmodel\tmax_total_tokens_per_s\tdecrease_vs_dense_pct\n' > "$T/serving.tsv.tmp"
for d in "$@"; do
    sub=$OUT/tpp-$d/tables
    for t in runs pairs serving; do
        [ -s "$sub/$t.tsv" ] || { echo "report_durations: $sub/$t.tsv is missing: run pipelines/study.sh" >&2; exit 66; }
    done
    awk -F'\t' -v d="$d" 'FNR == NR { if ($1 == "dense") { tokens = $4; loss = $8 } next }
        FNR > 1 { printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d, tokens, loss, $1, $6, $7, $8 }' \
        "$sub/runs.tsv" "$sub/pairs.tsv" >> "$T/durations.tsv.tmp"
    awk -F'\t' -v d="$d" 'NR > 1 { printf "%s\t%s\t%s\t%s\n", d, $1, $2, $4 }' "$sub/serving.tsv" >> "$T/serving.tsv.tmp"
done
mv "$T/durations.tsv.tmp" "$T/durations.tsv"
mv "$T/serving.tsv.tmp" "$T/serving.tsv"

# figures: PNG and SVG of each, a line per duration (and kind)
improvement="set title 'Relative improvement over each dense model (held-out CE)'; set xlabel 'additional training, % of pretraining tokens (equal FLOPs per budget)'; set ylabel 'improvement (%)'; plot"
advantage="set title 'Upcycled minus CPT held-out loss at equal FLOPs (below 0: upcycling wins)'; set xlabel 'budget, % of pretraining tokens'; set ylabel 'loss difference (nats/token)'; plot"
sep=""
i=0
for d in "$@"; do
    i=$((i + 1))   # a colour per duration: CPT dashed, upcycled solid
    only="(column(1) == $d ? column(%d) : NaN)"   # this duration's rows
    improvement="$improvement$sep '$T/durations.tsv' using 4:$(printf "$only" 5) skip 1 with linespoints lw 2 lc $i dt 2 title 'CPT, $d tok/param', '' using 4:$(printf "$only" 6) skip 1 with linespoints lw 2 lc $i title 'upcycled, $d tok/param'"
    advantage="$advantage$sep '$T/durations.tsv' using 4:$(printf "$only" 7) skip 1 with linespoints lw 2 lc $i title '$d tok/param'"
    sep=","
done
plot improvement "$improvement"
plot advantage "$advantage"

{
    echo "# Continue pretraining or upcycle, by pretraining duration ($(basename "$OUT"))"
    echo
    echo "One dense model per pretraining duration (tokens per parameter), and from each the whole"
    echo "comparison: continued pretraining (CPT) against the sparse upcycle at equal training FLOPs."
    echo "Each duration's own report has its runs, evaluation and serving in detail:"
    for d in "$@"; do
        echo "[$d tokens per parameter](tpp-$d/report.md)"
    done | paste -sd ',' | sed 's/,/, /g; s/$/./'
    echo
    echo "Settings: $(cat "$OUT/tpp-$1/settings.txt" 2> /dev/null || echo 'see pipelines/study.sh')"
    echo
    echo "## Improvement at equal FLOPs, per duration"
    echo
    echo "Improvement is relative to that duration's dense model (held-out loss, scored by evaluate);"
    echo "upcycled_minus_cpt_loss below 0 means the upcycle reached a lower loss for the same FLOPs."
    echo "The paper pretrained to 100, 230 and 460 tokens per parameter to ask whether upcycling still"
    echo "pays for a model that has already seen many tokens."
    echo
    md "$T/durations.tsv"
    echo
    echo "![relative improvement](figures/improvement.png)"
    echo
    echo "![upcycled minus CPT loss](figures/advantage.png)"
    echo
    echo "## What it costs to serve"
    echo
    echo "Maximum throughput over each duration's rate sweep (the model shapes are the same; the"
    echo "routing, and so the MoE's cost, can differ):"
    echo
    md "$T/serving.tsv"
    echo
    echo "Tables as TSV in tables/, figures as PNG and SVG in figures/."
} > "$OUT/report.md.tmp"
mv "$OUT/report.md.tmp" "$OUT/report.md"
echo "report: $OUT/report.md" >&2
