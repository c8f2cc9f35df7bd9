#!/bin/sh
# Regenerates everything in testbed/results/. Run from the workspace root:
#   sh testbed/results/run.sh
# The traces are read from ../shared/traces (see its PROVENANCE.md).
set -eu
T=${TRACES:-../shared/traces}
OUT=testbed/results
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release -p mule-testbed
B="$CARGO_TARGET_DIR/release/mule-testbed"

# Headline runs: 2 MB update at node 0, published at 25% of the trace, audience all,
# 8 Mbit/s, contacts shorter than 10 s extended to 10 s, seed 1, all four strategies.
for tr in infocom05 cambridge_students intel; do
  "$B" simulate --trace "$T/$tr.csv" --rate 8mbit --publish 2MB@0 --publish-at 0.25 \
    --audience all --min-contact 10 --seed 1 --out "$OUT/$tr"
done

# Social prediction vs rarest-first alone: audience 30%, carry quota 1 MB and 256 MiB
# (the daemon's default), seeds 1-5 (the seed also picks the audience).
for tr in infocom05 cambridge_students intel; do
  for q in 1MB 256MiB; do
    for seed in 1 2 3 4 5; do
      "$B" simulate --trace "$T/$tr.csv" --rate 8mbit --publish 2MB@0 --publish-at 0.25 \
        --audience 0.3 --carry-quota "$q" --min-contact 10 --seed "$seed" \
        --strategies mule,rarest --out "$OUT/prediction/$tr-q$q-seed$seed"
    done
  done
done
