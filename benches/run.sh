#!/usr/bin/env bash
# Regenerates BENCHMARKS.md: every table, the raw results in benches/results/, and the
# plot of shutdown time against idle connections. Run from anywhere:
#
#   bash benches/run.sh             # the full run (about 25 minutes on 2 cores)
#   QUICK=1 bash benches/run.sh     # fewer repetitions, shorter runs (a smoke test)
#
# Installs what it needs with apt-get if missing (wrk, nghttp2-client, gnuplot-nox).
# Every server listens on 127.0.0.1 only, and every step is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=benches/results
TARGET=${CARGO_TARGET_DIR:-target}
if [ "${QUICK:-0}" = 1 ]; then
    LAYER_RUNS=1 LAYER_TIME=1 IDLE_REPS=1 LAST_REPS=2 FORCE_REPS=1 MEM_REPS=1 RESTART_REPS=1
    export ROUNDS=${ROUNDS:-1} DURATION=${DURATION:-2}
else
    LAYER_RUNS=7 LAYER_TIME=3 IDLE_REPS=7 LAST_REPS=10 FORCE_REPS=7 MEM_REPS=3 RESTART_REPS=3
    export ROUNDS=${ROUNDS:-7} DURATION=${DURATION:-10}
fi
export OUT
mkdir -p "$OUT"

need() { # command package
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq; APT_UPDATED=1; export APT_UPDATED; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}
need wrk wrk
need h2load nghttp2-client
need gnuplot gnuplot-nox
need valgrind valgrind

# 10,000 connections take a little over 10,000 descriptors in each of the two processes.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 10100 ]; then
    echo "the open-file limit ($(ulimit -n)) is too low for 10,000 connections" >&2
    exit 1
fi

echo "== building (release)"
cargo build --release --quiet --examples
cargo bench --quiet --bench layer --bench layer_instructions --no-run 2>/dev/null

echo "== machine"
{
    echo "| | |"
    echo "|---|---|"
    echo "| CPU | $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') |"
    echo "| cores (\`nproc\`) | $(nproc) |"
    echo "| memory | $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) |"
    echo "| kernel | $(uname -sr) |"
    echo "| rustc | $(rustc --version) |"
    echo "| load generators | $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2), $(h2load --version | head -1) |"
    echo "| date | $(date -u +%Y-%m-%d) |"
    echo "| load average at the start (other work on the machine) | $(cut -d" " -f1-3 /proc/loadavg) |"
} | tee "$OUT/machine.md"

