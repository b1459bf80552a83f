#!/usr/bin/env bash
# Production topologies (SPEC section 8): rolling restarts of two demo instances behind a
# real proxy, under GET and POST load (wrk with .ci/topologies/post-get.lua: every other
# request a POST with a 1 KiB body, which no proxy may retry once sent).
#
#   1. HAProxy (B60), .ci/topologies/haproxy.cfg.in: active checks on the readiness route
#      every 200 ms, keep-alive to the instances (`http-reuse always`), only failed
#      connects re-sent. Each instance is restarted in turn HAPROXY_ROUNDS times (SIGTERM,
#      wait for its exit, start it on the same port, wait until HAProxy has it up again).
#      With a drain delay (1 s) longer than HAProxy's detection time (one failed check,
#      200 ms apart), asserted: 0 non-2xx and 0 socket errors at wrk, every instance exits
#      0 with "shutdown drained". Then the same without the drain delay, reported only:
#      the instance closes its idle connections while HAProxy has not yet seen it go.
#
# Run from the repository root (installs wrk, haproxy and curl if missing):
#
#   bash .ci/topologies.sh
#
# Knobs (environment): HAPROXY_ROUNDS (10), KEEP_WORK (1: keep the logs). Everything
# listens on 127.0.0.1 on ports free at run time, lives in one mktemp -d directory, is
# killed on exit, and is bounded in time (about two minutes on 2 cores, once the demo is
# built).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"

HAPROXY_ROUNDS=${HAPROXY_ROUNDS:-10}
SUITE=topologies
START=$SECONDS

# shellcheck source=reliability/lib.sh
. .ci/reliability/lib.sh

step "tools"
need wrk:wrk haproxy:haproxy curl:curl
log "$(haproxy -v 2>&1 | head -1); $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"

build_demo

FAILURES=()

# wrk_figures FILE: sets W_REQUESTS, W_NON2XX, W_SOCKERR and W_PARTS from wrk's summary.
wrk_figures() {
    local out
    out=$(cat "$1")
    W_REQUESTS=$(field "$out" '^ *\([0-9]*\) requests in .*')
    # wrk prints these two lines only when the counts are not zero.
    W_NON2XX=$(field "$out" '^ *Non-2xx or 3xx responses: \([0-9]*\).*')
    local connect read write timeout
    connect=$(field "$out" '^ *Socket errors: connect \([0-9]*\),.*')
    read=$(field "$out" '^ *Socket errors: .*read \([0-9]*\),.*')
    write=$(field "$out" '^ *Socket errors: .*write \([0-9]*\),.*')
    timeout=$(field "$out" '^ *Socket errors: .*timeout \([0-9]*\).*')
    W_SOCKERR=$((connect + read + write + timeout))
    W_PARTS="connect $connect, read $read, write $write, timeout $timeout"
}

# --- 1. HAProxy ---------------------------------------------------------------------------

