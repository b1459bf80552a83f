# Shared by .ci/reliability.sh and .ci/topologies.sh: logging, tool installation, the
# demo build, process bookkeeping (everything started is killed on exit; an nginx master
# in NGINX_PID is stopped first) and small helpers. Sourced from the repository root.

log() { printf '%s\n' "$*"; }
step() { printf '\n== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }
die() {
    printf '%s: FAILED: %s\n' "${SUITE:-reliability}" "$*" >&2
    exit 1
}

# --- tools -------------------------------------------------------------------------------

# need TOOL:PACKAGE...: installs the packages of the tools missing (one apt-get run),
# keeping packages from starting system-wide services (nginx, haproxy on their ports).
need() {
    local missing=() spec
    for spec in "$@"; do
        command -v "${spec%%:*}" >/dev/null 2>&1 || missing+=("${spec#*:}")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing: ${missing[*]}"
        # No service starts during the install (Docker images already carry this file).
        local made_policy=
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
            chmod +x /usr/sbin/policy-rc.d
            made_policy=1
        fi
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
        if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
    fi
    for spec in "$@"; do
        command -v "${spec%%:*}" >/dev/null 2>&1 || die "${spec%%:*} is not installed"
    done
}

# build_demo: builds the demo (all features) and sets DEMO to its path.
build_demo() {
    step "cargo build --all-features --example httpdown_example"
    cargo build --all-features --example httpdown_example
    local target_dir
    target_dir=$(cargo metadata --no-deps --format-version 1 |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    DEMO=${target_dir:-target}/debug/examples/httpdown_example
    [ -x "$DEMO" ] || die "the demo binary is not at $DEMO"
}

# --- process bookkeeping -----------------------------------------------------------------

WORK=$(mktemp -d)
PIDS=()     # everything started in the background, killed on exit
NGINX_PID=  # nginx's master (its worker is killed through it)
KEEP_WORK=${KEEP_WORK:-}

cleanup() {
    local pid
    if [ -n "$NGINX_PID" ] && kill -0 "$NGINX_PID" 2>/dev/null; then
        kill -TERM "$NGINX_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$NGINX_PID" 2>/dev/null || break; sleep 0.1; done
        for pid in $(pgrep -P "$NGINX_PID" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
        kill -KILL "$NGINX_PID" 2>/dev/null || true
    fi
    for pid in "${PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if [ -n "$KEEP_WORK" ]; then
        printf '%s: logs kept in %s\n' "${SUITE:-reliability}" "$WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_exit PID SECONDS: waits for a child to exit and sets RC to its exit status, or to
# "timeout" (not in a command substitution: only this shell can wait for its children).
wait_exit() {
    local pid=$1 limit=$(($2 * 10)) i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt "$limit" ]; do
        sleep 0.1
        i=$((i + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        RC=timeout
        return
    fi
    RC=0
    wait "$pid" 2>/dev/null || RC=$?
}

# start_demo NAME PORT [FLAG...]: starts an instance (PORT 0 picks one) with the demo's
# FLAGs besides its timeouts, waits for its start line (it is listening by then), sets
# DEMO_PID and DEMO_PORT. Output goes to $WORK/NAME.*.
start_demo() {
    local name=$1 port=$2 i
    shift 2
    : >"$WORK/$name.out"
    "$DEMO" --addr "127.0.0.1:$port" --stop-timeout 10s --kill-timeout 1s "$@" \
        >"$WORK/$name.out" 2>>"$WORK/$name.err" &
    DEMO_PID=$!
    PIDS+=("$DEMO_PID")
    for i in $(seq 100); do
        if grep -q '^serving on ' "$WORK/$name.out"; then break; fi
        kill -0 "$DEMO_PID" 2>/dev/null || break
        sleep 0.05
    done
    DEMO_PORT=$(sed -n 's#^serving on http://127\.0\.0\.1:\([0-9]*\)/ with pid [0-9]*$#\1#p' "$WORK/$name.out")
    if [ -z "$DEMO_PORT" ]; then
        KEEP_WORK=1
        tail -5 "$WORK/$name.err" >&2 || true
        die "demo $name did not start on port $port"
    fi
}

# stop_demo SIGNAL NAME PID: stops an instance with SIGNAL (TERM or KILL) and waits for its
# exit; sets RC (its exit status) and REPORT (its report line). After SIGTERM, an exit
# status other than 0 or a report other than "shutdown drained" is added to R_PROBLEMS.
stop_demo() {
    local signal=$1 name=$2 pid=$3
    : >"$WORK/$name.err"
    # (stderr off: bash would report a SIGKILLed job as "Killed")
    { kill "-$signal" "$pid" || true; wait_exit "$pid" 30; } 2>/dev/null
    REPORT=$(grep -m1 '^shutdown ' "$WORK/$name.err" || true)
    if [ "$signal" = TERM ]; then
        [ "$RC" = 0 ] || R_PROBLEMS+=("instance $name exit status $RC after SIGTERM")
        case $REPORT in
        "shutdown drained "*) ;;
        *) R_PROBLEMS+=("instance $name report: ${REPORT:-none}") ;;
        esac
    fi
}

# start_ready NAME PORT [FLAG...]: start_demo, then waits (10 s at most) until its
# readiness route answers 200; adds to R_PROBLEMS if it does not.
start_ready() {
    local name=$1 port=$2 i
    start_demo "$@"
    for i in $(seq 100); do
        # (CURL_PROXY_HEADER=1: the instance requires a PROXY protocol header.)
        curl ${CURL_PROXY_HEADER:+--haproxy-protocol} -fsS -o /dev/null \
            "http://127.0.0.1:$port/healthz" 2>/dev/null && return 0
        sleep 0.1
    done
    R_PROBLEMS+=("instance $name not ready after restart")
}

# free_port: a port nothing listens on now (nginx's own bind is checked when it starts).
free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
}

# field TEXT REGEX: the first number captured by sed's \1 in REGEX, or 0.
field() {
    local v
    v=$(printf '%s\n' "$1" | sed -n "s/$2/\1/p" | head -1) || true
    echo "${v:-0}"
}

