#!/usr/bin/env bash
# Production topologies (SPEC section 8): rolling restarts of two demo instances behind a
# real proxy, under GET and POST load (wrk with .ci/topologies/post-get.lua: every other
# request a POST with a 1 KiB body, which no proxy may re-send once sent). Each instance is
# restarted in turn ROUNDS times: SIGTERM, wait for its exit, start it on the same port,
# wait until it is ready and the proxy can have seen it.
#
#   1. HAProxy (B60), .ci/topologies/haproxy.conf.in: active checks on the readiness route
#      every 200 ms, keep-alive to the instances (`http-reuse always`), only failed
#      connects re-sent. With a drain delay (1 s) longer than HAProxy's detection time
#      (one failed check), asserted: 0 non-2xx and 0 socket errors at wrk. Then without the
#      drain delay, reported only: the instance closes idle connections HAProxy is about
#      to use.
#      The same over HTTP/2 (h2c) to the instances (`proto h2`, B62), and with a PROXY
#      protocol v2 header on each connection to them (`send-proxy-v2`, the demo's
#      `--proxy-protocol`, B66), with the drain delay, asserted the same way.
#   2. nginx (B61), .ci/topologies/nginx.conf.in: no active checks, keep-alive to the
#      instances with `keepalive_timeout 4s`, only errors sent to the other instance (never
#      a POST already sent). With the instances keeping each idle connection through their
#      drain until it carries one more request or 6 s pass (`--idle-close
#      after-next-request=6s`, longer than nginx keeps an idle connection), asserted: 0
#      non-2xx and 0 socket errors. Then with the final stop's default
#      (`IdleClose::Immediately`), reported only: POSTs sent on connections the instance
#      closed at drain start come back as 502.
#   3. Caddy (B61), .ci/topologies/caddy.conf.in: active checks every 200 ms, keep-alive to
#      the instances, failed connects tried on the other instance, request buffering (a
#      Caddy 2.6.2 bug otherwise cuts streamed responses to POSTs). With a 1 s drain
#      delay, asserted: 0 non-2xx and 0 socket errors.
#   4. Endpoint lag (B63), .ci/topologies/lagproxy.py: a TCP proxy that goes on sending new
#      connections to an instance for 1 s after its SIGTERM (as kube-proxy does while
#      endpoints propagate), wrk with a new connection per request. With a 1.5 s drain
#      delay, asserted: no connection sent to an instance that did not accept it, 0
#      non-2xx, 0 socket errors. Without a drain delay, reported (and asserted above 0, so
#      that the lag is known to be in effect).
#
# In every run each instance exits 0 with "shutdown drained" and is ready again after its
# restart (asserted).
#
# Run from the repository root (installs wrk, haproxy, nginx, caddy and curl if missing):
#
#   bash .ci/topologies.sh
#
# Knobs (environment): ROUNDS (10), LAG_ROUNDS (5), KEEP_WORK (1: keep the logs). Everything listens on
# 127.0.0.1 on ports free at run time, lives in one mktemp -d directory, is killed on exit,
# and is bounded in time (about two minutes on 2 cores, once the demo is built).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"

ROUNDS=${ROUNDS:-10}
LAG_ROUNDS=${LAG_ROUNDS:-5}
SUITE=topologies
START=$SECONDS

# shellcheck source=reliability/lib.sh
. .ci/reliability/lib.sh

step "tools"
need wrk:wrk haproxy:haproxy nginx:nginx caddy:caddy curl:curl python3:python3
log "$(haproxy -v 2>&1 | head -1); $(nginx -v 2>&1); caddy $(caddy version 2>&1 | head -1); $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"

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

# start_wrk DIR WRK_ARG...: starts wrk (for at most 300 s, stopped by stop_wrk) with its
# output in DIR/wrk.out, then gives it a second of load before anything happens.
start_wrk() {
    local dir=$1
    shift
    wrk -d300s --timeout 5s "$@" >"$dir/wrk.out" 2>&1 &
    WRK_PID=$!
    PIDS+=("$WRK_PID")
    sleep 1
}

