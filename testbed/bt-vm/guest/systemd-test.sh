#!/bin/bash
# The live-systemd test inside the guest (testbed/bt-vm/systemd.sh copies it into the share;
# mule-ci.service runs it under the guest's systemd, PID 1). Writes /mule/out/results.json and
# the journal; the host script judges and prints them. Each step prints one "mule-sd:" line.
set -u
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
OUT=/mule/out
READY_LIMIT=${READY_LIMIT:-30}   # seconds from `systemctl start` to READY=1 (software-emulated guest)
STEPS=()
MEAS=()
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}'; }
esc() { printf '%s' "$1" | head -c 600 | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' | tr '\n\t' '  '; }
step() { # name ok(0|1) seconds detail
    local ok=false; [ "$2" = 0 ] && ok=true
    STEPS+=("{\"name\": \"$1\", \"ok\": $ok, \"seconds\": $3, \"detail\": \"$(esc "$4")\"}")
    echo "mule-sd: $([ "$2" = 0 ] && echo PASS || echo FAIL) $1 ($3 s) $4"
}
measure() { MEAS+=("\"$1\": $2"); }
prop() { systemctl show -p "$2" --value "$1"; }
wait_for() { # seconds command...: polls every 0.2 s until the command succeeds
    local end=$(( $(date +%s) + $1 )); shift
    until "$@"; do [ "$(date +%s)" -ge $end ] && return 1; sleep 0.2; done
}
finish() {
    journalctl --no-pager -u mule > $OUT/journal.txt 2>&1
    journalctl --no-pager -b -o short-monotonic > $OUT/journal-boot.txt 2>&1
    {
        echo '{"steps": ['
        (IFS=,; echo "${STEPS[*]}")
        echo '], "measurements": {'
        (IFS=,; echo "${MEAS[*]}")
        echo '}}'
    } > $OUT/results.json
    sync
    # mule-ci.service's SuccessAction/FailureAction power off too; this does it at once,
    # whatever state the service manager is in (nothing in the guest needs saving).
    echo "mule-sd: powering off"
    systemctl --force --force poweroff
}
trap finish EXIT
echo "mule-sd: runner up at $(cut -d' ' -f1 /proc/uptime) s after boot (systemd $(systemctl --version | head -1 | cut -d' ' -f2))"
measure boot_to_runner_s "$(cut -d' ' -f1 /proc/uptime)"

# 1. install
t=$(now)
if dpkg -i /mule/mule.deb > $OUT/dpkg-install.log 2>&1; then
    d="installed $(dpkg-query -W -f='${Version}' mule)"
    rc=0
    systemctl is-enabled mule >/dev/null 2>&1 && { rc=1; d="$d, but the package enabled mule.service"; }
    [ "$(prop mule.service LoadState)" = loaded ] || { rc=1; d="$d, but systemd does not load mule.service"; }
else
    rc=1; d="dpkg -i failed: $(tail -3 $OUT/dpkg-install.log)"
fi
step install $rc "$(secs $t)" "$d"
[ $rc = 0 ] || exit 0

# 2. ready: Type=notify, so `systemctl start` returns once the daemon sent READY=1
t=$(now)
if timeout 120 systemctl start mule; then
    s=$(secs $t)
    measure start_to_ready_s "$s"
    rc=0; d="active after ${s} s (limit ${READY_LIMIT} s); status text: $(prop mule StatusText)"
    awk -v s="$s" -v l="$READY_LIMIT" 'BEGIN{exit !(s <= l)}' || rc=1
else
    rc=1; d="systemctl start failed: $(systemctl status mule --no-pager 2>&1 | tail -5)"
fi
step ready $rc "$(secs $t)" "$d"

# 3. the CLI for an operator in the `mule` group, and not for anyone else
t=$(now)
useradd -m -G mule fleetop && useradd -m stranger
if out=$(runuser -u fleetop -- mule --data-dir /var/lib/mule status 2>&1); then
    rc=0; d="fleetop (in group mule): $(echo "$out" | head -1)"
    if o2=$(runuser -u stranger -- mule --data-dir /var/lib/mule status 2>&1) || ! echo "$o2" | grep -q "adduser"; then
        rc=1; d="$d; a user outside the group was not refused with the group hint: $(echo "$o2" | head -1)"
    else
        d="$d; stranger (not in the group) refused: $(echo "$o2" | head -1)"
    fi
else
    rc=1; d="status failed for a member of group mule: $out"
fi
step group_status $rc "$(secs $t)" "$d"

# 4. watchdog: a daemon that hangs (SIGSTOP) is killed and restarted. A drop-in shortens the
# shipped WatchdogSec=30 / TimeoutStopSec=30 to keep the test short; the mechanism is the same.
mkdir -p /etc/systemd/system/mule.service.d
printf '[Service]\nWatchdogSec=8s\nTimeoutAbortSec=4s\n' > /etc/systemd/system/mule.service.d/ci.conf
systemctl daemon-reload
systemctl restart mule
t=$(now)
pid=$(prop mule MainPID); n0=$(prop mule NRestarts)
kill -STOP "$pid"
restarted() {
    local p; p=$(prop mule MainPID)
    [ "$(prop mule NRestarts)" -gt "$n0" ] && [ "$p" != 0 ] && [ "$p" != "$pid" ] &&
        [ "$(prop mule ActiveState)" = active ]
}
if wait_for 90 restarted; then
    s=$(secs $t)
    measure hang_to_restarted_s "$s"
    rc=0; d="pid $pid stopped; restarted as pid $(prop mule MainPID) after ${s} s"
    journalctl --no-pager -u mule | grep -q -i 'watchdog timeout' || { rc=1; d="$d, but the journal names no watchdog timeout"; }
else
    rc=1; d="not restarted within 90 s: $(systemctl status mule --no-pager 2>&1 | tail -5)"
fi
step watchdog $rc "$(secs $t)" "$d"
rm -rf /etc/systemd/system/mule.service.d; systemctl daemon-reload

# 5. clean stop
t=$(now)
systemctl stop mule
s=$(secs $t)
measure stop_s "$s"
res=$(prop mule Result); code=$(prop mule ExecMainCode); st=$(prop mule ExecMainStatus)
d="stopped in ${s} s: Result=$res ExecMainCode=$code ExecMainStatus=$st"
rc=0
[ "$res" = success ] && [ "$st" = 0 ] || rc=1
journalctl --no-pager -u mule -o cat | tail -20 | grep -q 'stopped' || { rc=1; d="$d; no 'stopped' line from the daemon"; }
step clean_stop $rc "$s" "$d"

# 6. structured journal fields (native journald protocol)
t=$(now)
journalctl --no-pager -u mule -o json > $OUT/journal.json 2>&1
line=$(grep '"MESSAGE":"ready"' $OUT/journal.json | tail -1)
rc=1; d="no 'ready' entry in the journal"
if [ -n "$line" ]; then
    d="ready entry:"
    rc=0
    for f in '"MULE_NODE":"[0-9a-f]{16,}' '"MULE_LISTEN":' '"PRIORITY":"5"' '"TARGET":"mule' '"SYSLOG_IDENTIFIER":"mule"' '"CODE_FILE":'; do
        if echo "$line" | grep -Eq "$f"; then d="$d ${f%%:*}"; else rc=1; d="$d missing ${f%%:*}"; fi
    done
fi
warn=$(grep -c '"PRIORITY":"4"' $OUT/journal.json || true)
d="$d; $warn warning entries (PRIORITY=4)"
step journal $rc "$(secs $t)" "$d"

# 7. sandboxing score
t=$(now)
systemd-analyze security mule.service --no-pager > $OUT/security.txt 2>&1
score=$(sed -n 's/.*Overall exposure level for mule.service: *\([0-9.]*\).*/\1/p' $OUT/security.txt)
if [ -n "$score" ]; then
    measure security_exposure "$score"
    rc=0; awk -v s="$score" 'BEGIN{exit !(s <= 2.0)}' || rc=1
    d="$(grep 'Overall exposure' $OUT/security.txt)"
else
    rc=1; d="no score: $(tail -3 $OUT/security.txt)"
fi
step security $rc "$(secs $t)" "$d"

# 8. purge
t=$(now)
if dpkg --purge mule > $OUT/dpkg-purge.log 2>&1; then
    systemctl daemon-reload
    rc=0; d="purged; LoadState=$(prop mule.service LoadState)"
    [ "$(prop mule.service LoadState)" = not-found ] || rc=1
    [ -e /usr/bin/mule ] && { rc=1; d="$d; /usr/bin/mule left behind"; }
else
    rc=1; d="dpkg --purge failed: $(tail -3 $OUT/dpkg-purge.log)"
fi
step purge $rc "$(secs $t)" "$d"
echo "mule-sd: done"