# haproxy_run DELAY ROUNDS: two instances with --drain-delay DELAY behind HAProxy, wrk's
# POST and GET load through it, each instance restarted ROUNDS times. Sets the W_ figures,
# H_RESTARTS, H_PROBLEMS (exit statuses, reports, readiness, tools).
haproxy_run() {
    local delay=$1 rounds=$2 dir="$WORK/haproxy-$1" name pid port rc report i
    mkdir -p "$dir"
    H_PROBLEMS=()
    start_demo "hap$delay-a" 0 --drain-delay "$delay"
    local pid_a=$DEMO_PID port_a=$DEMO_PORT
    start_demo "hap$delay-b" 0 --drain-delay "$delay"
    local pid_b=$DEMO_PID port_b=$DEMO_PORT

    local hport= hpid= attempt
    for attempt in 1 2 3 4 5; do
        hport=$(free_port)
        sed -e "s#@PORT@#$hport#g" -e "s#@A@#$port_a#g" -e "s#@B@#$port_b#g" \
            .ci/topologies/haproxy.cfg.in >"$dir/haproxy.cfg"
        haproxy -db -f "$dir/haproxy.cfg" >"$dir/haproxy.log" 2>&1 &
        hpid=$!
        PIDS+=("$hpid")
        for i in $(seq 50); do
            curl -fsS -o /dev/null "http://127.0.0.1:$hport/?duration=0s" 2>/dev/null && break
            kill -0 "$hpid" 2>/dev/null || break
            sleep 0.1
        done
        if curl -fsS -o /dev/null "http://127.0.0.1:$hport/?duration=0s" 2>/dev/null; then break; fi
        kill -TERM "$hpid" 2>/dev/null || true
        wait_exit "$hpid" 5
        hpid=
    done
    [ -n "$hpid" ] || { KEEP_WORK=1; tail -5 "$dir/haproxy.log" >&2; die "haproxy did not start"; }

    wrk -t2 -c32 -d300s --timeout 5s -s .ci/topologies/post-get.lua \
        "http://127.0.0.1:$hport/" >"$dir/wrk.out" 2>&1 &
    local wrk_pid=$!
    PIDS+=("$wrk_pid")
    sleep 1

    H_RESTARTS=0
    for i in $(seq "$rounds"); do
        for name in a b; do
            if [ $name = a ]; then pid=$pid_a port=$port_a; else pid=$pid_b port=$port_b; fi
            : >"$WORK/hap$delay-$name.err"
            kill -TERM "$pid" || true
            wait_exit "$pid" 20
            rc=$RC
            report=$(grep -m1 '^shutdown ' "$WORK/hap$delay-$name.err" || true)
            [ "$rc" = 0 ] || H_PROBLEMS+=("instance $name exit status $rc after SIGTERM")
            case $report in
            "shutdown drained "*) ;;
            *) H_PROBLEMS+=("instance $name report: ${report:-none}") ;;
            esac
            start_demo "hap$delay-$name" "$port" --drain-delay "$delay"
            if [ $name = a ]; then pid_a=$DEMO_PID; else pid_b=$DEMO_PID; fi
            local ready=
            for _ in $(seq 100); do
                if curl -fsS -o /dev/null "http://127.0.0.1:$port/healthz" 2>/dev/null; then
                    ready=1
                    break
                fi
                sleep 0.1
            done
            [ -n "$ready" ] || H_PROBLEMS+=("instance $name not ready after restart")
            H_RESTARTS=$((H_RESTARTS + 1))
            printf '  restart %2d: instance %s (port %s), exit %s, %s\n' \
                "$H_RESTARTS" "$name" "$port" "$rc" "${report:-no report}"
            # HAProxy marks it up after one good check (200 ms apart): then the next.
            sleep 0.6
        done
    done
    sleep 1
    kill -INT "$wrk_pid" 2>/dev/null || H_PROBLEMS+=("wrk had already exited")
    wait_exit "$wrk_pid" 15
    if [ "$RC" = timeout ]; then
        H_PROBLEMS+=("wrk did not stop")
        kill -KILL "$wrk_pid" 2>/dev/null || true
    fi
    kill -TERM "$hpid" 2>/dev/null || H_PROBLEMS+=("haproxy had already exited")
    wait_exit "$hpid" 10
    kill -TERM "$pid_a" "$pid_b" 2>/dev/null || true
    wait_exit "$pid_a" 15
    wait_exit "$pid_b" 15

    sed 's/^/  wrk: /' "$dir/wrk.out"
    grep -q ' requests in ' "$dir/wrk.out" || H_PROBLEMS+=("no wrk summary")
    wrk_figures "$dir/wrk.out"
    [ "$W_REQUESTS" -gt 0 ] || H_PROBLEMS+=("no requests completed")
}

step "HAProxy rolling restart, drain delay 1 s: $HAPROXY_ROUNDS rounds of 2 instances"
haproxy_run 1s "$HAPROXY_ROUNDS"
hap_requests=$W_REQUESTS hap_non2xx=$W_NON2XX hap_sockerr=$W_SOCKERR hap_parts=$W_PARTS
hap_restarts=$H_RESTARTS
log "drain delay 1 s: $H_RESTARTS restarts, $W_REQUESTS requests (half POSTs), $W_NON2XX non-2xx, $W_SOCKERR socket errors ($W_PARTS)"
problems=("${H_PROBLEMS[@]}")
[ "$W_NON2XX" = 0 ] || problems+=("$W_NON2XX non-2xx responses at wrk")
[ "$W_SOCKERR" = 0 ] || problems+=("$W_SOCKERR socket errors at wrk ($W_PARTS)")
if [ ${#problems[@]} -gt 0 ]; then
    KEEP_WORK=1
    printf '  FAIL: %s\n' "${problems[@]}"
    for p in "${problems[@]}"; do FAILURES+=("HAProxy rolling restart: $p"); done
fi

step "HAProxy rolling restart, no drain delay (reported only): $HAPROXY_ROUNDS rounds of 2 instances"
haproxy_run 0s "$HAPROXY_ROUNDS"
hap0_requests=$W_REQUESTS hap0_non2xx=$W_NON2XX hap0_sockerr=$W_SOCKERR hap0_parts=$W_PARTS
log "no drain delay: $H_RESTARTS restarts, $W_REQUESTS requests, $W_NON2XX non-2xx, $W_SOCKERR socket errors ($W_PARTS)"
# Exit statuses, reports and readiness are still checked.
if [ ${#H_PROBLEMS[@]} -gt 0 ]; then
    KEEP_WORK=1
    printf '  FAIL: %s\n' "${H_PROBLEMS[@]}"
    for p in "${H_PROBLEMS[@]}"; do FAILURES+=("HAProxy rolling restart without drain delay: $p"); done
fi

# --- summary -------------------------------------------------------------------------------

step "summary"
log "HAProxy rolling restart, POST and GET: $hap_restarts restarts; drain delay 1 s: $hap_requests requests, $hap_non2xx non-2xx, $hap_sockerr socket errors ($hap_parts); no drain delay: $hap0_requests requests, $hap0_non2xx non-2xx, $hap0_sockerr socket errors ($hap0_parts)"
log "time: $((SECONDS - START)) s"
if [ ${#FAILURES[@]} -gt 0 ]; then
    printf 'topologies: FAILED:\n' >&2
    printf '  %s\n' "${FAILURES[@]}" >&2
    exit 1
fi
log "topologies: all assertions passed"