# The median, minimum and maximum of column COL for each distinct value of the key
# columns KEYS (comma-separated): "key...<TAB>median<TAB>min<TAB>max<TAB>n".
summarize() { # keys col file
    awk -F'\t' -v keys="$1" -v col="$2" '
    BEGIN { nk = split(keys, k, ",") }
    {
        key = $k[1]; for (i = 2; i <= nk; i++) key = key "\t" $k[i]
        if (!(key in n)) order[++nkeys] = key
        v[key, ++n[key]] = $col
    }
    END {
        for (o = 1; o <= nkeys; o++) {
            key = order[o]; m = n[key]
            for (i = 1; i <= m; i++) a[i] = v[key, i] + 0
            for (i = 2; i <= m; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
            med = (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
            printf "%s\t%.6g\t%.6g\t%.6g\t%d\n", key, med, a[1], a[m], m
        }
    }' "$3"
}
# The line of a summarize output whose key columns (NK of them) equal KEY (tab-joined).
row() { awk -F'\t' -v key="$2" -v nk="$3" '{ k = $1; for (i = 2; i <= nk; i++) k = k "\t" $i; if (k == key) print }' "$1"; }
# The summary line for KEY (tab-joined key columns) in a summarize output.
field() { awk -F'\t' -v key="$2" -v nk="$3" -v f="$4" '{ k = $1; for (i = 2; i <= nk; i++) k = k "\t" $i; if (k == key) print $(nk + f) }' "$1"; }

echo "== layer micro-benchmark (criterion, ${LAYER_RUNS} alternated runs)"
FNS=(bare graceful in_flight_requests)
: >"$OUT/layer.tsv"
for run in $(seq 1 "$LAYER_RUNS"); do
    for i in 0 1 2; do
        fn=${FNS[$(((i + run) % 3))]}
        timeout 300 cargo bench --quiet --bench layer -- --warm-up-time 1 \
            --measurement-time "$LAYER_TIME" "layer/$fn" >/dev/null 2>&1
        ns=$(sed -n 's/.*"median":{"confidence_interval":{[^}]*},"point_estimate":\([0-9.eE+-]*\).*/\1/p' \
            "$TARGET/criterion/layer/$fn/new/estimates.json")
        printf '%s\t%s\t%s\n' "$fn" "$run" "$ns" | tee -a "$OUT/layer.tsv"
    done
done
summarize 1 3 "$OUT/layer.tsv" >"$OUT/layer.sum"
bare=$(field "$OUT/layer.sum" bare 1 1)
ifr=$(field "$OUT/layer.sum" in_flight_requests 1 1)
{
    echo "| service | ns/request, median (min-max) | added to bare, ns | ratio to bare | ratio to InFlightRequests |"
    echo "|---|---|---|---|---|"
    for fn in "${FNS[@]}"; do
        IFS=$'\t' read -r _ med lo hi _ < <(row "$OUT/layer.sum" "$fn" 1)
        case $fn in
            bare) name="bare \`service_fn\`" ;;
            graceful) name="\`httpdown::Graceful\` (\`shutdown.layer()\`)" ;;
            *) name="tower-http \`InFlightRequests\`" ;;
        esac
        awk -v n="$name" -v m="$med" -v lo="$lo" -v hi="$hi" -v b="$bare" -v f="$ifr" \
            'BEGIN { printf "| %s | %.1f (%.1f-%.1f) | %+.1f | %.2f | %.2f |\n", n, m, lo, hi, m - b, m / b, m / f }'
    done
} >"$OUT/layer.md"
# Instructions per request (callgrind), which do not depend on the machine's load.
LI=$(ls -t "$TARGET"/release/deps/layer_instructions-* | grep -v '\.d$' | head -1)
: >"$OUT/layer-instructions.tsv"
for fn in "${FNS[@]}"; do
    ir=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null --toggle-collect='*run_requests*' \
        "$LI" "$fn" 2>&1 | awk '/Collected :/ { print $NF }')
    printf '%s\t%s\n' "$fn" "$((ir / 100000))" | tee -a "$OUT/layer-instructions.tsv"
done
{
    echo
    echo "| service | instructions per request (callgrind) | ratio to InFlightRequests |"
    echo "|---|---|---|"
    f=$(awk -F'\t' '$1 == "in_flight_requests" { print $2 }' "$OUT/layer-instructions.tsv")
    awk -F'\t' -v f="$f" '{ printf "| %s | %d | %.2f |\n", $1, $2, $2 / f }' "$OUT/layer-instructions.tsv"
} >>"$OUT/layer.md"
cat "$OUT/layer.md"

BENCH="$TARGET/release/examples/bench_shutdown"
echo "== shutdown with idle connections"
timeout 900 "$BENCH" idle --conns 100,1000,10000 --reps "$IDLE_REPS" 2>"$OUT/idle.log" | tee "$OUT/idle.tsv"
summarize 2,3 4 "$OUT/idle.tsv" >"$OUT/idle.sum"
{
    echo "| idle connections | httpdown ms, median (min-max) | axum::serve ms, median (min-max) | httpdown / axum |"
    echo "|---|---|---|---|"
    for n in 100 1000 10000; do
        IFS=$'\t' read -r _ _ hm hl hh _ < <(row "$OUT/idle.sum" "httpdown"$'\t'"$n" 2)
        IFS=$'\t' read -r _ _ am al ah _ < <(row "$OUT/idle.sum" "axum"$'\t'"$n" 2)
        awk -v n="$n" -v hm="$hm" -v hl="$hl" -v hh="$hh" -v am="$am" -v al="$al" -v ah="$ah" \
            'BEGIN { printf "| %\047d | %.2f (%.2f-%.2f) | %.2f (%.2f-%.2f) | %.2f |\n", n, hm, hl, hh, am, al, ah, hm / am }'
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$hm" "$hl" "$hh" "$am" "$al" "$ah" >>"$OUT/idle.plot.tmp"
    done
} >"$OUT/idle.md"
mv "$OUT/idle.plot.tmp" "$OUT/idle.dat"
cat "$OUT/idle.md"

