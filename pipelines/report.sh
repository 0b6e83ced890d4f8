#!/bin/sh
# pipelines/report.sh OUT: the study's report from its records (made by
# pipelines/study.sh): tables as TSV and Markdown, figures with gnuplot (PNG
# and SVG), and OUT/report.md tying them together.
#
#   OUT/tables/runs.tsv      run, kind, fraction, tokens, FLOPs, params, active params, loss, bpb,
#                            core average, improvement,
#                            and train's validation loss averaged over its last three evaluations
#   OUT/tables/pairs.tsv     CPT against upcycled at equal FLOPs, per budget
#   OUT/tables/serving.tsv   maximum throughput per model, and its decrease against dense
#   OUT/figures/improvement  relative improvement against additional training
#   OUT/figures/ce           final cross-entropy, upcycled against CPT, per budget
#   OUT/figures/latency      median TPOT against output throughput
#   OUT/figures/loss         training loss against tokens: pretraining, then the largest budget
set -eu
# shellcheck source=pipelines/report_lib.sh
. "$(dirname "$0")/report_lib.sh"
OUT=${1:?usage: report.sh OUT}
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/bin}
PATH="$BIN:$PATH"
mkdir -p "$OUT/tables" "$OUT/figures"
T=$OUT/tables
F=$OUT/figures

