#!/usr/bin/env bash
# Load benchmark: the same hello-world axum Router served by `httpdown::serve` (with the
# layer), by `axum::serve` with TCP_NODELAY, and by that `axum::serve` with the layer
# (examples/bench_server.rs), alternated in one run, over HTTP/1.1 keep-alive (wrk) and
# HTTP/2 h2c with prior knowledge (h2load).
#
#   bash benches/load.sh            # 5 rounds x 10 s per server and protocol (~6 min)
#   ROUNDS=3 DURATION=5 bash benches/load.sh
#
# Writes $OUT/load.tsv (one line per run) and $OUT/load.md (tables), OUT defaulting to
# benches/results. Only 127.0.0.1 is used. Every step is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNS=${WRK_CONNS:-64}
H2_CONNS=${H2_CONNS:-16}
H2_STREAMS=${H2_STREAMS:-32}
OUT=${OUT:-benches/results}
TARGET=${CARGO_TARGET_DIR:-target}
mkdir -p "$OUT"
TMP=$(mktemp -d)

need() { # command package
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}
need wrk wrk
need h2load nghttp2-client

cargo build --release --quiet --example bench_server
SERVER="$TARGET/release/examples/bench_server"

KINDS=(httpdown axum axum-layer)
declare -A ADDR PID
cleanup() {
    for k in "${KINDS[@]}"; do
        if [ -n "${PID[$k]:-}" ]; then kill "${PID[$k]}" 2>/dev/null || true; fi
    done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

for k in "${KINDS[@]}"; do
    "$SERVER" --server "$k" --addr 127.0.0.1:0 >"$TMP/$k.addr" 2>"$TMP/$k.log" &
    PID[$k]=$!
    for _ in $(seq 100); do [ -s "$TMP/$k.addr" ] && break; sleep 0.1; done
    ADDR[$k]=$(head -1 "$TMP/$k.addr")
    [ -n "${ADDR[$k]}" ] || { echo "server $k did not start" >&2; exit 1; }
    # Warm up both protocols.
    timeout 30 wrk -t1 -c8 -d1s "http://${ADDR[$k]}/" >/dev/null
    timeout 30 h2load -c2 -m8 -n 20000 "http://${ADDR[$k]}/" >/dev/null
done

# wrk prints latencies as 123.45us / 1.23ms / 1.02s: convert to ms.
to_ms() { awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); v/=1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v) } else if (v ~ /s$/) { sub(/s$/,"",v); v*=1000 }; printf "%.3f", v }'; }

run_h1() { # kind round
    local f="$TMP/wrk.txt"
    timeout $((DURATION + 30)) wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${DURATION}s" --latency \
        "http://${ADDR[$1]}/" >"$f"
    local rps p50 p90 p99 errors
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$f")
    p50=$(awk '$1=="50%" {print $2}' "$f" | to_ms)
    p90=$(awk '$1=="90%" {print $2}' "$f" | to_ms)
    p99=$(awk '$1=="99%" {print $2}' "$f" | to_ms)
    errors=$(awk '/Non-2xx|Socket errors/ {e=1} END {print e+0}' "$f")
    printf 'http1\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$rps" "$p50" "$p90" "$p99" "$errors"
}

run_h2() { # kind round
    local f="$TMP/h2load.txt" log="$TMP/h2load.log"
    rm -f "$log"
    timeout $((DURATION + 30)) h2load -c"$H2_CONNS" -m"$H2_STREAMS" -D "$DURATION" --warm-up-time=1 \
        --log-file="$log" "http://${ADDR[$1]}/" >"$f"
    local rps failed lat
    rps=$(awk '/^finished in/ {gsub(",",""); print $4}' "$f")
    failed=$(awk '/^requests:/ {print $10 + $12 + $14}' "$f")
    # Per-request durations (µs) are the third column of the log.
    lat=$(cut -f3 "$log" | sort -n | awk '{ v[NR]=$1 } END {
        printf "%.3f\t%.3f\t%.3f", v[int(NR*0.50)]/1000, v[int(NR*0.90)]/1000, v[int(NR*0.99)]/1000 }')
    printf 'http2\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$rps" "$lat" "$failed"
}

