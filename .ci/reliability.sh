#!/usr/bin/env bash
# Reliability under real traffic, with real clients and a real proxy:
#
#   1. h2 shutdown under load: h2load drives many concurrent HTTP/2 streams over a few
#      connections to the demo, the demo gets SIGTERM part-way, 20 times. Every stream
#      that reached the server must complete with a 2xx, and none may be reset; both are
#      counted from the HTTP/2 frames on the wire (.ci/reliability/h2frames.py).
#   2. nginx rolling restart: nginx in front of two demo instances, wrk through nginx,
#      each instance restarted in turn 10 times (SIGTERM, wait for exit, start on the same
#      port, wait for /healthz). Zero non-2xx responses and zero socket errors at wrk;
#      nginx retries only failed connects and connections closed before the response
#      head, at most once a request, and those closes stay within what the keep-alive
#      close race explains. Then the same with SIGKILL instead of SIGTERM (3 rounds),
#      whose figures are reported, not asserted, to show what the graceful drain saves.
#
# Run from the repository root as root (the h2 scenario captures on the loopback; on a
# fresh Debian machine it installs wrk, nghttp2-client, nginx, curl and python3 if they
# are missing):
#
#   bash .ci/reliability.sh
#
# Knobs (environment): H2_ROUNDS (20), NGINX_ROUNDS (10), KILL_ROUNDS (3), KEEP_WORK (1:
# keep the logs even when everything passed), MAX_BEFORE_HEAD (40: the bound on nginx's
# before-head closes per 10 restarts, see the SIGTERM rolling restart).
# Everything listens on 127.0.0.1 on ports free at run time, lives in one mktemp -d
# directory, is killed on exit, and is bounded in time (about a minute on 2 cores, once
# the demo is built).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"

H2_ROUNDS=${H2_ROUNDS:-20}
NGINX_ROUNDS=${NGINX_ROUNDS:-10}
KILL_ROUNDS=${KILL_ROUNDS:-3}
# The bound on nginx's before-head closes in the SIGTERM run, per 10 restarts (see "nginx
# rolling restart (SIGTERM)").
MAX_BEFORE_HEAD=${MAX_BEFORE_HEAD:-40}
START=$SECONDS

# shellcheck source=reliability/lib.sh
. .ci/reliability/lib.sh

step "tools"
need wrk:wrk h2load:nghttp2-client nginx:nginx curl:curl python3:python3
log "$(h2load --version 2>&1 | head -1); $(nginx -v 2>&1); $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2); $(python3 --version 2>&1)"

build_demo

FAILURES=()

# --- scenario 1: h2 shutdown under load --------------------------------------------------

# start_capture PORT: .ci/reliability/h2frames.py captures TCP to and from PORT on the
# loopback into $WORK/h2.pcap; returns once it captures. Sets CAPTURE_PID.
start_capture() {
    : >"$WORK/h2frames.err"
    python3 .ci/reliability/h2frames.py capture "$1" "$WORK/h2.pcap" >"$WORK/h2frames.out" \
        2>"$WORK/h2frames.err" &
    CAPTURE_PID=$!
    PIDS+=("$CAPTURE_PID")
    for _ in $(seq 100); do
        if grep -q '^h2frames: capturing$' "$WORK/h2frames.err"; then return; fi
        kill -0 "$CAPTURE_PID" 2>/dev/null || break
        sleep 0.05
    done
    KEEP_WORK=1
    cat "$WORK/h2frames.err" >&2
    die "h2frames.py did not start capturing (it needs root or CAP_NET_RAW)"
}

# stop_capture: stops the capture (it reads what the kernel holds, then counts); sets
# FRAMES (its name=value lines) and FRAMES_RC (its exit status, or timeout).
stop_capture() {
    kill -TERM "$CAPTURE_PID" 2>/dev/null || true
    wait_exit "$CAPTURE_PID" 20
    FRAMES_RC=$RC
    if [ "$RC" = timeout ]; then kill -KILL "$CAPTURE_PID" 2>/dev/null || true; fi
    FRAMES=$(cat "$WORK/h2frames.out")
}

