#!/usr/bin/env bash
# Network faults (SPEC B64): the demo in a network namespace of its own, reached over a
# veth pair, drains through loss (nftables), a rate limit (tbf), delay, jitter and stalls
# (a TCP proxy) and clients that vanish, with every deadline holding. The scenarios and
# what each asserts: .ci/faults/faults.py.
#
# Run from the repository root, as root (installs iproute2, nftables and python3 if
# missing):
#
#   bash .ci/faults.sh
#
# Knobs (environment): FAULT_ROUNDS (2). Where the machine cannot make a namespace (not
# root, no veth), the suite says why and skips; where tc has no tbf, the rate limit alone
# is skipped, with a message. About 20 s a round once the demo is built.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
SUITE=faults

# shellcheck source=reliability/lib.sh
. .ci/reliability/lib.sh

step "tools"
if [ "$(id -u)" != 0 ]; then
    log "faults: SKIPPED: network namespaces, nftables and tc need root (running as $(id -un))"
    exit 0
fi
need ip:iproute2 tc:iproute2 nft:nftables python3:python3
log "$(ip -V 2>&1); $(nft --version 2>&1); $(python3 --version 2>&1)"

build_demo

step "faults: slow, vanished and stalled clients through a drain"
python3 .ci/faults/faults.py "$DEMO" --rounds "${FAULT_ROUNDS:-2}"