echo "== last response -> return"
timeout 300 "$BENCH" last-response --reps "$LAST_REPS" 2>"$OUT/last.log" | tee "$OUT/last.tsv"
summarize 2 3 "$OUT/last.tsv" >"$OUT/last.client.sum"
summarize 2 4 "$OUT/last.tsv" >"$OUT/last.handler.sum"
{
    echo "| server | client read the last byte -> serve returned, ms | handler returned -> serve returned, ms |"
    echo "|---|---|---|"
    for k in httpdown axum; do
        IFS=$'\t' read -r _ cm cl ch _ < <(row "$OUT/last.client.sum" "$k" 1)
        IFS=$'\t' read -r _ sm sl sh _ < <(row "$OUT/last.handler.sum" "$k" 1)
        name=$k; [ "$k" = axum ] && name="axum::serve"
        awk -v n="$name" -v cm="$cm" -v cl="$cl" -v ch="$ch" -v sm="$sm" -v sl="$sl" -v sh="$sh" \
            'BEGIN { printf "| %s | %.3f (%.3f to %.3f) | %.3f (%.3f to %.3f) |\n", n, cm, cl, ch, sm, sl, sh }'
    done
} >"$OUT/last.md"
cat "$OUT/last.md"

echo "== force-close lateness"
timeout 300 "$BENCH" force --in-flight 100,1000 --stop-timeout 200ms --reps "$FORCE_REPS" 2>"$OUT/force.log" | tee "$OUT/force.tsv"
summarize 2,3 4 "$OUT/force.tsv" >"$OUT/force.return.sum"
summarize 2,3 5 "$OUT/force.tsv" >"$OUT/force.closed.sum"
{
    echo "| server | requests in flight | stop deadline -> serve returned, ms | stop deadline -> every client saw its close, ms |"
    echo "|---|---|---|---|"
    for k in httpdown axum+layer; do
        for n in 100 1000; do
            IFS=$'\t' read -r _ _ rm rl rh _ < <(row "$OUT/force.return.sum" "$k"$'\t'"$n" 2)
            IFS=$'\t' read -r _ _ cm cl ch _ < <(row "$OUT/force.closed.sum" "$k"$'\t'"$n" 2)
            name=$k; [ "$k" = axum+layer ] && name="axum::serve + layer"
            awk -v n="$name" -v c="$n" -v rm="$rm" -v rl="$rl" -v rh="$rh" -v cm="$cm" -v cl="$cl" -v ch="$ch" \
                'BEGIN { printf "| %s | %\047d | %.2f (%.2f-%.2f) | %.2f (%.2f-%.2f) |\n", n, c, rm, rl, rh, cm, cl, ch }'
        done
    done
} >"$OUT/force.md"
cat "$OUT/force.md"

echo "== memory per idle connection (a fresh process per measurement)"
: >"$OUT/mem.tsv"
for rep in $(seq 1 "$MEM_REPS"); do
    kinds=(httpdown axum)
    [ $((rep % 2)) = 0 ] && kinds=(axum httpdown)
    for k in "${kinds[@]}"; do
        timeout 300 "$BENCH" memory --server "$k" --conns 10000 2>>"$OUT/mem.log" | tee -a "$OUT/mem.tsv"
    done
done
summarize 2 6 "$OUT/mem.tsv" >"$OUT/mem.sum"
{
    echo "| server | RSS per idle connection, bytes, median (min-max) | ratio to axum::serve |"
    echo "|---|---|---|"
    am=$(field "$OUT/mem.sum" axum 1 1)
    for k in httpdown axum; do
        IFS=$'\t' read -r _ m lo hi _ < <(row "$OUT/mem.sum" "$k" 1)
        name=$k; [ "$k" = axum ] && name="axum::serve"
        awk -v n="$name" -v m="$m" -v lo="$lo" -v hi="$hi" -v a="$am" \
            'BEGIN { printf "| %s | %.0f (%.0f-%.0f) | %.3f |\n", n, m, lo, hi, m / a }'
    done
} >"$OUT/mem.md"
cat "$OUT/mem.md"

echo "== load"
bash benches/load.sh

echo "== instructions per request, servers"
bash benches/instructions.sh

echo "== restarts"
REPS=$RESTART_REPS bash benches/restart.sh