step "h2 shutdown under load: $H2_ROUNDS rounds"
# What counts. h2load -n N stops each connection's work as soon as it reads a GOAWAY and
# does not reconnect; N is far more than can run before the SIGTERM, so every round ends
# that way. Its summary line reads
#   requests: T total, S started, D done, K succeeded, F failed, E errored, X timeout
# where
#   S (started)   = requests handed to its HTTP/2 library, sent on the wire or not yet;
#   K (succeeded) = streams that closed cleanly with a 2xx/3xx status;
#   F, E          = everything else: the T - S requests it could not submit once the
#                   GOAWAY was read ("Process Request Failure"), plus started streams
#                   that were reset, refused, cut by a closed connection, or (F only)
#                   got a 4xx/5xx.
# S - K is not the loss: a request queued in the library when the GOAWAY arrives is never
# sent (no new stream may start after a GOAWAY) and is closed locally with REFUSED_STREAM,
# which is retryable and never reached the server. So what reached the server is counted
# on the wire: .ci/reliability/h2frames.py captures each round's connections on the
# loopback, reassembles them and decodes their HTTP/2 frames from the frame headers (a
# frame's type is a number on the wire: no program's log wording is read). From that:
#   R      = streams the client opened (request HEADERS frames): they reached the server;
#   C      = of those, streams whose response the server ended (END_STREAM);
#   resets = RST_STREAM frames sent by the server (on any stream);
#   G      = GOAWAY frames sent by the server.
# Asserted in every round: the capture is whole (the kernel dropped nothing; every
# connection was seen from its SYN to its end both ways, every byte in a whole frame) and
# holds the frames every round certainly has (HEADERS both ways, G > 0), so that a counter
# that reads nothing fails rather than reading 0 resets; R = C = K (every stream that
# reached the server completed with a 2xx, none lost); resets = 0; the 2xx count = K;
# D = S (every started stream was closed by the protocol, none abandoned by a dropped
# connection); F = E = T - K (nothing else failed); X = 0; S >= R; the SIGTERM came
# before the run's end (S < T); the demo exits 0 with "shutdown drained".
# Reported only: S - R (never sent, refused locally after the GOAWAY), G (asserted > 0;
# two a connection: hyper's graceful GOAWAY, then the final one), the requests in flight
# at drain start and the drain time from the demo's report (they depend on timing).
H2_TOTAL_REQ=200000
h2_reached=0 h2_lost=0 h2_refused=0 h2_inflight=0 h2_resets=0 h2_goaways=0
for round in $(seq "$H2_ROUNDS"); do
    start_demo h2 0
    demo_pid=$DEMO_PID
    start_capture "$DEMO_PORT"
    h2load -c 8 -m 32 -n "$H2_TOTAL_REQ" \
        "http://127.0.0.1:$DEMO_PORT/?duration=50ms" >"$WORK/h2load.$round.out" 2>&1 &
    h2_pid=$!
    PIDS+=("$h2_pid")
    # SIGTERM somewhere between 0.6 s and 1.6 s into the run.
    delay_ms=$((600 + RANDOM % 1000))
    sleep "$((delay_ms / 1000)).$(printf '%03d' $((delay_ms % 1000)))"
    kill -TERM "$demo_pid" || true
    wait_exit "$demo_pid" 20
    demo_rc=$RC
    wait_exit "$h2_pid" 30
    h2_rc=$RC
    if [ "$h2_rc" = timeout ]; then kill -KILL "$h2_pid" 2>/dev/null || true; fi
    stop_capture
    frames=$FRAMES
    out=$(cat "$WORK/h2load.$round.out")
    report=$(grep -m1 '^shutdown ' "$WORK/h2.err" || true)
    total=$(field "$out" '^requests: \([0-9]*\) total.*')
    started=$(field "$out" '^requests: .* \([0-9]*\) started.*')
    done_=$(field "$out" '^requests: .* \([0-9]*\) done.*')
    succeeded=$(field "$out" '^requests: .* \([0-9]*\) succeeded.*')
    failed=$(field "$out" '^requests: .* \([0-9]*\) failed.*')
    errored=$(field "$out" '^requests: .* \([0-9]*\) errored.*')
    timedout=$(field "$out" '^requests: .* \([0-9]*\) timeout.*')
    s2xx=$(field "$out" '^status codes: \([0-9]*\) 2xx.*')
    inflight=$(field "$report" '.*connections and \([0-9]*\) requests at drain start.*')
    connections=$(field "$frames" '^connections=\([0-9]*\)$')
    capture_problems=$(field "$frames" '^problems=\([0-9]*\)$')
    dropped=$(field "$frames" '^dropped=\([0-9]*\)$')
    reached=$(field "$frames" '^streams_opened=\([0-9]*\)$')
    completed=$(field "$frames" '^streams_completed=\([0-9]*\)$')
    reset_streams=$(field "$frames" '^streams_reset=\([0-9]*\)$')
    above_goaway=$(field "$frames" '^streams_above_goaway=\([0-9]*\)$')
    unanswered=$(field "$frames" '^streams_unanswered=\([0-9]*\)$')
    c2s_headers=$(field "$frames" '^c2s\.HEADERS=\([0-9]*\)$')
    s2c_headers=$(field "$frames" '^s2c\.HEADERS=\([0-9]*\)$')
    resets=$(field "$frames" '^s2c\.RST_STREAM=\([0-9]*\)$')
    goaways=$(field "$frames" '^s2c\.GOAWAY=\([0-9]*\)$')
    lost=$((reached - succeeded))
    refused=$((started - reached))
    problems=()
    [ "$demo_rc" = 0 ] || problems+=("demo exit status $demo_rc")
    case $report in
    "shutdown drained "*) ;;
    *) problems+=("demo report: ${report:-none}") ;;
    esac
    [ "$h2_rc" != timeout ] || problems+=("h2load did not finish")
    grep -q '^requests: ' <<<"$out" || problems+=("no h2load summary")
    if [ "$FRAMES_RC" != 0 ] || [ "$capture_problems" != 0 ] || [ "$dropped" != 0 ]; then
        problems+=("the capture cannot be counted: h2frames.py exit $FRAMES_RC, $capture_problems connections not whole, $dropped packets dropped by the kernel ($(grep -v '^h2frames: capturing$' "$WORK/h2frames.err" | head -3 | tr '\n' ' '))")
    fi
    [ "$connections" -gt 0 ] && [ "$c2s_headers" -gt 0 ] && [ "$s2c_headers" -gt 0 ] && [ "$goaways" -gt 0 ] ||
        problems+=("the capture holds no HTTP/2 traffic with a GOAWAY ($connections connections, $c2s_headers/$s2c_headers HEADERS frames in/out, $goaways GOAWAY): cannot count the streams that reached the server")
    [ "$started" -lt "$total" ] || problems+=("the SIGTERM came after the run ended")
    [ "$lost" = 0 ] || problems+=("$lost streams reached the server but did not complete with a 2xx")
    [ "$completed" = "$reached" ] ||
        problems+=("the server ended $completed of the $reached streams that reached it ($reset_streams reset, $above_goaway above its GOAWAY's last stream id, $unanswered cut)")
    [ "$refused" -ge 0 ] || problems+=("the server saw $reached streams, more than the $started started")
    [ "$resets" = 0 ] || problems+=("the server sent $resets RST_STREAM")
    [ "$s2xx" = "$succeeded" ] || problems+=("2xx $s2xx != succeeded $succeeded")
    [ "$done_" = "$started" ] || problems+=("done $done_ != started $started: streams abandoned")
    [ "$failed" = $((total - succeeded)) ] || problems+=("failed $failed != total - succeeded")
    [ "$errored" = $((total - succeeded)) ] || problems+=("errored $errored != total - succeeded")
    [ "$timedout" = 0 ] || problems+=("$timedout timed out")
    printf 'round %2d: %5d streams reached the server, %5d completed, %d lost, %d RST_STREAM, %d GOAWAY, %3d in flight at drain start, %2d refused before sending; %s\n' \
        "$round" "$reached" "$succeeded" "$lost" "$resets" "$goaways" "$inflight" "$refused" "${report%% (*}"
    if [ ${#problems[@]} -gt 0 ]; then
        KEEP_WORK=1
        FAILURES+=("h2 round $round: $(IFS=';'; echo "${problems[*]}")")
        printf '  FAIL: %s\n' "${problems[@]}"
        grep -E '^(requests|status codes):' <<<"$out" | sed 's/^/  h2load: /'
        printf '  frames: %s\n' "$(grep -v '=0$' <<<"$frames" | tr '\n' ' ')"
        cp "$WORK/h2load.$round.out" "$WORK/h2load.failed.$round.out"
        cp "$WORK/h2.err" "$WORK/h2.failed.$round.err"
        cp "$WORK/h2.pcap" "$WORK/h2.failed.$round.pcap"
    fi
    rm -f "$WORK/h2load.$round.out" "$WORK/h2.pcap"
    : >"$WORK/h2.err"
    h2_reached=$((h2_reached + reached))
    h2_lost=$((h2_lost + lost))
    h2_refused=$((h2_refused + refused))
    h2_inflight=$((h2_inflight + inflight))
    h2_resets=$((h2_resets + resets))
    h2_goaways=$((h2_goaways + goaways))
done
log "total: $h2_reached streams reached the server, $h2_lost lost, $h2_resets RST_STREAM and $h2_goaways GOAWAY frames from the server, $h2_inflight in flight at drain start, $h2_refused refused by the client library before sending (after the GOAWAY)"

# --- scenario 2: rolling restart behind nginx --------------------------------------------

# nginx_errors FILE KIND: how many of nginx's [error] lines in FILE are of KIND (below).
nginx_errors() {
    local re
    case $2 in
    timed_out) re='upstream timed out' ;;
    connect) re='connect\(\) failed .* while connecting to upstream' ;;
    before_head) re='while (sending request to|reading response header from) upstream' ;;
    mid_body) re='while reading upstream' ;;
    esac
    if [ "$2" = timed_out ]; then
        grep '\[error\]' "$1" | grep -Ec "$re" || true
    else
        grep '\[error\]' "$1" | grep -v 'upstream timed out' | grep -Ec "$re" || true
    fi
}

