#!/bin/sh
# Kill soak (issue 18): SIGKILLs a receiving mule daemon N times (default 1000) over a
# network-namespace link, restarts it each time, runs `mule verify` after every restart and
# reports the bytes that crossed the link against the content delivered (target <= 1.10 x
# after TCP/IP headers) and any integrity failure. Needs root. Not part of CI.
#
#   testbed/soak/kill-soak.sh [--kills N] [--size BYTES] [--seed N] [--rate TC_RATE] [--recycle ROUNDS]
#
# Exit status 0 only with zero lost pieces, zero verify failures and the byte target met.
set -eu
cd "$(dirname "$0")/../.."
cargo build -q -p mule --bin mule
cargo build -q -p mule-testbed --bin mule-kill-soak
dir="${CARGO_TARGET_DIR:-target}"
exec "$dir/debug/mule-kill-soak" --mule "$dir/debug/mule" "$@"
