#!/usr/bin/env bash
# Runs every fuzz target for a fixed time, one after another, and prints one line per
# target: executions, time, corpus size and findings (crash/timeout/leak/OOM artifacts).
#   bash fuzz/campaign.sh [SECONDS_PER_TARGET (default 300)] [TARGET ...]
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Builds with
# optimisations *and* debug assertions (overflow checks on): `cargo fuzz run -O -a`.
# Logs go to fuzz/logs/<target>.log, new corpus entries to fuzz/corpus/<target>/, findings to
# fuzz/artifacts/<target>/ (none of them committed).
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-300}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
mkdir -p logs
cargo +nightly fuzz build -O -a >/dev/null
printf '%-16s %12s %8s %8s %s\n' target execs seconds corpus findings
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    before=$(find "artifacts/$t" -type f | wc -l)
    # -max_len: beacons are at most 512 bytes; the others need room for a piece or a frame.
    case $t in
        beacon_decode) len=600 ;;
        manifest_decode) len=300000 ;;
        *) len=70000 ;;
    esac
    set +e
    cargo +nightly fuzz run -O -a "$t" "corpus/$t" -- -max_total_time="$secs" \
        -max_len="$len" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"logs/$t.log" 2>&1
    rc=$?
    set -e
    execs=$(grep -oP 'stat::number_of_executed_units:\s*\K[0-9]+' "logs/$t.log" | tail -1)
    took=$(grep -oP 'Done [0-9]+ runs in \K[0-9]+' "logs/$t.log" | tail -1)
    after=$(find "artifacts/$t" -type f | wc -l)
    corpus=$(find "corpus/$t" -type f | wc -l)
    found=$((after - before))
    [ "$rc" = 0 ] || [ "$found" -gt 0 ] || found="exit $rc (see logs/$t.log)"
    printf '%-16s %12s %8s %8s %s\n' "$t" "${execs:-?}" "${took:-?}" "$corpus" "$found"
done