echo "== plot"
gnuplot <<GNUPLOT
set terminal svg size 720,440 dynamic font "sans,13" background rgb "white"
set output "$OUT/shutdown-idle.svg"
set title "Shutdown with idle keep-alive connections (median, min-max bars)"
set xlabel "idle keep-alive connections"
set ylabel "trigger -> serve returned (ms)"
set logscale xy
set xrange [70:14000]
set xtics ("100" 100, "1,000" 1000, "10,000" 10000)
set grid
set key top left
plot "$OUT/idle.dat" using 1:2:3:4 with yerrorlines lw 2 pt 7 title "httpdown::serve", \
     "$OUT/idle.dat" using 1:5:6:7 with yerrorlines lw 2 pt 5 title "axum::serve + with_graceful_shutdown", \
     100 with lines dt 2 lc rgb "gray40" title "target at 10,000: 100 ms"
GNUPLOT

echo "== targets"
h1=$(awk -F'|' '/httpdown \/ axum/ {print $3; exit}' "$OUT/load.md" | tr -d ' ')
h2=$(awk -F'|' '/httpdown \/ axum/ {n++; if (n == 2) print $3}' "$OUT/load.md" | tr -d ' ')
l1=$(awk -F'|' '/axum-layer \/ axum/ {print $3; exit}' "$OUT/load.md" | tr -d ' ')
l2=$(awk -F'|' '/axum-layer \/ axum/ {n++; if (n == 2) print $3}' "$OUT/load.md" | tr -d ' ')
idle10k=$(field "$OUT/idle.sum" $'httpdown\t10000' 2 1)
idle10ka=$(field "$OUT/idle.sum" $'axum\t10000' 2 1)
lastc=$(field "$OUT/last.client.sum" httpdown 1 1)
lasth=$(field "$OUT/last.handler.sum" httpdown 1 1)
forcer=$(field "$OUT/force.return.sum" $'httpdown\t1000' 2 1)
forcec=$(field "$OUT/force.closed.sum" $'httpdown\t1000' 2 1)
memr=$(awk -F'\t' '$1 == "httpdown" {h = $2} $1 == "axum" {a = $2} END {printf "%.3f", h / a}' "$OUT/mem.sum")
graceful=$(field "$OUT/layer.sum" graceful 1 1)
verdict() { awk "BEGIN { print ($1) ? \"met\" : \"**missed**\" }"; }
{
    echo "| target (SPEC section 5) | measured here | |"
    echo "|---|---|---|"
    echo "| the layer alone under \`axum::serve\` >= 0.98 x without it | HTTP/1.1 ratio $l1, HTTP/2 ratio $l2 | $(verdict "$l1 >= 0.98 && $l2 >= 0.98") |"
    echo "| criterion: the layer per request <= 1.5 x \`InFlightRequests\` | $(printf '%.0f' "$graceful") ns vs $(printf '%.0f' "$ifr") ns ($(printf '%.0f' "$bare") ns bare): $(awk -v g="$graceful" -v f="$ifr" 'BEGIN { printf "%.2f", g / f }') x | $(verdict "$graceful <= 1.5 * $ifr") |"
    echo "| \`serve\` throughput >= 0.98 x \`axum::serve\` | HTTP/1.1 ratio $h1, HTTP/2 ratio $h2 (instructions per request: $(awk -F'|' '/HTTP\/1.1/ {print $6}' "$OUT/instructions.md" | tr -d ' ') and $(awk -F'|' '/HTTP\/2/ {print $6}' "$OUT/instructions.md" | tr -d ' ') x) | $(verdict "$h1 >= 0.98 && $h2 >= 0.98") |"
    echo "| exit within 5 ms of the last response ending | $(printf '%.3f' "$lastc") ms after the client read it ($(printf '%.3f' "$lasth") ms after the handler returned) | $(verdict "$lastc < 5 && $lasth < 5") |"
    echo "| shutdown with 10,000 idle keep-alive connections under 100 ms and no slower than \`axum::serve\` | $(printf '%.1f' "$idle10k") ms (\`axum::serve\` $(printf '%.1f' "$idle10ka") ms) | $(verdict "$idle10k < 100 && $idle10k <= $idle10ka") |"
    echo "| \`serve\` returns within 5 ms of the stop deadline, 1,000 requests in flight | serve returned $(printf '%.1f' "$forcer") ms after it, every client closed $(printf '%.1f' "$forcec") ms after it | $(verdict "$forcer < 5") |"
    echo "| memory per idle connection <= axum::serve's + 10% | ratio $memr | $(verdict "$memr <= 1.10") |"
} >"$OUT/targets.md"
cat "$OUT/targets.md"

bash benches/assemble.sh
rm -f "$OUT"/*.sum
