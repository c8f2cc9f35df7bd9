#!/usr/bin/env bash
# Live systemd test (issue 11): boots a minimal Debian system with systemd as PID 1 in the
# qemu guest, installs the mule .deb in it and checks what an operator relies on:
#   install      dpkg -i succeeds, the unit is installed and not enabled
#   ready        `systemctl start mule` returns (Type=notify: READY=1 sent) within READY_LIMIT
#   group_status `mule --data-dir /var/lib/mule status` works for a user in the `mule` group,
#                and is refused for one outside it
#   watchdog     a daemon hung with SIGSTOP is killed and restarted by the watchdog
#   clean_stop   `systemctl stop mule` ends it with exit status 0 and Result=success
#   journal      journald carries the structured fields (MULE_NODE, PRIORITY, TARGET, ...)
#   security     `systemd-analyze security mule.service` exposure (<= 2.0)
#   purge        dpkg --purge removes the unit
# Runs as root; installs qemu, debootstrap and e2fsprogs if missing. The root filesystem (Debian
# minbase + systemd, debootstrapped from the host's own apt source, ~60 MB download) is built
# once and cached as an ext4 image; every run boots a copy of it.
#
#   testbed/bt-vm/systemd.sh [path/to/mule_*.deb]   (default: the newest target/debian/mule_*.deb)
#
# Environment: MULE_BTVM_CACHE, MULE_BTVM_ACCEL, MULE_BTVM_KERNEL as for run.sh;
#   MULE_SD_OUT       results and logs (default $MULE_BTVM_CACHE/systemd-out)
#   MULE_SD_TIMEOUT   whole-VM limit in seconds (default 600)
# Exit status 0 only when every step passed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
T0=$(date +%s.%N)
since() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
say() { echo "[systemd-vm $(since)s] $*"; }
die() { echo "[systemd-vm] ERROR: $*" >&2; exit 2; }

DEB=${1:-$(ls -t "${CARGO_TARGET_DIR:-$REPO/target}"/debian/mule_*.deb 2>/dev/null | head -1 || true)}
CACHE=${MULE_BTVM_CACHE:-$HOME/.cache/mule-bt-vm}
OUT=${MULE_SD_OUT:-$CACHE/systemd-out}
ACCEL=${MULE_BTVM_ACCEL:-auto}
TIMEOUT=${MULE_SD_TIMEOUT:-600}

[ "$(id -u)" = 0 ] || die "must run as root (installs packages, builds a root filesystem)"
[ -n "$DEB" ] && [ -f "$DEB" ] || die "no mule .deb (build it: cargo deb -p mule; or pass its path)"
command -v apt-get >/dev/null || die "needs a Debian host (apt-get, debootstrap)"

. "$HERE/kernel.sh"
btvm_host_packages qemu-system-x86 cpio kmod zstd e2fsprogs debootstrap python3
say "packages ready"
btvm_kernel

