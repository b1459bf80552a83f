#!/usr/bin/env bash
# Writes BENCHMARKS.md from benches/BENCHMARKS.md.in: each `@@name@@` line is replaced by
# $OUT/name.md (OUT defaulting to benches/results). benches/run.sh calls it at its end;
# after one part alone (say `bash benches/restart.sh`), run it to refresh the document.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benches/results}
awk -v out="$OUT" '
/^@@[a-z.]+@@$/ {
    f = out "/" substr($0, 3, length($0) - 4) ".md"
    if ((getline line < f) <= 0) { print "missing " f > "/dev/stderr"; exit 1 }
    print line
    while ((getline line < f) > 0) print line
    close(f)
    next
}
{ print }' benches/BENCHMARKS.md.in >BENCHMARKS.md.tmp
mv BENCHMARKS.md.tmp BENCHMARKS.md
echo "wrote BENCHMARKS.md"
