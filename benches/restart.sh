#!/usr/bin/env bash
# Restart benchmark: what a client sees while a server is restarted 20 times, one
# restart every 0.5 s, with the same client (wrk) against three ways of restarting:
#
# - axum-stop-start: `axum::serve` with `with_graceful_shutdown` (examples/bench_server.rs)
#   gets SIGTERM, drains and exits, then a new one is started on the same address (what
#   a plain service manager does);
# - stop-start: the same with the demo (examples/httpdown_example.rs), whose listener
#   stops answering handshakes at drain start (B55) so that a connect waits for its SYN
#   to be sent again instead of being refused;
# - ecdysis: examples/ecdysis_peer.rs, a hyper server that upgrades itself on SIGHUP with
#   the `ecdysis` crate and drains with hyper-util's `GracefulShutdown`;
# - httpdown: the demo upgraded in place with SIGHUP (`restart::Upgrader`).
#
# Each runs with a new connection per request (`Connection: close`) and with keep-alive
# connections, and the two self-upgrading servers also with a 1 s start-up
# (`--startup-delay 1s`: the new process sleeps between taking the sockets and reporting
# ready). A restart is one signal, then a wait until the new process prints its
# `serving on` line, then 0.5 s.
#
#   bash benches/restart.sh            # 3 repetitions (~10 min)
#   REPS=1 bash benches/restart.sh
#
# Writes $OUT/restart.tsv (one line per run) and $OUT/restart.md (the table), OUT
# defaulting to benches/results. Only 127.0.0.1 is used; every step is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-3}
RESTARTS=${RESTARTS:-20}
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNS=${WRK_CONNS:-32}
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
need python3 python3

cargo build --release --quiet --features restart --example httpdown_example --example ecdysis_peer \
    --example bench_server
DEMO="$TARGET/release/examples/httpdown_example"
PEER="$TARGET/release/examples/ecdysis_peer"
AXUM="$TARGET/release/examples/bench_server"

cleanup() {
    pkill -KILL -f "$TMP/" 2>/dev/null || true
    pkill -KILL -P $$ wrk 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The pid on the last `serving on` line of FILE.
serving_pid() { awk '/^serving on / { p = $NF } END { print p }' "$1"; }

# Waits (at most 20 s) until FILE's last `serving on` line names a pid other than OLD.
wait_new_pid() { # file old
    local i
    for i in $(seq 1 400); do
        local pid
        pid=$(serving_pid "$1")
        if [ -n "$pid" ] && [ "$pid" != "$2" ]; then
            echo "$pid"
            return 0
        fi
        sleep 0.05
    done
    echo "no new process after 20 s" >&2
    return 1
}

# Waits (at most 20 s) until FILE has at least N lines.
wait_lines() { # file n
    local i
    for i in $(seq 1 400); do
        [ "$(wc -l <"$1")" -ge "$2" ] && return 0
        sleep 0.05
    done
    echo "no new process after 20 s" >&2
    return 1
}

gone() { [ ! -e "/proc/$1" ] || grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }

# Milliseconds in one of wrk's durations (`812.00us`, `1.20ms`, `1.01s`).
# One run: prints "server<TAB>startup<TAB>clients<TAB>rep<TAB>requests<TAB>connect<TAB>
# read<TAB>write<TAB>timeout<TAB>non2xx<TAB>generations<TAB>p99 ms<TAB>max ms<TAB>requests/s".
run() { # server startup clients rep
    local server=$1 startup=$2 clients=$3 rep=$4
    local port log="$TMP/$server.$startup.$clients.$rep"
    port=$(free_port)
    local addr="127.0.0.1:$port"
    # The copies live under $TMP so that cleanup can find every generation by path.
    local cmd
    case $server in
        ecdysis) cp "$PEER" "$TMP/peer"; cmd=("$TMP/peer" --addr "$addr" --startup-delay "$startup") ;;
        axum-stop-start) cp "$AXUM" "$TMP/axum"; cmd=("$TMP/axum" --server axum --addr "$addr") ;;
        *) cp "$DEMO" "$TMP/demo"; cmd=("$TMP/demo" --addr "$addr" --startup-delay "$startup") ;;
    esac
    : >"$log.out"
    "${cmd[@]}" >"$log.out" 2>"$log.err" &
    local pid=$!
    wait_lines "$log.out" 1
    local headers=()
    [ "$clients" = new ] && headers=(-H "Connection: close")
    wrk -t "$WRK_THREADS" -c "$WRK_CONNS" -d 300s --latency "${headers[@]}" \
        "http://$addr/?duration=0s" >"$log.wrk" 2>&1 &
    local wrk_pid=$!
    sleep 1
    local pids=("$pid") i
    for i in $(seq 1 "$RESTARTS"); do
        case $server in
            *stop-start)
                kill -TERM "$pid"
                local j
                for j in $(seq 1 400); do gone "$pid" && break; sleep 0.05; done
                "${cmd[@]}" >>"$log.out" 2>>"$log.err" &
                pid=$!
                wait_lines "$log.out" $((i + 1))
                ;;
            *)
                kill -HUP "$pid"
                pid=$(wait_new_pid "$log.out" "$pid")
                ;;
        esac
        pids+=("$pid")
        sleep 0.5
    done
    sleep 0.5
    kill -INT "$wrk_pid"
    wait "$wrk_pid" || true
    kill -TERM "$pid"
    for i in $(seq 1 400); do
        local left=0 p
        for p in "${pids[@]}"; do gone "$p" || left=1; done
        [ "$left" = 0 ] && break
        sleep 0.05
    done
    local p
    for p in "${pids[@]}"; do
        gone "$p" || { echo "pid $p of $server still runs" >&2; kill -KILL "$p"; }
    done
    wait 2>/dev/null || true
    awk -v s="$server" -v st="$startup" -v c="$clients" -v r="$rep" -v g="${#pids[@]}" '
        function ms(d) {
            if (d ~ /us$/) return d / 1000
            if (d ~ /ms$/) return d + 0
            if (d ~ /m$/) return d * 60000
            return d * 1000
        }
        / requests in / { req = $1 }
        /Socket errors:/ { gsub(",", ""); conn = $4; rd = $6; wr = $8; to = $10 }
        /Non-2xx or 3xx responses:/ { non2 = $NF }
        /^ +Latency +[0-9]/ { max = ms($4) }
        /^ +99% / { p99 = ms($2) }
        /^Requests\/sec:/ { rps = $2 }
        END { printf "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%.1f\t%.1f\t%d\n", s, st, c, r, req, conn, rd, wr, to, non2, g, p99, max, rps }
    ' "$log.wrk"
}