# nginx_run MODE ROUNDS: MODE is TERM or KILL. Sets R_REQUESTS, R_NON2XX, R_SOCKERR (and
# its parts), R_RESTARTS, nginx's figures (R_RETRIED and the others described at the end),
# R_PROBLEMS (process-level problems: exit status, report, readiness).
nginx_run() {
    local mode=$1 rounds=$2 dir="$WORK/nginx-$1" name port rc report i
    mkdir -p "$dir/tmp"
    R_PROBLEMS=()
    start_demo "$mode-a" 0
    local pid_a=$DEMO_PID port_a=$DEMO_PORT
    start_demo "$mode-b" 0
    local pid_b=$DEMO_PID port_b=$DEMO_PORT

    local nport= attempt
    for attempt in 1 2 3 4 5; do
        nport=$(free_port)
        rm -f "$dir/error.log" "$dir/access.log" # (what an attempt that failed to bind wrote)
        sed -e "s#@DIR@#$dir#g" -e "s#@PORT@#$nport#g" \
            -e "s#@UPSTREAM_A@#$port_a#g" -e "s#@UPSTREAM_B@#$port_b#g" \
            .ci/reliability/nginx.conf.in >"$dir/nginx.conf"
        nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" 2>>"$dir/error.log" &
        NGINX_PID=$!
        for i in $(seq 50); do
            curl -fsS -o /dev/null "http://127.0.0.1:$nport/?duration=0s" 2>/dev/null && break
            kill -0 "$NGINX_PID" 2>/dev/null || break
            sleep 0.1
        done
        if curl -fsS -o /dev/null "http://127.0.0.1:$nport/?duration=0s" 2>/dev/null; then break; fi
        kill -TERM "$NGINX_PID" 2>/dev/null || true
        wait_exit "$NGINX_PID" 5
        NGINX_PID=
    done
    [ -n "$NGINX_PID" ] || { KEEP_WORK=1; tail -5 "$dir/error.log" >&2; die "nginx did not start"; }

    wrk -t2 -c32 -d300s --timeout 5s "http://127.0.0.1:$nport/?duration=10ms" >"$dir/wrk.out" 2>&1 &
    local wrk_pid=$!
    PIDS+=("$wrk_pid")
    sleep 1

    R_RESTARTS=0
    local connects=0 closes=0 connects_now closes_now
    for i in $(seq "$rounds"); do
        for name in a b; do
            if [ $name = a ]; then pid=$pid_a port=$port_a; else pid=$pid_b port=$port_b; fi
            stop_demo "$mode" "$mode-$name" "$pid"
            rc=$RC report=$REPORT
            start_ready "$mode-$name" "$port"
            if [ $name = a ]; then pid_a=$DEMO_PID; else pid_b=$DEMO_PID; fi
            R_RESTARTS=$((R_RESTARTS + 1))
            # nginx's errors since the last restart (its error log is not buffered; by now
            # the instance has exited and its successor accepts).
            connects_now=$(nginx_errors "$dir/error.log" connect)
            closes_now=$(nginx_errors "$dir/error.log" before_head)
            printf '  restart %2d: instance %s (port %s) %s, exit %s, %s; nginx: %d failed connects, %d closed before the head\n' \
                "$R_RESTARTS" "$name" "$port" "SIG$mode" "$rc" "${report:-no report}" \
                $((connects_now - connects)) $((closes_now - closes))
            connects=$connects_now closes=$closes_now
            # Let nginx open keep-alive connections to the new instance before the next.
            sleep 0.5
        done
    done
    sleep 1
    kill -INT "$wrk_pid" 2>/dev/null || R_PROBLEMS+=("wrk had already exited")
    wait_exit "$wrk_pid" 15
    rc=$RC
    if [ "$rc" = timeout ]; then
        R_PROBLEMS+=("wrk did not stop")
        kill -KILL "$wrk_pid" 2>/dev/null || true
    fi

    kill -QUIT "$NGINX_PID" 2>/dev/null || R_PROBLEMS+=("nginx had already exited")
    # (QUIT is nginx's graceful stop: the buffered access log is written out)
    wait_exit "$NGINX_PID" 10
    NGINX_PID=
    kill -TERM "$pid_a" "$pid_b" 2>/dev/null || true
    wait_exit "$pid_a" 15
    wait_exit "$pid_b" 15

    local out
    out=$(cat "$dir/wrk.out")
    sed 's/^/  wrk: /' "$dir/wrk.out"
    grep -q ' requests in ' <<<"$out" || R_PROBLEMS+=("no wrk summary")
    R_REQUESTS=$(field "$out" '^ *\([0-9]*\) requests in .*')
    # wrk prints these two lines only when the counts are not zero.
    R_NON2XX=$(field "$out" '^ *Non-2xx or 3xx responses: \([0-9]*\).*')
    R_CONNECT=$(field "$out" '^ *Socket errors: connect \([0-9]*\),.*')
    R_READ=$(field "$out" '^ *Socket errors: .*read \([0-9]*\),.*')
    R_WRITE=$(field "$out" '^ *Socket errors: .*write \([0-9]*\),.*')
    R_TIMEOUT=$(field "$out" '^ *Socket errors: .*timeout \([0-9]*\).*')
    R_SOCKERR=$((R_CONNECT + R_READ + R_WRITE + R_TIMEOUT))
    # nginx's view. The access log has one line a request, with every upstream tried:
    #   R_RETRIED       retries: upstreams tried after the first, summed over requests;
    #   R_MAX_TRIES     the most upstreams tried for one request;
    #   R_NGINX_NON200  requests answered with a status other than 200, but for 499 (the
    #                   client closed first: wrk's own connections when it is stopped).
    # The error log has one [error] line for every upstream failure, by kind:
    #   R_REFUSED       connects that failed: refused (or reset) by an instance while it was
    #                   stopped; the request was never sent, always safe to retry;
    #   R_BEFORE_HEAD   connections closed or reset after the request was sent and before
    #                   the response head: the keep-alive close race (nginx sent the request
    #                   on an idle connection as the instance closed it), or a process that
    #                   died; retried, as these are GETs;
    #   R_MID_BODY      responses cut after the head: cannot be retried, the client sees it;
    #   R_TIMED_OUT     upstream timeouts (not retried, see nginx.conf.in);
    #   R_OTHER_ERRORS  any other [error] (or worse) line, so that a line whose wording is
    #                   not one of the above is seen rather than read as 0 of everything.
    local access="$dir/access.log" errors="$dir/errors.log"
    read -r R_RETRIED R_MAX_TRIES < <(awk -F'"' '
        { n = split($2, tried, ", "); extra += n - 1; if (n > max) max = n }
        END { print extra + 0, max + 0 }' "$access")
    R_NGINX_NON200=$(grep -Evc '^(200|499) ' "$access" || true)
    grep -E '\[(error|crit|alert|emerg)\]' "$dir/error.log" >"$errors" || true
    R_TIMED_OUT=$(nginx_errors "$errors" timed_out)
    R_REFUSED=$(nginx_errors "$errors" connect)
    R_BEFORE_HEAD=$(nginx_errors "$errors" before_head)
    R_MID_BODY=$(nginx_errors "$errors" mid_body)
    R_OTHER_ERRORS=$(($(wc -l <"$errors") - R_TIMED_OUT - R_REFUSED - R_BEFORE_HEAD - R_MID_BODY))
    R_NGINX_SUMMARY="nginx: $R_RETRIED retries (at most $R_MAX_TRIES upstreams for a request) after $R_REFUSED failed connects and $R_BEFORE_HEAD connections closed before the response head; $R_MID_BODY responses cut after the head, $R_TIMED_OUT timeouts, $R_OTHER_ERRORS other errors; $R_NGINX_NON200 non-200 answered"
}

step "nginx rolling restart (SIGTERM): $NGINX_ROUNDS rounds of 2 instances"
# Asserted after SIGTERM (every figure printed is, but for those named "reported"):
#   - each instance exits 0 with "shutdown drained" and is ready again after its restart;
#   - wrk: requests > 0, no non-2xx response, no socket error (connect/read/write/timeout);
#   - nginx: no non-200 answer (499, wrk closing its own connections when it is stopped,
#     aside), no response cut after the head, no upstream timeout, no error line of a kind
#     not counted below, at most 2 upstreams tried for a request;
#   - retries = failed connects + before-head closes: nginx retries only those (see
#     nginx.conf.in) and every one of them is retried on the other instance (so the
#     client never sees it), so a retry of anything else (a 502/503, a timeout), an
#     error not retried, or error log wording this script does not read breaks it;
#   - failed connects > 0: nginx is certain to send to an instance while it is stopped
#     (refused: the request was never sent; always safe to retry). Their number is
#     reported, not bounded: it is the time an instance is down times the rate nginx
#     sends to it (about 150 a restart here). That it is not 0 also shows that the error
#     log is read at all;
#   - before-head closes (nginx sent the request, then the connection was closed or reset
#     before the response head) <= MAX_BEFORE_HEAD per 10 restarts. They are the
#     keep-alive close race: the demo closes idle keep-alive connections at drain start
#     (IdleClose::Immediately, the library's default; the demo has no --idle-close flag
#     to ask for a mode without the race) and nginx may send a request on one just then;
#     nginx retries it (a GET) on the other instance, so wrk never sees it. They cannot
#     be asserted 0, so the bound is measured: 7 to 44 for 20 restarts over 33 runs on
#     2 cores (mean 18.5; 0 to 7 at most restarts, but 15 or 16 at about one in 200, e.g.
#     where the demo reported 18 connections and 0 requests at drain start; at a few
#     restarts more than the idle connections reported, so a few may be connections that
#     completed just as the listener closed). 40 per 10 restarts (80 for 20) is 1.8
#     times the worst run seen and 4.3 times the mean; losing a request on every idle
#     connection at every restart (about 5 a restart) would exceed it. The bound is
#     never below 16, the most seen at one restart (for short runs). The count at each
#     restart is reported.
# Reported only: the restart count (fixed: 2 per round), wrk's latency and rate, failed
# connects (above), the connections and requests each instance had at drain start, the
# failed connects and before-head closes at each restart.
nginx_run TERM "$NGINX_ROUNDS"
term_requests=$R_REQUESTS term_non2xx=$R_NON2XX term_sockerr=$R_SOCKERR term_restarts=$R_RESTARTS
term_retried=$R_RETRIED term_before_head=$R_BEFORE_HEAD term_refused=$R_REFUSED
term_parts="connect $R_CONNECT, read $R_READ, write $R_WRITE, timeout $R_TIMEOUT"
log "SIGTERM: $R_RESTARTS restarts, $R_REQUESTS requests, $R_NON2XX non-2xx, $R_SOCKERR socket errors ($term_parts)"
log "  $R_NGINX_SUMMARY"
term_problems=("${R_PROBLEMS[@]}")
[ "$term_non2xx" = 0 ] || term_problems+=("$term_non2xx non-2xx responses at wrk")
[ "$term_sockerr" = 0 ] || term_problems+=("$term_sockerr socket errors at wrk ($term_parts)")
[ "$R_NGINX_NON200" = 0 ] || term_problems+=("nginx answered $R_NGINX_NON200 non-200")
[ "$R_MID_BODY" = 0 ] || term_problems+=("nginx saw $R_MID_BODY responses cut after the head")
[ "$term_requests" -gt 0 ] || term_problems+=("no requests completed")
[ "$R_MAX_TRIES" -le 2 ] ||
    term_problems+=("nginx tried $R_MAX_TRIES upstreams for one request (proxy_next_upstream_tries 2 not in effect)")
[ "$R_RETRIED" = $((R_REFUSED + R_BEFORE_HEAD)) ] ||
    term_problems+=("nginx retried $R_RETRIED times after $R_REFUSED failed connects and $R_BEFORE_HEAD before-head closes: a retry that no such error explains, an error not retried, or error log wording this script does not know")
[ "$R_RESTARTS" = 0 ] || [ "$R_REFUSED" -gt 0 ] ||
    term_problems+=("no failed connect in nginx's error log: nginx never sent to a stopped instance, or its wording changed and nothing here is counted")
before_head_limit=$((MAX_BEFORE_HEAD * R_RESTARTS / 10))
[ "$before_head_limit" -ge 16 ] || before_head_limit=16 # (the most seen at one restart)
[ "$R_BEFORE_HEAD" -le "$before_head_limit" ] ||
    term_problems+=("$R_BEFORE_HEAD requests were sent on connections closed before the response head, more than the keep-alive close race explains ($before_head_limit for $R_RESTARTS restarts)")
[ "$R_TIMED_OUT" = 0 ] || term_problems+=("nginx saw $R_TIMED_OUT upstream timeouts")
[ "$R_OTHER_ERRORS" = 0 ] || term_problems+=("nginx logged $R_OTHER_ERRORS errors of no kind this script knows")
if [ ${#term_problems[@]} -gt 0 ]; then
    KEEP_WORK=1
    printf '  FAIL: %s\n' "${term_problems[@]}"
    # The errors that are not refused connects first: there are hundreds of those.
    { grep -v 'connect() failed' "$WORK/nginx-TERM/errors.log" || true; grep 'connect() failed' "$WORK/nginx-TERM/errors.log" || true; } |
        sed 's/^/  nginx: /' | head -20 || true
    for p in "${term_problems[@]}"; do FAILURES+=("nginx rolling restart: $p"); done
fi

step "nginx rolling restart (SIGKILL, reported only): $KILL_ROUNDS rounds of 2 instances"
nginx_run KILL "$KILL_ROUNDS"
kill_parts="connect $R_CONNECT, read $R_READ, write $R_WRITE, timeout $R_TIMEOUT"
log "SIGKILL: $R_RESTARTS restarts, $R_REQUESTS requests, $R_NON2XX non-2xx, $R_SOCKERR socket errors ($kill_parts)"
log "  $R_NGINX_SUMMARY"
# Exit statuses and reports are not checked after SIGKILL; the rest (readiness after each
# restart, wrk and nginx running throughout) still is.
if [ ${#R_PROBLEMS[@]} -gt 0 ]; then
    KEEP_WORK=1
    printf '  FAIL: %s\n' "${R_PROBLEMS[@]}"
    for p in "${R_PROBLEMS[@]}"; do FAILURES+=("nginx rolling restart with SIGKILL: $p"); done
fi

# --- summary -----------------------------------------------------------------------------

step "summary"
log "h2 shutdown under load: $H2_ROUNDS rounds, $h2_reached streams started at the server, $h2_lost lost, $h2_resets RST_STREAM from the server ($h2_inflight in flight at drain start; $h2_refused queued in h2load when the GOAWAY came and so never sent)"
log "nginx rolling restart: $term_restarts restarts, $term_requests requests, $term_non2xx non-2xx, $term_sockerr socket errors ($term_retried retried by nginx: $term_refused failed connects, $term_before_head connections closed before the response head); with SIGKILL: $R_RESTARTS restarts, $R_REQUESTS requests, $R_NON2XX non-2xx, $R_SOCKERR socket errors ($kill_parts; $R_RETRIED retried by nginx: $R_REFUSED failed connects, $R_BEFORE_HEAD closed before the head; $R_MID_BODY responses cut after the head)"
log "time: $((SECONDS - START)) s"
if [ ${#FAILURES[@]} -gt 0 ]; then
    printf 'reliability: FAILED:\n' >&2
    printf '  %s\n' "${FAILURES[@]}" >&2
    exit 1
fi
log "reliability: all assertions passed"
