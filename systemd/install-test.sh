#!/usr/bin/env bash
# Installs a built mule .deb with dpkg on this machine, checks what it put
# there, and purges it again: the round trip an operator's first
# `dpkg -i mule_*.deb` takes. Run as root (CI does). Usage:
#   systemd/install-test.sh path/to/mule_*.deb
# Exit status 0 when install, checks and purge all succeeded; 1 otherwise.
# Refuses to run when a mule package is already installed (it would be purged).
set -euo pipefail

deb=${1:?usage: $0 path/to/mule.deb}
[ -f "$deb" ] || { echo "install-test: no such file: $deb" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "install-test: needs root (dpkg -i)" >&2; exit 1; }
if dpkg-query -W -f='${Status}' mule 2>/dev/null | grep -q 'installed'; then
    echo "install-test: a mule package is already installed here; not touching it" >&2
    exit 1
fi

fail=0
problem() { echo "install-test: $*" >&2; fail=1; }
purge() { dpkg --purge mule >/dev/null 2>&1 || true; }
trap purge EXIT

echo "install-test: dpkg -i $deb"
if ! dpkg -i "$deb"; then
    echo "install-test: dpkg -i failed" >&2
    exit 1
fi
dpkg-query -W -f='${Status}\n' mule | grep -qx 'install ok installed' \
    || problem "dpkg does not list mule as installed"

# The binary runs and reads the shipped configuration.
/usr/bin/mule --version >/dev/null || problem "/usr/bin/mule --version failed"
/usr/bin/mule config check /etc/mule/mule.toml >/dev/null \
    || problem "the shipped /etc/mule/mule.toml does not pass mule config check"

# The user and group the unit runs as.
getent passwd mule >/dev/null || problem "no mule user after install"
getent group mule >/dev/null || problem "no mule group after install"
shell=$(getent passwd mule | cut -d: -f7)
case "$shell" in */nologin|*/false) ;; *) problem "mule user has a login shell: $shell" ;; esac

# The unit is installed and not enabled.
unit=""
for u in /usr/lib/systemd/system/mule.service /lib/systemd/system/mule.service; do
    [ -f "$u" ] && unit=$u
done
[ -n "$unit" ] || problem "mule.service not installed"
if ls /etc/systemd/system/*.wants/mule.service >/dev/null 2>&1; then
    problem "the package enabled mule.service"
fi
if [ -n "$unit" ] && command -v systemd-analyze >/dev/null; then
    systemd-analyze verify "$unit" 2>&1 | grep -v -e 'bluetooth.service' -e '^$' \
        | grep -i 'mule.service' && problem "systemd-analyze verify complains about $unit"
fi

# The configuration is a conffile dpkg tracks.
dpkg-query -W -f='${Conffiles}\n' mule | grep -q '/etc/mule/mule.toml' \
    || problem "/etc/mule/mule.toml is not a registered conffile"

echo "install-test: dpkg --purge mule"
trap - EXIT
dpkg --purge mule || problem "dpkg --purge failed"
[ -e /usr/bin/mule ] && problem "/usr/bin/mule left after purge"
[ -e /etc/mule/mule.toml ] && problem "/etc/mule/mule.toml left after purge"
if dpkg-query -W -f='${Status}' mule 2>/dev/null | grep -q 'installed'; then
    problem "mule still listed as installed after purge"
fi

if [ "$fail" = 0 ]; then
    echo "install-test: $deb installed, checked and purged"
fi
exit "$fail"
