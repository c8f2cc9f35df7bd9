#!/usr/bin/env bash
# Power cuts, for real: node B's store on a virtual disk in a qemu guest, the guest killed
# (SIGKILL to qemu, by PID) in the middle of an ingest, again and again; after each reboot the
# store must open and every piece B's daemon had acknowledged must be there and verify.
#
#   bash testbed/bt-vm/powercut.sh [MULE_BINARY]           short mode: 5 cuts (CI)
#   MULE_PC_CUTS=100 bash testbed/bt-vm/powercut.sh        soak (documented in README.md)
#
# As root (installs packages; the guest runs this host's /usr). Same kernel and initramfs cache
# as run.sh (kernel.sh). Exit 0 only if every cut happened, no store was corrupt and no
# acknowledged piece or publish was lost. See "Power cuts" in README.md next to this file.
#
# Environment:
#   MULE_PC_CUTS       number of power cuts (default 5)
#   MULE_PC_SIZE_MIB   size of the big bundle node B ingests (default 16)
#   MULE_PC_MAX_DELAY  cuts fall 1.5 s to this many seconds after the ingest starts (default 6:
#                      the 16 MiB arrive in about 2-6 s on a loaded TCG guest)
#   MULE_PC_SEED       random seed for the cut times (default: random, printed)
#   MULE_BTVM_CACHE, MULE_BTVM_ACCEL as for run.sh; MULE_BTVM_KERNEL as for run.sh but
#                      the default here is stable (6.1; the soak's figures are from it)
#   MULE_PC_OUT        results and logs (default $MULE_BTVM_CACHE/powercut-out)
#   MULE_PC_WORK       share + disk image, deleted at the start (default $MULE_BTVM_CACHE/powercut)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
T0=$(date +%s.%N)
since() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
say() { echo "[powercut $(since)s] $*"; }
die() { echo "[powercut] ERROR: $*" >&2; exit 2; }

BIN=${1:-${CARGO_TARGET_DIR:-$REPO/target}/release/mule}
CACHE=${MULE_BTVM_CACHE:-$HOME/.cache/mule-bt-vm}
OUT=${MULE_PC_OUT:-$CACHE/powercut-out}
ACCEL=${MULE_BTVM_ACCEL:-auto}
CUTS=${MULE_PC_CUTS:-5}
SIZE_MIB=${MULE_PC_SIZE_MIB:-16}
MAX_DELAY=${MULE_PC_MAX_DELAY:-6}
SEED=${MULE_PC_SEED:-$RANDOM$RANDOM}

[ "$(id -u)" = 0 ] || die "must run as root (installs packages; qemu shares /usr and /etc with the guest)"
[ -x "$BIN" ] || die "no mule binary at $BIN (build it: cargo build -p mule --release)"
command -v apt-get >/dev/null || die "needs a Debian host (apt-get): the guest runs this host's /usr"

. "$HERE/kernel.sh"
btvm_host_packages qemu-system-x86 cpio kmod zstd e2fsprogs python3
say "packages ready"

btvm_kernel

if [ "$ACCEL" = auto ]; then
    if [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then ACCEL=kvm; else ACCEL=tcg; fi
fi

# ------------------------------------------------------------------ the share and the disk
W=${MULE_PC_WORK:-$CACHE/powercut}
SHARE=$W/share
rm -rf "$W"; mkdir -p "$SHARE"/{src,state,out}
cp "$BIN" "$SHARE/mule"
cp "$HERE/guest/powercut.py" "$SHARE/"
cp "$HERE/guest/powercut-stage2.sh" "$SHARE/stage2.sh"
# The big bundle, published once here into node A's store (copied to the guest's tmpfs at
# every boot, so A is the same source each time), by a publisher B trusts.
"$SHARE/mule" key gen --out "$SHARE/src/key" >/dev/null
PUB=$("$SHARE/mule" key show "$SHARE/src/key" | tr -d '[:space:]')
python3 -c 'import os, sys; open(sys.argv[1], "wb").write(os.urandom(int(sys.argv[2]) << 20))' \
    "$SHARE/src/content.bin" "$SIZE_MIB"
ID=$("$SHARE/mule" --data-dir "$SHARE/src/a" publish "$SHARE/src/content.bin" --name powercut-big \
    --version 1 --key "$SHARE/src/key" --audience powercut --piece-size 65536 2>/dev/null | tail -1)
[ ${#ID} = 64 ] || die "publishing the source bundle failed"
python3 - "$SHARE/src" "$ID" "$PUB" <<'PY'
import hashlib, json, sys
d, bid, pub = sys.argv[1:]
data = open(d + '/content.bin', 'rb').read()
json.dump({'id': bid, 'publisher': pub, 'piece_size': 65536, 'pieces': (len(data) + 65535) // 65536,
           'sha256': hashlib.sha256(data).hexdigest()}, open(d + '/bundle.json', 'w'))
PY
# the store's disk: a raw image, ext4, attached with cache=none (O_DIRECT) by the host driver
truncate -s 512M "$W/disk.img"
mkfs.ext4 -q -F "$W/disk.img"
say "source bundle ${ID:0:12}… ($SIZE_MIB MiB, 64 KiB pieces), disk $W/disk.img (512 MiB ext4)"
say "$CUTS power cuts, accel=$ACCEL, seed $SEED"

set +e
python3 "$HERE/powercut_host.py" --share "$SHARE" --vmlinux "$VMLINUX" --initrd "$INITRD" \
    --disk "$W/disk.img" --cuts "$CUTS" --out "$SHARE/out/results.json" --accel "$ACCEL" \
    --max-delay "$MAX_DELAY" --seed "$SEED" --kernel "$KPKG"
RC=$?
set -e
rm -rf "$OUT"; mkdir -p "$OUT"; cp -a "$SHARE/out/." "$OUT/"
say "results: $OUT/results.json (console.log, node logs per cut)"
if [ $RC = 0 ]; then say "PASS"; else say "FAIL"; fi
exit $RC
