#!/bin/bash
# Stage 2 of the power-cut guest (copied into the share as stage2.sh, which guest/init runs):
# the minimal runtime directories, then one boot of guest/powercut.py. The host usually cuts
# the power (SIGKILL to qemu) long before this returns.
mkdir -p /run /var/lib /tmp /root && chmod 1777 /tmp
ln -sfn /run /var/run
/bbx/busybox ip link set lo up   # the nodes talk over loopback TCP
cp /mule/mule /tmp/mule
echo "mule-powercut: stage 2 at $(cut -d' ' -f1 /proc/uptime)"
python3 /mule/powercut.py
rc=$?
dmesg > /mule/out/dmesg-final.txt
echo "mule-powercut: guest exit $rc"
exit $rc