# The guest's own units (written into each run's copy of the image with debugfs, so that
# changing them does not rebuild the cached root filesystem): a target holding only the test
# runner (no getty, no network), which powers the VM off when the runner ends.
read -r -d '' UNITS <<'EOF' || true
#### mule-ci.target
[Unit]
Description=Mule live-systemd test
Requires=basic.target mule-ci.service
After=basic.target mule-ci.service
AllowIsolate=yes
#### mule-ci.service
[Unit]
Description=Mule live-systemd test runner (/mule/systemd-test.sh)
After=basic.target systemd-journald.service
SuccessAction=poweroff-force
FailureAction=poweroff-force
[Service]
Type=oneshot
ExecStart=/bin/bash /mule/systemd-test.sh
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity
EOF
PKGS=systemd,systemd-sysv,dbus,procps
# The image's key: the package list and the base set-up below (bump BASE when changing it).
BASE=1
KEY=$(printf '%s\n%s\n' "$PKGS" "$BASE" | sha256sum | cut -c1-12)
IMG=$CACHE/sd-rootfs-$KEY.img
if [ ! -s "$IMG" ]; then
    read -r MIRROR KEYRING < <(btvm_host_mirror bookworm)
    # A finished debootstrap is kept (marker file) so that a failure later in the image
    # build does not download and unpack it all again.
    RD=$CACHE/sd-rootfs-$(printf '%s' "$PKGS" | sha256sum | cut -c1-12).dir
    if [ ! -e "$RD/.mule-debootstrap-done" ]; then
        rm -rf "$RD"
        say "building the guest root filesystem (debootstrap minbase + $PKGS; 3-5 minutes idle, once)"
        kr=(); [ "$KEYRING" != - ] && kr=(--keyring="$KEYRING")
        debootstrap --variant=minbase "${kr[@]}" --include="$PKGS" bookworm "$RD" "$MIRROR" |
            awk '/^I: (Retrieving|Validating|Unpacking|Configuring|Extracting)/{n++; if (n % 40 == 0) print "[systemd-vm] debootstrap: " $0; fflush(); next} {print "[systemd-vm] debootstrap: " $0; fflush()}'
        [ -x "$RD/lib/systemd/systemd" ] || die "debootstrap did not produce a system with systemd"
        touch "$RD/.mule-debootstrap-done"
    fi
    echo mule-ci > "$RD/etc/hostname"
    : > "$RD/etc/machine-id"
    printf '/dev/vda / ext4 rw 0 1\n' > "$RD/etc/fstab"
    mkdir -p "$RD/mule"
    rm -rf "$RD"/var/cache/apt/archives/*.deb "$RD"/var/lib/apt/lists/*
    truncate -s 1G "$IMG.tmp"
    mkfs.ext4 -q -F -d "$RD" "$IMG.tmp"
    mv "$IMG.tmp" "$IMG"
    rm -rf "$RD"
    say "root filesystem ready: $IMG"
else
    say "root filesystem cached: $IMG"
fi

W=$CACHE/systemd
rm -rf "$W"; mkdir -p "$W/share/out"
cp --sparse=always "$IMG" "$W/disk.img"
mkdir -p "$W/units"
printf '%s\n' "$UNITS" | awk -v d="$W/units" '/^#### /{f=d "/" $2; next} {print > f}'
for u in "$W"/units/*; do
    n=/etc/systemd/system/$(basename "$u")
    debugfs -w -R "rm $n" "$W/disk.img" >/dev/null 2>&1 || true
    debugfs -w -R "write $u $n" "$W/disk.img" >/dev/null 2>&1
    debugfs -R "stat $n" "$W/disk.img" 2>/dev/null | grep -q 'Type: regular' || die "could not write $n into the guest image"
done
cp "$DEB" "$W/share/mule.deb"
cp "$HERE/guest/systemd-test.sh" "$W/share/"

if [ "$ACCEL" = auto ]; then
    if [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then ACCEL=kvm; else ACCEL=tcg; fi
fi
case $ACCEL in
    kvm) ACCEL_ARGS=(-accel kvm -cpu host) ;;
    tcg) ACCEL_ARGS=(-accel tcg -cpu max) ;;
    *) die "MULE_BTVM_ACCEL must be auto, kvm or tcg" ;;
esac
say "booting systemd in the guest (accel=$ACCEL, limit ${TIMEOUT}s, package $(basename "$DEB"))"
TB=$(date +%s.%N)
set +e
timeout "$TIMEOUT" qemu-system-x86_64 "${ACCEL_ARGS[@]}" -m 1024 -smp 2 \
    -nodefaults -no-user-config -display none -serial stdio -no-reboot \
    -kernel "$VMLINUX" -initrd "$INITRD" \
    -append "console=ttyS0 quiet loglevel=3 panic=-1 mule.modset=disk mule.root=/dev/vda systemd.unit=mule-ci.target systemd.show_status=0" \
    -drive "file=$W/disk.img,if=virtio,format=raw,cache=unsafe" \
    -virtfs "local,path=$W/share,mount_tag=mule,security_model=none" </dev/null 2>&1 |
    while IFS= read -r line; do
        t=$(awk -v a="$TB" -v b="$(date +%s.%N)" 'BEGIN{printf "%6.2f", b-a}')
        printf '[%s] %s\n' "$t" "$line" >> "$W/share/out/console.log"
        # the runner's step lines, so that no minute of CI is silent
        case $line in *mule-sd:*) echo "[systemd-vm] guest ${t}s: ${line#*mule-sd: }" ;; esac
    done
QRC=${PIPESTATUS[0]}
set -e
VM_S=$(awk -v a="$TB" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
rm -rf "$OUT"; mkdir -p "$OUT"; cp -a "$W/share/out/." "$OUT/"
say "guest finished: qemu exit $QRC, VM wall ${VM_S}s"
[ "$QRC" = 124 ] && echo "[systemd-vm] the guest hit the ${TIMEOUT}s limit" >&2

set +e
python3 - "$OUT" "$QRC" "$VM_S" <<'PY'
import json, os, sys
out, qrc, vm_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
path = os.path.join(out, 'results.json')
try:
    r = json.load(open(path))
except Exception as e:
    r = {'steps': [], 'measurements': {}, 'fatal': 'no results.json from the guest: %s' % e}
r.setdefault('measurements', {})['vm_wall_s'] = vm_s
problems = ['qemu exit status %d (124 = timeout)' % qrc] if qrc != 0 else []
want = ['install', 'ready', 'group_status', 'watchdog', 'clean_stop', 'journal', 'security', 'purge']
got = {s['name']: s for s in r['steps']}
missing = [n for n in want if n not in got]
if missing:
    problems.append('steps that never ran: %s' % ', '.join(missing))
ok = not problems and not r.get('fatal') and all(s.get('ok') for s in r['steps'])
r['all_ok'] = ok
if problems:
    r['host_problems'] = problems
json.dump(r, open(path, 'w'), indent=2)
print('[systemd-vm] ---- steps ----')
for s in r['steps']:
    t = s.get('seconds')
    print('[systemd-vm] %-4s %-14s %8s  %s' % ('PASS' if s.get('ok') else 'FAIL', s['name'],
          '%.2fs' % t if isinstance(t, (int, float)) else '', s.get('detail', '')))
print('[systemd-vm] ---- measurements ----')
for k, v in r['measurements'].items():
    print('[systemd-vm] %-28s %s' % (k, v))
for p in problems + ([r['fatal']] if r.get('fatal') else []):
    print('[systemd-vm] PROBLEM: %s' % p)
sys.exit(0 if ok else 1)
PY
RC=$?
set -e
say "results: $OUT/results.json (console.log, journal.txt, journal.json in $OUT)"
if [ $RC = 0 ]; then say "PASS"; else say "FAIL"; fi
exit $RC
