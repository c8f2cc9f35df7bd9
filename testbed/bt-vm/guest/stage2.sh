#!/bin/bash
# Stage 2 of the Mule Bluetooth guest (the host's userspace over 9p): system D-Bus, btmon
# capture, two linked virtual controllers (btvirt -l2), bluetoothd, a readiness barrier, then
# the scenario (scenario.py), which writes /mule/out/results.json. dmesg is saved for the
# host's oops check whatever happens.
set -u
OUT=/mule/out
up() { cut -d' ' -f1 /proc/uptime; }
fail() { echo "mule-btvm: $*"; printf '{"steps":[{"name":"guest_setup","ok":false,"detail":"%s"}],"measurements":{},"all_ok":false}\n' "$*" > $OUT/results.json; exit 1; }
trap 'dmesg > $OUT/dmesg.txt; btmgmt info > $OUT/btmgmt-info.txt 2>&1' EXIT
mkdir -p /run/dbus /var/lib/bluetooth /var/lib/dbus /tmp /root && chmod 1777 /tmp
ln -sfn /run /var/run
[ -e /dev/vhci ] || fail "/dev/vhci missing (hci_vhci not loaded)"
dbus-daemon --system --fork || fail "dbus-daemon did not start"
btmon -w $OUT/hci.btsnoop >/dev/null 2>&1 &
# MULE_BTVM_KDEBUG=1: the kernel's Bluetooth debug messages (dynamic debug), streamed to kdebug.txt
if grep -qx 'KDEBUG=1' /mule/env; then
    echo 'module bluetooth +pft' > /sys/kernel/debug/dynamic_debug/control || echo "mule-btvm: no dynamic debug"
    dmesg -w > $OUT/kdebug.txt 2>&1 &
fi
# Two controllers in ONE btvirt process (only those see each other). The kernel resets a new
# vhci controller at once with a 2 s timeout; a slow guest's btvirt can miss it and the
# controller stays stuck in setup, so count usable controllers and restart btvirt if needed.
# Reading btvirt and its libraries over 9p once beforehand makes it start fast enough more often.
cat /usr/bin/btvirt /usr/bin/btmgmt /usr/bin/stdbuf > /dev/null
ok=0
for try in 1 2 3; do
    stdbuf -oL -eL btvirt -l2 >> $OUT/btvirt.log 2>&1 &
    BTVIRT=$!
    end=$((SECONDS + 25)); stuck=$(dmesg | grep -c "Opcode 0x0c03 failed")
    while [ $SECONDS -lt $end ]; do
        n=$(btmgmt info 2>/dev/null | grep -c '^hci[0-9]*:')
        [ "$n" -ge 2 ] && { ok=1; break; }
        # a controller that missed its reset stays in setup for good: restart btvirt at once
        [ "$(dmesg | grep -c "Opcode 0x0c03 failed")" -gt "$stuck" ] && break
        sleep 0.25
    done
    [ $ok = 1 ] && break
    echo "mule-btvm: btvirt try $try gave $n usable controller(s); restarting it"
    kill $BTVIRT; wait $BTVIRT 2>/dev/null; sleep 0.5
done
[ $ok = 1 ] || fail "btvirt: no two usable controllers after 3 tries"
echo "mule-btvm: controllers up at $(up)"
/usr/libexec/bluetooth/bluetoothd -n -d > $OUT/bluetoothd.log 2>&1 &
echo $! > /run/bluetoothd.pid
# Readiness: bluetoothd has taken both adapters and powered them (AutoEnable). Setting
# anything before that answers org.bluez.Error.Busy.
for _ in $(seq 150); do
    p=$(for i in 0 1; do btmgmt --index $i info 2>/dev/null | grep -m1 'current settings' | grep -cw powered; done | grep -c 1)
    [ "$p" = 2 ] && dbus-send --system --print-reply --dest=org.bluez / org.freedesktop.DBus.Peer.Ping >/dev/null 2>&1 && break
    sleep 0.2
done
[ "$p" = 2 ] || fail "adapters not powered by bluetoothd within 30 s"
echo "MULE-BTVM-READY uptime=$(up)"
up > /run/ready-uptime
timeout 330 python3 /mule/scenario.py
rc=$?
echo "mule-btvm: scenario exit $rc at $(up)"
kill -0 $BTVIRT 2>/dev/null || echo "mule-btvm: btvirt died during the run"
exit $rc
