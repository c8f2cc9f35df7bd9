#!/usr/bin/env bash
# Mule over real BlueZ: boots a throw-away qemu guest (Debian's backports kernel, this host's
# /usr shared read-only over 9p) with two virtual Bluetooth controllers (btvirt -l2) and
# bluetoothd, runs two `mule run` nodes there (one per controller, Wi-Fi discovery off) and
# checks that bundles cross over Bluetooth alone, including a resume after the link breaks.
#
#   bash testbed/bt-vm/run.sh [MULE_BINARY]        (as root; default: target/release/mule)
#
# Verdict: exit 0 only if the guest wrote results.json with every step passed and the guest
# kernel logged no oops/BUG. Any failure to run at all (not root, no qemu, no kernel, guest
# timeout) is a non-zero exit with a message, never a pass. See README.md next to this file.
#
# Environment:
#   MULE_BTVM_CACHE   kernel/initramfs cache (default ~/.cache/mule-bt-vm)
#   MULE_BTVM_KERNEL  backports (default: Debian's backports kernel, 6.12 on bookworm) or
#                     stable (the release's linux-image-amd64, 6.1 on bookworm; it oopses now
#                     and then in L2CAP teardown); see kernel.sh
#   MULE_BTVM_OUT     where results and logs go (default $MULE_BTVM_CACHE/out)
#   MULE_BTVM_ACCEL   auto|kvm|tcg (auto: KVM only with a writable /dev/kvm AND vmx/svm)
#   MULE_BTVM_TIMEOUT whole-VM limit in seconds (default 420)
#   MULE_BTVM_BIG_KIB size of the resume bundle in KiB (default 2048)
#   MULE_BTVM_KDEBUG  1: the guest kernel's Bluetooth debug messages go to kdebug.txt
#   MULE_BTVM_REQUIRE steps that decide the exit status, comma-separated (default: all,
#                     which CI uses)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
T0=$(date +%s.%N)
since() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
say() { echo "[bt-vm $(since)s] $*"; }
die() { echo "[bt-vm] ERROR: $*" >&2; exit 2; }

BIN=${1:-${CARGO_TARGET_DIR:-$REPO/target}/release/mule}
CACHE=${MULE_BTVM_CACHE:-$HOME/.cache/mule-bt-vm}
OUT=${MULE_BTVM_OUT:-$CACHE/out}
ACCEL=${MULE_BTVM_ACCEL:-auto}
TIMEOUT=${MULE_BTVM_TIMEOUT:-420}
BIG_KIB=${MULE_BTVM_BIG_KIB:-2048}

[ "$(id -u)" = 0 ] || die "must run as root (installs packages; qemu shares /usr and /etc with the guest)"
[ -x "$BIN" ] || die "no mule binary at $BIN (build it: cargo build -p mule --release)"
command -v apt-get >/dev/null || die "needs a Debian host (apt-get): the guest runs this host's /usr"

# ------------------------------------------------------------------ packages
# The guest's userspace is this host's /usr, so BlueZ, dbus and python3 are installed here.
# busybox-static and the kernel are only downloaded (busybox-static conflicts with busybox).
# kernel.sh: helpers shared with powercut.sh (packages, kernel + initramfs). This test boots
# the backports kernel unless told otherwise (6.1 oopses in L2CAP teardown now and then).
export MULE_BTVM_KERNEL=${MULE_BTVM_KERNEL:-backports}
. "$HERE/kernel.sh"
btvm_host_packages qemu-system-x86 cpio kmod zstd bluez bluez-test-tools dbus python3
for t in btvirt btmgmt btmon dbus-daemon; do command -v $t >/dev/null || die "$t missing after install"; done
[ -x /usr/libexec/bluetooth/bluetoothd ] || die "bluetoothd missing after install"
say "packages ready"

# ------------------------------------------------------------------ kernel + initramfs (cached)
btvm_kernel

# ------------------------------------------------------------------ share with the guest
SHARE=$CACHE/share
rm -rf "$SHARE"; mkdir -p "$SHARE/out"
cp "$HERE"/guest/stage2.sh "$HERE"/guest/scenario.py "$SHARE/"
cp "$BIN" "$SHARE/mule"
printf 'BIG_KIB=%s\nKDEBUG=%s\n' "$BIG_KIB" "${MULE_BTVM_KDEBUG:-0}" > "$SHARE/env"

if [ "$ACCEL" = auto ]; then
    if [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then ACCEL=kvm; else ACCEL=tcg; fi
fi
case $ACCEL in
    kvm) ACCEL_ARGS=(-accel kvm -cpu host) ;;
    tcg) ACCEL_ARGS=(-accel tcg -cpu max) ;;
    *) die "MULE_BTVM_ACCEL must be auto, kvm or tcg" ;;
