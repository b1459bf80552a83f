#!/usr/bin/env bash
# Instructions per request of each bench server (examples/bench_server.rs), counted by
# valgrind's callgrind: repeatable whatever else the machine does, so it sits beside the
# noisier requests/s of benches/load.sh. Each server runs under callgrind twice, for N1 and
# N2 requests (h2load, HTTP/1.1 keep-alive with --h1, and h2c); the difference divided by
# N2 - N1 is the cost of one request, start-up and shutdown cancelled out.
#
#   bash benches/instructions.sh        # writes $OUT/instructions.tsv and .md
#
# Needs valgrind and h2load (installed with apt-get if missing). 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-benches/results}
TARGET=${CARGO_TARGET_DIR:-target}
N1=${N1:-2000}
N2=${N2:-12000}
mkdir -p "$OUT"
TMP=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$TMP"' EXIT

need() { # command package
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}
need valgrind valgrind
need h2load nghttp2-client
cargo build --release --quiet --example bench_server
SERVER="$TARGET/release/examples/bench_server"

# Total instructions of one server run serving `n` requests over `proto`.
count() { # server proto n
    local out="$TMP/cg.out" addr pid
    rm -f "$out" "$TMP/addr"
    valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$SERVER" --server "$1" --addr 127.0.0.1:0 --workers 1 >"$TMP/addr" 2>"$TMP/vg.log" &
    pid=$!
    for _ in $(seq 300); do [ -s "$TMP/addr" ] && break; sleep 0.1; done
    addr=$(head -1 "$TMP/addr")
    [ -n "$addr" ] || { echo "server $1 did not start" >&2; cat "$TMP/vg.log" >&2; exit 1; }
    local flags=()
    [ "$2" = http1 ] && flags=(--h1)
    timeout 300 h2load "${flags[@]}" -c4 -m1 -n "$3" "http://$addr/" >"$TMP/h2load.txt"
    grep -q "succeeded, 0 failed" "$TMP/h2load.txt" || grep "requests:" "$TMP/h2load.txt" >&2
    # The wrapper script's pid is not the tool's: signal the tool itself.
    pkill -INT -f -- "--callgrind-out-file=$out" || true
    wait "$pid" 2>/dev/null || true
    awk '/^summary:/ { print $2 }' "$out"
}

TSV="$OUT/instructions.tsv"
printf 'proto\tserver\tinstructions_per_request\n' >"$TSV"
for proto in http1 http2; do
    for server in httpdown axum axum-layer; do
        a=$(count "$server" "$proto" "$N1")
        b=$(count "$server" "$proto" "$N2")
        per=$(( (b - a) / (N2 - N1) ))
        printf '%s\t%s\t%s\n' "$proto" "$server" "$per" | tee -a "$TSV"
    done
done

awk -F'\t' 'NR > 1 { v[$1, $2] = $3 }
END {
    print "| instructions per request (callgrind) | httpdown::serve | axum::serve | axum::serve + layer | serve / axum | layer / axum |"
    print "|---|---|---|---|---|---|"
    split("http1 http2", p, " ")
    for (i = 1; i <= 2; i++) {
        h = v[p[i], "httpdown"]; a = v[p[i], "axum"]; l = v[p[i], "axum-layer"]
        printf "| %s | %d | %d | %d | %.3f | %.3f |\n", (p[i] == "http1" ? "HTTP/1.1" : "HTTP/2"), h, a, l, h / a, l / a
    }
}' "$TSV" >"$OUT/instructions.md"
cat "$OUT/instructions.md"