# stop_wrk DIR: after a second more, stops wrk, prints its summary and sets the W_
# figures; a wrk that had exited, would not stop, or completed nothing is a problem.
stop_wrk() {
    local dir=$1
    sleep 1
    kill -INT "$WRK_PID" 2>/dev/null || R_PROBLEMS+=("wrk had already exited")
    wait_exit "$WRK_PID" 15
    if [ "$RC" = timeout ]; then
        R_PROBLEMS+=("wrk did not stop")
        kill -KILL "$WRK_PID" 2>/dev/null || true
    fi
    sed 's/^/  wrk: /' "$dir/wrk.out"
    grep -q ' requests in ' "$dir/wrk.out" || R_PROBLEMS+=("no wrk summary")
    wrk_figures "$dir/wrk.out"
    [ "$W_REQUESTS" -gt 0 ] || R_PROBLEMS+=("no requests completed")
}

# --- the rolling restart, behind either proxy ---------------------------------------------

# start_proxy KIND DIR A B: starts HAProxy or nginx in front of ports A and B on a free port;
# sets PROXY_PID and PROXY_PORT once it answers.
start_proxy() {
    local kind=$1 dir=$2 a=$3 b=$4 attempt i
    PROXY_PID=
    for attempt in 1 2 3 4 5; do
        PROXY_PORT=$(free_port)
        sed -e "s#@DIR@#$dir#g" -e "s#@PORT@#$PROXY_PORT#g" -e "s#@A@#$a#g" -e "s#@B@#$b#g" \
            -e "s#@SERVER_OPTS@#${SERVER_OPTS:-}#g" \
            ".ci/topologies/$kind.conf.in" >"$dir/$kind.conf"
        case $kind in
        haproxy) haproxy -db -f "$dir/haproxy.conf" >"$dir/proxy.log" 2>&1 & ;;
        nginx) nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/proxy.log" 2>&1 & ;;
        caddy)
            XDG_DATA_HOME=$dir XDG_CONFIG_HOME=$dir \
                caddy run --config "$dir/caddy.conf" --adapter caddyfile >"$dir/proxy.log" 2>&1 &
            ;;
        esac
        PROXY_PID=$!
        PIDS+=("$PROXY_PID")
        [ "$kind" = nginx ] && NGINX_PID=$PROXY_PID
        for i in $(seq 50); do
            curl -fsS -o /dev/null "http://127.0.0.1:$PROXY_PORT/?duration=0s" 2>/dev/null && return 0
            kill -0 "$PROXY_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -TERM "$PROXY_PID" 2>/dev/null || true
        wait_exit "$PROXY_PID" 5
    done
    KEEP_WORK=1
    tail -5 "$dir/proxy.log" "$dir/error.log" 2>/dev/null >&2 || true
    die "$kind did not start"
}

# rolling_run KIND LABEL ROUNDS FLAG...: two instances started with the demo's FLAGs behind
# KIND (haproxy or nginx), wrk's POST and GET load through it, each instance restarted
# ROUNDS times in turn (SIGTERM, wait for its exit, start it on the same port, wait until
# it is ready and the proxy can have seen it). Sets the W_ figures, R_RESTARTS and
# R_PROBLEMS (exit statuses, reports, readiness, tools).
rolling_run() {
    local kind=$1 label=$2 rounds=$3 name pid port i
    shift 3
    local dir="$WORK/$kind-$label"
    mkdir -p "$dir/tmp"
    R_PROBLEMS=()
    start_demo "$kind-$label-a" 0 "$@"
    local pid_a=$DEMO_PID port_a=$DEMO_PORT
    start_demo "$kind-$label-b" 0 "$@"
    local pid_b=$DEMO_PID port_b=$DEMO_PORT
    start_proxy "$kind" "$dir" "$port_a" "$port_b"

    start_wrk "$dir" -t2 -c32 -s .ci/topologies/post-get.lua "http://127.0.0.1:$PROXY_PORT/"

    R_RESTARTS=0
    for i in $(seq "$rounds"); do
        for name in a b; do
            if [ $name = a ]; then pid=$pid_a port=$port_a; else pid=$pid_b port=$port_b; fi
            stop_demo TERM "$kind-$label-$name" "$pid"
            start_ready "$kind-$label-$name" "$port" "$@"
            if [ $name = a ]; then pid_a=$DEMO_PID; else pid_b=$DEMO_PID; fi
            R_RESTARTS=$((R_RESTARTS + 1))
            printf '  restart %2d: instance %s (port %s), exit %s, %s\n' \
                "$R_RESTARTS" "$name" "$port" "$RC" "${REPORT:-no report}"
            # HAProxy marks it up after one good check (200 ms apart); nginx opens new
            # keep-alive connections to it. Then the next.
            sleep 0.6
        done
    done
    stop_wrk "$dir"
    case $kind in
    nginx) kill -QUIT "$PROXY_PID" 2>/dev/null || R_PROBLEMS+=("nginx had already exited") ;;
    *) kill -TERM "$PROXY_PID" 2>/dev/null || R_PROBLEMS+=("$kind had already exited") ;;
    esac
    wait_exit "$PROXY_PID" 10
    NGINX_PID=
    kill -TERM "$pid_a" "$pid_b" 2>/dev/null || true
    wait_exit "$pid_a" 30
    wait_exit "$pid_b" 30

    if [ "$kind" = nginx ]; then
        # What nginx saw, by its error log's wording (reported): POSTs it could not send
        # again, and connects refused (retried).
        R_NGINX="nginx: $(grep -c 'while reading response header from upstream\|while sending request to upstream' "$dir/error.log" || true) requests on connections closed before the response head, $(grep -c 'connect() failed' "$dir/error.log" || true) failed connects (retried)"
    fi
}