esac
say "booting the guest (accel=$ACCEL, limit ${TIMEOUT}s)"
TB=$(date +%s.%N)
set +e
timeout "$TIMEOUT" qemu-system-x86_64 "${ACCEL_ARGS[@]}" -m 1024 -smp 2 \
    -nodefaults -no-user-config -display none -serial stdio -no-reboot \
    -kernel "$VMLINUX" -initrd "$INITRD" \
    -append "console=ttyS0 quiet panic=-1 mule.modset=bt" \
    -virtfs local,path=/usr,mount_tag=usr,security_model=none,readonly=on \
    -virtfs local,path=/etc,mount_tag=etc,security_model=none,readonly=on \
    -virtfs "local,path=$SHARE,mount_tag=mule,security_model=none" </dev/null 2>&1 |
    while IFS= read -r line; do
        printf '[%6.2f] %s\n' "$(awk -v a="$TB" -v b="$(date +%s.%N)" 'BEGIN{print b-a}')" "$line"
    done > "$SHARE/out/console.log"
QRC=${PIPESTATUS[0]}
set -e
VM_S=$(awk -v a="$TB" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
READY=$(grep -m1 'MULE-BTVM-READY' "$SHARE/out/console.log" | sed 's/^\[ *\([0-9.]*\)\].*/\1/' || true)
rm -rf "$OUT"; mkdir -p "$OUT"; cp -a "$SHARE/out/." "$OUT/"
say "guest finished: qemu exit $QRC, VM wall ${VM_S}s, boot-to-ready ${READY:-n/a}s (host clock)"
[ "$QRC" = 124 ] && echo "[bt-vm] the guest hit the ${TIMEOUT}s limit" >&2

# ------------------------------------------------------------------ verdict
set +e
python3 - "$OUT" "$QRC" "$VM_S" "${READY:-}" <<'PY'
import json, os, re, sys
out, qrc, vm_s, ready = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
path = os.path.join(out, 'results.json')
try:
    r = json.load(open(path))
except Exception as e:
    r = {'steps': [], 'measurements': {}, 'all_ok': False, 'fatal': 'no results.json from the guest: %s' % e}
r.setdefault('measurements', {})
r['measurements']['vm_wall_s'] = vm_s
r['measurements']['boot_to_ready_s'] = float(ready) if ready else None
problems = []
dmesg = ''
try:
    dmesg = open(os.path.join(out, 'dmesg.txt'), errors='replace').read()
except OSError:
    problems.append('no dmesg.txt from the guest')
bad = [l for l in dmesg.splitlines() if re.search(r'BUG:|Oops|kernel BUG|list_del corruption|general protection', l)]
r['steps'].append({'name': 'guest_kernel_clean', 'ok': not bad and bool(dmesg), 'detail': bad[:5] or 'no oops/BUG in dmesg'})
if qrc != 0:
    problems.append('qemu exit status %d (124 = timeout)' % qrc)
all_ok = bool(r['steps']) and all(s.get('ok') for s in r['steps']) and not problems and not r.get('fatal')
r['all_ok'] = all_ok
# MULE_BTVM_REQUIRE=step,step,... judges only those steps (each must be present and pass);
# the default, "all", judges every step, the kernel check and qemu's exit.
require = os.environ.get('MULE_BTVM_REQUIRE', 'all').strip()
if require == 'all':
    ok = all_ok
else:
    names = [n.strip() for n in require.split(',') if n.strip()]
    got = {s['name']: s.get('ok') for s in r['steps']}
    missing = [n for n in names if got.get(n) is not True]
    ok = bool(names) and not missing
    if missing:
        problems.append('required steps not passed: %s' % ', '.join(missing))
    r['required_steps'] = names
if problems:
    r['host_problems'] = problems
json.dump(r, open(path, 'w'), indent=2)
print('[bt-vm] ---- steps ----')
for s in r['steps']:
    t = s.get('seconds')
    print('[bt-vm] %-4s %-28s %8s  %s' % ('PASS' if s.get('ok') else ('FAIL' if require == 'all' or s['name'] in r.get('required_steps', []) else 'fail (not required)'), s['name'],
          '%.2fs' % t if isinstance(t, (int, float)) else '', s.get('detail', '')))
print('[bt-vm] ---- measurements ----')
for k, v in r['measurements'].items():
    print('[bt-vm] %-36s %s' % (k, v))
for p in problems + ([r['fatal']] if r.get('fatal') else []):
    print('[bt-vm] PROBLEM: %s' % p)
sys.exit(0 if ok else 1)
PY
RC=$?
set -e
say "results: $OUT/results.json (logs, btsnoop capture and dmesg in $OUT)"
if [ $RC = 0 ]; then say "PASS"; else say "FAIL"; fi
exit $RC
