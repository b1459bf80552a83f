#!/usr/bin/env bash
# Mutation testing with cargo-mutants over the files that hold the shutdown logic:
# the lifecycle, driver, controller, request core, drain, layer, serve, stats and
# background files (FILES below).
# Not part of .ci/run: a full run takes hours (see below).
#
#   bash .ci/mutants.sh                          # every mutant of those files
#   bash .ci/mutants.sh --file src/stats.rs      # narrow: a --file/-f of yours replaces the list
#   bash .ci/mutants.sh --in-diff my.diff        # only mutants in lines a diff touches
#   bash .ci/mutants.sh --list                   # count them without running anything
#   nice -n 10 bash .ci/mutants.sh               # on a shared machine
#
# Any argument is passed on to `cargo mutants` (and `-- ARGS` on to `cargo test`). Run
# from anywhere: it works in the repository root and writes cargo-mutants' usual
# mutants.out/ there (the previous one is kept as mutants.out.old), or under the
# directory of your -o/--output.
# It ends with a summary: caught / missed / timeout / unviable counts, then the missed and
# timed-out mutants. Exit status is cargo-mutants' own: 0 all caught, 2 some missed,
# 3 some timed out, 4 the unmutated tree failed its tests.
#
# Each mutant is built in a scratch copy of the tree and tested with `cargo test
# --all-features` on the fast, deterministic targets only: the lib's unit tests and the
# integration tests listed in TESTS (about 15 s together). Left out: demo (spawns the
# example binary and sends real signals), soak and under_load (seconds of load each),
# close_race (a statistical measurement), and the doc tests.
#
# Time, on the 2-core machine with -j 1: the first (baseline) build of the scratch copy
# takes about 2-3 minutes, then each mutant about 15-20 s (an incremental rebuild of the
# lib and the 15 test binaries, 5-10 s without debug info, plus about 12 s of tests); one
# that does not build fails in a second, and one that hangs costs the full --timeout
# (60 s). The 316 mutants of the baseline run (adc20dc) took 101 minutes, when each
# build still built every test target; expect about 80 now. Use --file or --in-diff for a
# quick check of one change.
#
# Builds use CARGO_PROFILE_DEV_DEBUG=0 (no debug info: halves the link time of the test
# binaries and changes nothing the tests observe).
set -euo pipefail
cd "$(dirname "$0")/.."

MUTANTS_VERSION=27.1.0
FILES=(src/lifecycle.rs src/driver.rs src/shutdown.rs src/request.rs src/drain.rs
       'src/layer/*.rs' 'src/serve/*.rs' src/stats.rs src/background.rs)
TESTS=(accept_loop admission axum_serve bad_input ecosystem handover http1 http2 layer logs metrics new_connections
       operations progress serve signals sse tls tower_stack websocket)

if ! cargo mutants --version >/dev/null 2>&1; then
    echo "== installing cargo-mutants $MUTANTS_VERSION"
    cargo install cargo-mutants --locked --version "$MUTANTS_VERSION"
fi

# A --file/-f given by the caller replaces the default list; -o/--output moves mutants.out.
own_files=false
out_dir=${CARGO_MUTANTS_OUTPUT:-.}
listing=false
prev=
for arg in "$@"; do
    case "$arg" in
        -f | --file | --file=* | -f?*) own_files=true ;;
        --list | --list-files) listing=true ;;
        --output=*) out_dir=${arg#--output=} ;;
    esac
    case "$prev" in
        -o | --output) out_dir=$arg ;;
    esac
    prev=$arg
done
file_args=()
if ! $own_files; then
    for f in "${FILES[@]}"; do file_args+=(--file "$f"); done
fi
# As cargo arguments (not after `--`), so the build of each mutant (`cargo test --no-run`)
# also builds only these targets, not the slow tests, examples and benches as well.
target_args=(--cargo-arg=--lib)
for t in "${TESTS[@]}"; do target_args+=("--cargo-arg=--test=$t"); done

cmd=(cargo mutants
    "${file_args[@]}"
    --all-features
    "${target_args[@]}"
    -j 1
    --timeout 60
    --build-timeout 900
    "$@")
echo "== $(printf '%q ' "${cmd[@]}")"
start=$SECONDS
status=0
CARGO_PROFILE_DEV_DEBUG=0 "${cmd[@]}" || status=$?
$listing && exit "$status"

out="$out_dir/mutants.out"
count() { if [[ -f "$out/$1" ]]; then grep -c . "$out/$1" || true; else echo 0; fi; }
echo
echo "== summary ($(( (SECONDS - start) / 60 )) min, exit $status, results in $out/)"
echo "caught: $(count caught.txt)  missed: $(count missed.txt)  timeout: $(count timeout.txt)  unviable: $(count unviable.txt)"
for kind in missed timeout; do
    if [[ -s "$out/$kind.txt" ]]; then
        echo
        echo "-- $kind:"
        cat "$out/$kind.txt"
    fi
done
exit "$status"