# one JSON object per run: kind, fraction, tokens, FLOPs
for mpk in "$OUT"/runs/*.mpk; do
    case $mpk in *.upcycle.mpk | */sweep-*) continue ;; esac
    run=$(basename "$mpk" .mpk)
    records json "$mpk" | jq -s -c --arg run "$run" '
        (map(select(.event == "train_start")) | first) as $s
        | (map(select(.event == "train_end")) | last) as $e
        | {run: $run,
           kind: ($run | if startswith("cpt") then "cpt" elif startswith("upcycled") then "upcycled" else "dense" end),
           fraction: ($run | capture("-(?<f>[0-9]+)$").f // "0" | tonumber),
           tokens: ($e.tokens // 0), flops: (($e.tokens // 0) * ($s.flops_per_token // 0)),
           params: ($s.params // 0), active_params: ($s.active_params // 0),
           val_last3: (map(select(.event == "eval") | .loss) | .[-3:] | if length > 0 then add / length else null end)}'
done > "$T/runs.jsonl"
records json "$OUT/eval/evaluate.mpk" > "$T/evaluate.jsonl"

# lr_sweep.tsv: the learning-rate sweep, when the study ran one (train's final validation loss)
rm -f "$T/lr_sweep.tsv"
for mpk in "$OUT"/runs/sweep-*.mpk; do
    [ -e "$mpk" ] || continue
    [ -e "$T/lr_sweep.tsv" ] || printf 'kind\tlr\tval_loss\n' > "$T/lr_sweep.tsv"
    run=$(basename "$mpk" .mpk)
    kind=${run#sweep-}
    printf '%s\t%s\t%s\n' "${kind%-*}" "${kind##*-}" \
        "$(records json "$mpk" | jq -s 'map(select(.event == "eval")) | last | .loss')" >> "$T/lr_sweep.tsv"
done

# runs.tsv: the grid with its results; improvement relative to the dense start
jq -s -r --slurpfile ev "$T/evaluate.jsonl" '
    ($ev | map(select(.event == "lm")) | map({key: (.model | split("/") | last), value: .}) | from_entries) as $lm
    | ($ev | map(select(.event == "summary")) | map({key: (.model | split("/") | last), value: .}) | from_entries) as $sum
    | ($lm.dense.loss) as $d
    | ["run", "kind", "fraction_pct", "tokens", "train_flops", "params", "active_params", "loss", "bpb", "core_average", "improvement_pct", "val_loss_last3"],
      (sort_by(.kind != "dense", .fraction, .kind)[]
       | [.run, .kind, .fraction, .tokens, .flops, .params, .active_params, $lm[.run].loss, $lm[.run].bpb,
          $sum[.run].core_average, (($d - $lm[.run].loss) / $d * 100), .val_last3])
    | @tsv' "$T/runs.jsonl" > "$T/runs.tsv"

# pairs.tsv: CPT against upcycled at the same budget (same FLOPs)
awk -F'\t' 'NR > 1 && $2 == "cpt" { c[$3] = $0 } NR > 1 && $2 == "upcycled" { u[$3] = $0 }
    END {
        print "fraction_pct\tcpt_flops\tupcycled_flops\tcpt_loss\tupcycled_loss\tcpt_improvement_pct\tupcycled_improvement_pct\tupcycled_minus_cpt_loss"
        n = 0
        for (f in c) if (f in u) keys[n++] = f + 0
        for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (keys[j] < keys[i]) { t = keys[i]; keys[i] = keys[j]; keys[j] = t }
        for (i = 0; i < n; i++) {
            split(c[keys[i]], a, "\t"); split(u[keys[i]], b, "\t")
            printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.6g\n", keys[i], a[5], b[5], a[8], b[8], a[11], b[11], b[8] - a[8]
        }
    }' "$T/runs.tsv" > "$T/pairs.tsv"

# serving: every sweep point, and the maximum throughput per model
for mpk in "$OUT"/serve/*.mpk; do
    m=$(basename "$mpk" .mpk)
    records json "$mpk" | jq -c --arg m "$m" 'select(.event == "sweep_point") | . + {model: $m}'
done > "$T/serve.jsonl"
jq -s -r '["model", "rate_rps", "output_tokens_per_s", "total_tokens_per_s", "ttft_ms_median", "tpot_ms_median", "e2e_ms_median"],
    (.[] | [.model, (.rate_rps | if type == "number" then . else "inf" end), .output_tokens_per_s,
            .total_tokens_per_s, .ttft_ms_median, .tpot_ms_median, .e2e_ms_median]) | @tsv' "$T/serve.jsonl" > "$T/serve_points.tsv"
jq -s -r 'group_by(.model) | map({model: .[0].model, max: (map(.total_tokens_per_s) | max), out: (map(.output_tokens_per_s) | max)})
    | (map(select(.model == "dense")) | first | .max) as $d
    | ["model", "max_total_tokens_per_s", "max_output_tokens_per_s", "decrease_vs_dense_pct"],
      (.[] | [.model, .max, .out, (if $d then (($d - .max) / $d * 100) else null end)]) | @tsv' "$T/serve.jsonl" > "$T/serving.tsv"

# loss curves: dense pretraining, then the largest budget's runs after it
# (tokens continue)
dense_tokens=$(jq -s 'map(select(.run == "dense")) | first | .tokens' "$T/runs.jsonl")
largest=$(jq -s 'map(.fraction) | max' "$T/runs.jsonl")
for mpk in "$OUT"/runs/*.mpk; do
    run=$(basename "$mpk" .mpk)
    case $run in dense) off=0 ;; "cpt-$largest" | "upcycled-$largest") off=$dense_tokens ;; *) continue ;; esac
    records json "$mpk" | jq -r --arg run "$run" --argjson off "$off" \
        'select(.event == "train_step") | [$run, .tokens + $off, .ce] | @tsv'
done > "$T/loss.tsv"

# figures: PNG and SVG of each
plot improvement "set title 'Relative improvement over the dense model (held-out CE)'; set xlabel 'additional training, % of pretraining tokens (equal FLOPs per budget)'; set ylabel 'improvement (%)'; plot '$T/pairs.tsv' using 1:6 skip 1 with linespoints lw 2 title 'continued pretraining', '' using 1:7 skip 1 with linespoints lw 2 title 'upcycled'"
plot ce "set title 'Final held-out cross-entropy at equal training FLOPs'; set xlabel 'budget, % of pretraining tokens'; set ylabel 'cross-entropy (nats/token)'; plot '$T/pairs.tsv' using 1:4 skip 1 with linespoints lw 2 title 'continued pretraining', '' using 1:5 skip 1 with linespoints lw 2 title 'upcycled'"
models=$(cut -f1 "$T/serve_points.tsv" | tail -n +2 | sort -u)
latency="set title 'Serving: median time per output token against throughput'; set xlabel 'output tokens/s'; set ylabel 'median TPOT (ms)'; plot"
sep=""
for m in $models; do
    latency="$latency$sep '< grep \"^$m	\" $T/serve_points.tsv' using 3:6 with linespoints lw 2 title '$m'"
    sep=","
done
plot latency "$latency"
curves="set title 'Training loss'; set xlabel 'tokens (continued runs start where pretraining ended)'; set ylabel 'cross-entropy'; plot"
sep=""
for run in $(cut -f1 "$T/loss.tsv" | sort -u); do
    curves="$curves$sep '< grep \"^$run	\" $T/loss.tsv' using 2:3 with lines lw 2 title '$run'"
    sep=","
done
plot loss "$curves"

# Markdown tables
{
    echo "# Continue pretraining or upcycle? ($(basename "$OUT"))"
    echo
    echo "Settings: $(cat "$OUT/settings.txt" 2> /dev/null || echo 'see pipelines/study.sh')"
    echo
    echo "## Runs"
    echo
    echo "Every run starts from the dense model. Budgets are fractions of the dense model's pretraining"
    echo "tokens; an upcycled run gets the tokens its FLOPs buy at the same budget (fewer: its active"
    echo "parameters cost more per token). Loss and bits per byte are held-out (the CPT corpus's val split,"
    echo "scored by evaluate at the end); improvement is relative to the dense model's loss; val_loss_last3"
    echo "is train's validation loss (on a fixed part of the split) averaged over the run's last three"
    echo "evaluations, which is less noisy."
    echo
    md "$T/runs.tsv"
    echo
    if [ -e "$T/lr_sweep.tsv" ]; then
        echo "Learning rates were chosen by a sweep at the smallest budget (final validation loss):"
        echo
        md "$T/lr_sweep.tsv"
        echo
    fi
    echo "## Upcycled against continued pretraining, at equal FLOPs"
    echo
    md "$T/pairs.tsv"
    echo
    echo "![relative improvement](figures/improvement.png)"
    echo
    echo "![final cross-entropy](figures/ce.png)"
    echo
    echo "## What it costs to serve"
    echo
    echo "Maximum throughput over the rate sweep (serve-bench, the paper's request lengths scaled down),"
    echo "and its decrease against the dense model (the paper's Figure 2):"
    echo
    md "$T/serving.tsv"
    echo
    echo "![latency against throughput](figures/latency.png)"
    echo
    echo "## Training curves"
    echo
    echo "![training loss](figures/loss.png)"
    echo
    echo "Tables as TSV in tables/, figures as PNG and SVG in figures/, every record in runs/, eval/ and serve/."
} > "$OUT/report.md.tmp"
mv "$OUT/report.md.tmp" "$OUT/report.md"
echo "report: $OUT/report.md" >&2