TSV="$OUT/load.tsv"
printf 'proto\tserver\tround\trps\tp50_ms\tp90_ms\tp99_ms\terrors\n' >"$TSV"
for round in $(seq 1 "$ROUNDS"); do
    # Rotate the order every round so no server always runs first.
    order=()
    for i in 0 1 2; do order+=("${KINDS[$(((i + round) % 3))]}"); done
    for proto in http1 http2; do
        for k in "${order[@]}"; do
            if [ "$proto" = http1 ]; then run_h1 "$k" "$round"; else run_h2 "$k" "$round"; fi | tee -a "$TSV"
        done
    done
done

# Tables: medians (min-max) per server, and the per-round ratios to axum.
awk -F'\t' '
function median(arr, n,   i, j, t) {
    for (i = 2; i <= n; i++) { t = arr[i]; for (j = i - 1; j >= 1 && arr[j] > t; j--) arr[j + 1] = arr[j]; arr[j + 1] = t }
    return (n % 2) ? arr[(n + 1) / 2] : (arr[n / 2] + arr[n / 2 + 1]) / 2
}
function stats(key, fmt,   n, i, a, lo, hi) {
    n = cnt[key]; lo = hi = val[key, 1]
    for (i = 1; i <= n; i++) { a[i] = val[key, i]; if (a[i] < lo) lo = a[i]; if (a[i] > hi) hi = a[i] }
    return sprintf(fmt " (" fmt "-" fmt ")", median(a, n), lo, hi)
}
function add(key, v) { val[key, ++cnt[key]] = v }
NR > 1 {
    p = $1; s = $2; r = $3
    add(p SUBSEP s SUBSEP "rps", $4); add(p SUBSEP s SUBSEP "p50", $5)
    add(p SUBSEP s SUBSEP "p90", $6); add(p SUBSEP s SUBSEP "p99", $7)
    err[p, s] += $8; rps[p, s, r] = $4; rounds[r] = 1
}
END {
    split("http1 http2", protos, " "); split("httpdown axum axum-layer", servers, " ")
    name["http1"] = "HTTP/1.1 keep-alive (wrk)"; name["http2"] = "HTTP/2 h2c (h2load)"
    for (pi = 1; pi <= 2; pi++) {
        p = protos[pi]
        printf "#### %s\n\n", name[p]
        print "| server | requests/s | p50 ms | p90 ms | p99 ms | errors |"
        print "|---|---|---|---|---|---|"
        for (si = 1; si <= 3; si++) {
            s = servers[si]
            printf "| %s | %s | %s | %s | %s | %d |\n", s, stats(p SUBSEP s SUBSEP "rps", "%.0f"),
                stats(p SUBSEP s SUBSEP "p50", "%.3f"), stats(p SUBSEP s SUBSEP "p90", "%.3f"),
                stats(p SUBSEP s SUBSEP "p99", "%.3f"), err[p, s]
        }
        print ""
        print "| ratio of requests/s, per round | median | min | max | target |"
        print "|---|---|---|---|---|"
        for (si = 1; si <= 3; si += 2) {
            s = servers[si]; n = 0; lo = 1e9; hi = 0
            for (r in rounds) if ((p, s, r) in rps && (p, "axum", r) in rps) {
                x = rps[p, s, r] / rps[p, "axum", r]; a[++n] = x; if (x < lo) lo = x; if (x > hi) hi = x
            }
            m = median(a, n)
            if (s == "httpdown") { t = ">= 0.98"; ok = (m >= 0.98) ? "met" : "missed" }
            else { t = "> 0.98 (layer adds < 2%)"; ok = (m > 0.98) ? "met" : "missed" }
            printf "| %s / axum | %.3f | %.3f | %.3f | %s: %s |\n", s, m, lo, hi, t, ok
            delete a
        }
        print ""
    }
}' "$TSV" >"$OUT/load.md"
cat "$OUT/load.md"