: >"$OUT/restart.tsv"
for rep in $(seq 1 "$REPS"); do
    for clients in new keep-alive; do
        for server in axum-stop-start stop-start ecdysis httpdown; do
            run "$server" 0s "$clients" "$rep" | tee -a "$OUT/restart.tsv"
        done
        for server in ecdysis httpdown; do
            run "$server" 1s "$clients" "$rep" | tee -a "$OUT/restart.tsv"
        done
    done
done

# Per server, start-up and clients: the median of each column and its range over the reps.
{
    echo "| server, restarted by | start-up | clients | requests | errors: connect | read | write | timeout | non-2xx | processes | latency p99, ms | max, ms | requests/s |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    awk -F'\t' '
        function cell(key, col,   m, i, j, t, a, med) {
            m = n[key]
            for (i = 1; i <= m; i++) a[i] = v[key, i, col] + 0
            for (i = 2; i <= m; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
            med = (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
            if (col == 12 || col == 13) return (a[1] == a[m]) ? sprintf("%.1f", med) : sprintf("%.1f (%.1f-%.1f)", med, a[1], a[m])
            return (a[1] == a[m]) ? sprintf("%d", med) : sprintf("%d (%d-%d)", med, a[1], a[m])
        }
        {
            key = $1 "\t" $2 "\t" $3
            if (!(key in n)) order[++nk] = key
            n[key]++
            for (c = 5; c <= 14; c++) v[key, n[key], c] = $c
        }
        END {
            for (o = 1; o <= nk; o++) {
                split(order[o], k, "\t")
                name = k[1] == "axum-stop-start" ? "`axum::serve`, SIGTERM then a new start" : k[1] == "stop-start" ? "the demo, SIGTERM then a new start" : k[1] == "ecdysis" ? "`ecdysis` 1.1 + hyper-util `GracefulShutdown`, SIGHUP" : "httpdown `restart::Upgrader`, SIGHUP"
                clients = k[3] == "new" ? "a new connection per request" : "keep-alive"
                printf "| %s | %s | %s |", name, k[2], clients
                for (c = 5; c <= 14; c++) printf " %s |", cell(order[o], c)
                printf "\n"
            }
        }' "$OUT/restart.tsv"
} >"$OUT/restart.md"
cat "$OUT/restart.md"
