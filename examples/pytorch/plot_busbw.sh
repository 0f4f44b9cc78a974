#!/usr/bin/env bash
# Draws OUTDIR/busbw.svg from the benchmark JSON in OUTDIR (first pass of
# each mode) with `airamp plot`, the chart `airamp bench collnet --plot`
# draws. Skipped quietly when no airamp CLI is found.
# Usage: plot_busbw.sh OUTDIR PLUGIN_SO   (the CLI: AIRAMP_BIN, else beside PLUGIN_SO)
out=$1; plugin=$2
airamp_bin=${AIRAMP_BIN:-$(dirname "$plugin")/airamp}
[ -x "$airamp_bin" ] || exit 0
series=()
for f in "$out"/*.json; do
    case $f in *-[0-9].json | *-[0-9][0-9].json) continue ;; esac
    series+=("$(basename "$f" .json)=$f")
done
[ ${#series[@]} -gt 0 ] || exit 0
"$airamp_bin" plot "$out/busbw.svg" --title "bf16 all_reduce, bus bandwidth" "${series[@]}"
