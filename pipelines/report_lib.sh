# pipelines/report_lib.sh: what the reports share (sourced by report.sh and
# report_durations.sh; not run on its own).

# plot NAME GNUPLOT-BODY: figures/NAME.png and .svg into $F, TSV input
plot() {
    for term in "pngcairo size 800,520:png" "svg size 800,520:svg"; do
        gnuplot -e "set terminal ${term%%:*}; set output '$F/$1.${term##*:}'; set datafile separator '\t'; set key top left; set grid; $2"
    done
}

# md TSV: a Markdown table, numbers to 4 significant digits
md() {
    awk -F'\t' 'function f(x) { return (x ~ /^-?[0-9.]+(e[-+]?[0-9]+)?$/ && x !~ /^[0-9]+$/) ? sprintf("%.4g", x) : x }
        { line = "|"; for (i = 1; i <= NF; i++) line = line " " f($i) " |"; print line
          if (NR == 1) { line = "|"; for (i = 1; i <= NF; i++) line = line " --- |"; print line } }' "$1"
}