# check LABEL: records R_PROBLEMS and any failed request of the last run as failures.
check() {
    local problems=("${R_PROBLEMS[@]}")
    [ "$W_NON2XX" = 0 ] || problems+=("$W_NON2XX non-2xx responses at wrk")
    [ "$W_SOCKERR" = 0 ] || problems+=("$W_SOCKERR socket errors at wrk ($W_PARTS)")
    if [ ${#problems[@]} -gt 0 ]; then
        KEEP_WORK=1
        printf '  FAIL: %s\n' "${problems[@]}"
        for p in "${problems[@]}"; do FAILURES+=("$1: $p"); done
    fi
}

# check_process LABEL: records R_PROBLEMS only (for runs whose failed requests are
# reported, not asserted).
check_process() {
    if [ ${#R_PROBLEMS[@]} -gt 0 ]; then
        KEEP_WORK=1
        printf '  FAIL: %s\n' "${R_PROBLEMS[@]}"
        for p in "${R_PROBLEMS[@]}"; do FAILURES+=("$1: $p"); done
    fi
}

# --- 1. HAProxy ---------------------------------------------------------------------------

step "HAProxy rolling restart, drain delay 1 s: $ROUNDS rounds of 2 instances"
rolling_run haproxy delay "$ROUNDS" --drain-delay 1s
hap="$R_RESTARTS restarts, $W_REQUESTS requests, $W_NON2XX non-2xx, $W_SOCKERR socket errors ($W_PARTS)"
log "drain delay 1 s: $hap"
check "HAProxy rolling restart"

step "HAProxy rolling restart, no drain delay (reported only): $ROUNDS rounds of 2 instances"
rolling_run haproxy nodelay "$ROUNDS"
hap0="$W_REQUESTS requests, $W_NON2XX non-2xx, $W_SOCKERR socket errors ($W_PARTS)"
log "no drain delay: $hap0"
check_process "HAProxy rolling restart without drain delay"

step "HAProxy rolling restart, HTTP/2 (h2c) to the instances, drain delay 1 s: $ROUNDS rounds of 2 instances"
# B62: HAProxy multiplexes requests as streams on HTTP/2 connections to the instances; at
# drain start an instance sends GOAWAY, its streams in flight finish, and HAProxy opens
# no new ones there.
SERVER_OPTS="proto h2" rolling_run haproxy h2 "$ROUNDS" --drain-delay 1s
hap2="$R_RESTARTS restarts, $W_REQUESTS requests, $W_NON2XX non-2xx, $W_SOCKERR socket errors ($W_PARTS)"
log "h2c upstream, drain delay 1 s: $hap2"
check "HAProxy rolling restart over h2c"

step "HAProxy rolling restart, PROXY protocol v2 to the instances, drain delay 1 s: $ROUNDS rounds of 2 instances"
# B66: HAProxy opens each connection to an instance with a PROXY protocol v2 header (its
# checks too), which the instances require (--proxy-protocol): the drain and the rolling
# restart lose nothing through it. (That the app sees the client's address is
# tests/proxy_protocol.rs's.)
export CURL_PROXY_HEADER=1
SERVER_OPTS="send-proxy-v2 check-send-proxy" rolling_run haproxy proxyv2 "$ROUNDS" --drain-delay 1s --proxy-protocol
unset CURL_PROXY_HEADER
happ="$R_RESTARTS restarts, $W_REQUESTS requests, $W_NON2XX non-2xx, $W_SOCKERR socket errors ($W_PARTS)"
log "PROXY v2, drain delay 1 s: $happ"
check "HAProxy rolling restart with the PROXY protocol"

# --- 2. nginx -----------------------------------------------------------------------------

step "nginx rolling restart, idle connections kept for their next request: $ROUNDS rounds of 2 instances"
# nginx has no active checks and never re-sends a POST it has sent. The instances keep each
# idle keep-alive connection through their drain until it carries one more request
# (answered with Connection: close) or 6 s pass, longer than nginx keeps an idle
# connection (keepalive_timeout 4s): nginx closes every idle connection first, so none is
# closed under a request it is sending.
rolling_run nginx safe "$ROUNDS" --idle-close after-next-request=6s
ngx="$R_RESTARTS restarts, $W_REQUESTS requests, $W_NON2XX non-2xx, $W_SOCKERR socket errors ($W_PARTS); $R_NGINX"
log "after-next-request=6s: $ngx"
check "nginx rolling restart"

step "nginx rolling restart, the final stop's default IdleClose::Immediately (reported only): $ROUNDS rounds of 2 instances"
rolling_run nginx immediately "$ROUNDS"
ngx0="$W_REQUESTS requests, $W_NON2XX non-2xx, $W_SOCKERR socket errors ($W_PARTS); $R_NGINX"
log "immediately: $ngx0"
check_process "nginx rolling restart with IdleClose::Immediately"

# --- 3. Caddy -----------------------------------------------------------------------------

step "Caddy rolling restart, drain delay 1 s: $ROUNDS rounds of 2 instances"
# Active checks every 200 ms take an instance out of rotation well within its drain delay.
rolling_run caddy delay "$ROUNDS" --drain-delay 1s
cad="$R_RESTARTS restarts, $W_REQUESTS requests, $W_NON2XX non-2xx, $W_SOCKERR socket errors ($W_PARTS)"
log "drain delay 1 s: $cad"
check "Caddy rolling restart"

# --- 4. endpoint lag --------------------------------------------------------------------

# lag_run LABEL ROUNDS LAG FLAG...: two instances with the demo's FLAGs behind
# .ci/topologies/lagproxy.py, whose endpoint list drops an instance LAG seconds after it
# is told to (as kube-proxy's lags a pod's SIGTERM); wrk with a new connection per request
# through it. Each restart: the instance leaves the list LAG s from now and gets SIGTERM;
# once it has exited and LAG has passed, it starts again on its port and joins the list.
# Sets the W_ figures, L_FAILED (connects the proxy made to an instance that did not
# accept), L_CONNECTIONS, R_RESTARTS, R_PROBLEMS.
lag_run() {
    local label=$1 rounds=$2 lag=$3 index name pid port i
    shift 3
    local dir="$WORK/lag-$label"
    mkdir -p "$dir"
    R_PROBLEMS=()
    start_demo "lag-$label-a" 0 "$@"
    local pids=("$DEMO_PID") ports=("$DEMO_PORT")
    start_demo "lag-$label-b" 0 "$@"
    pids+=("$DEMO_PID")
    ports+=("$DEMO_PORT")
    local lport cport lpid attempt
    for attempt in 1 2 3 4 5; do
        # (a free port may still be some connection's local port: then bind fails, and
        # another pair is tried)
        lport=$(free_port)
        cport=$(free_port)
        python3 .ci/topologies/lagproxy.py "$lport" "$cport" "${ports[0]}" "${ports[1]}" \
            >"$dir/lag.out" 2>"$dir/lag.err" &
        lpid=$!
        PIDS+=("$lpid")
        for i in $(seq 50); do
            grep -q '^lagproxy: listening' "$dir/lag.err" && break
            kill -0 "$lpid" 2>/dev/null || break
            sleep 0.1
        done
        grep -q '^lagproxy: listening' "$dir/lag.err" && break
        kill -TERM "$lpid" 2>/dev/null || true
        wait_exit "$lpid" 5
    done
    grep -q '^lagproxy: listening' "$dir/lag.err" || { KEEP_WORK=1; cat "$dir/lag.err" >&2; die "lagproxy did not start"; }
    tell() { # the proxy's control port takes one command a connection
        exec 3<>"/dev/tcp/127.0.0.1/$cport"
        printf '%s\n' "$*" >&3
        read -r _ <&3 || true
        exec 3>&-
    }

    start_wrk "$dir" -t2 -c16 -H "Connection: close" "http://127.0.0.1:$lport/?duration=10ms"

    R_RESTARTS=0
    for i in $(seq "$rounds"); do
        for index in 0 1; do
            name=$([ "$index" = 0 ] && echo a || echo b)
            pid=${pids[$index]} port=${ports[$index]}
            local left_at=$SECONDS
            tell leave "$index" "$lag"
            stop_demo TERM "lag-$label-$name" "$pid"
            # The new instance comes up once the old endpoint is gone (a whole second
            # more than the lag, as SECONDS counts whole seconds).
            while [ $((SECONDS - left_at)) -le "${lag%.*}" ]; do sleep 0.1; done
            start_ready "lag-$label-$name" "$port" "$@"
            pids[$index]=$DEMO_PID
            tell join "$index"
            R_RESTARTS=$((R_RESTARTS + 1))
            printf '  restart %2d: instance %s (port %s), exit %s, %s\n' \
                "$R_RESTARTS" "$name" "$port" "$RC" "${REPORT:-no report}"
            sleep 0.3
        done
    done
    stop_wrk "$dir"
    kill -TERM "$lpid" 2>/dev/null || R_PROBLEMS+=("lagproxy had already exited")
    wait_exit "$lpid" 10
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait_exit "${pids[0]}" 30
    wait_exit "${pids[1]}" 30

    local out
    out=$(cat "$dir/lag.out")
    grep -q '^connections=' <<<"$out" || R_PROBLEMS+=("no lagproxy summary")
    L_CONNECTIONS=$(field "$out" '^connections=\([0-9]*\) .*')
    L_FAILED=$(field "$out" '^connections=[0-9]* failed=\([0-9]*\) .*')
    [ "$L_CONNECTIONS" -gt 0 ] || R_PROBLEMS+=("lagproxy saw no connection")
}

step "endpoint lag 1 s, drain delay 1.5 s: $LAG_ROUNDS rounds of 2 instances"
# B63: the proxy keeps sending new connections to an instance for 1 s after its SIGTERM;
# a drain delay of 1.5 s keeps its listener open until then: nothing refused.
lag_run delay "$LAG_ROUNDS" 1 --drain-delay 1500ms
lag="$R_RESTARTS restarts, $L_CONNECTIONS connections, $L_FAILED sent to an instance that did not accept; wrk: $W_REQUESTS requests, $W_NON2XX non-2xx, $W_SOCKERR socket errors ($W_PARTS)"
log "drain delay 1.5 s: $lag"
[ "$L_FAILED" = 0 ] || R_PROBLEMS+=("$L_FAILED connections sent to an instance that did not accept")
check "endpoint lag with a drain delay"

step "endpoint lag 1 s, no drain delay (reported only): $LAG_ROUNDS rounds of 2 instances"
lag_run nodelay "$LAG_ROUNDS" 1
lag0="$L_CONNECTIONS connections, $L_FAILED sent to an instance that did not accept; wrk: $W_REQUESTS requests, $W_NON2XX non-2xx, $W_SOCKERR socket errors ($W_PARTS)"
log "no drain delay: $lag0"
[ "$L_FAILED" -gt 0 ] || R_PROBLEMS+=("no connection failed without a drain delay: the proxy's lag is not in effect")
check_process "endpoint lag without a drain delay"

# --- summary -------------------------------------------------------------------------------

step "summary"
log "HAProxy, POST and GET, drain delay 1 s: $hap; without it: $hap0"
log "HAProxy, POST and GET over h2c to the instances, drain delay 1 s: $hap2"
log "HAProxy, POST and GET with a PROXY protocol v2 header to the instances, drain delay 1 s: $happ"
log "nginx, POST and GET, idle connections kept (after-next-request=6s): $ngx; IdleClose::Immediately: $ngx0"
log "Caddy, POST and GET, drain delay 1 s: $cad"
log "endpoint lag 1 s, new connection per request, drain delay 1.5 s: $lag; without: $lag0"
log "time: $((SECONDS - START)) s"
if [ ${#FAILURES[@]} -gt 0 ]; then
    printf 'topologies: FAILED:\n' >&2
    printf '  %s\n' "${FAILURES[@]}" >&2
    exit 1
fi
log "topologies: all assertions passed"
