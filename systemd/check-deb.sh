#!/usr/bin/env bash
# Checks a built mule .deb: the expected files are in it, with the expected
# modes, the config is a conffile, the maintainer scripts create the user and
# do not enable the service. Usage: systemd/check-deb.sh path/to/mule_*.deb
# Exit status 0 when everything is there, 1 otherwise (each problem printed).
set -euo pipefail

deb=${1:?usage: $0 path/to/mule.deb}
[ -f "$deb" ] || { echo "check-deb: no such file: $deb" >&2; exit 1; }

contents=$(dpkg-deb -c "$deb")
fail=0
problem() { echo "check-deb: $*" >&2; fail=1; }

# has MODE PATH...: one of the PATHs (alternatives) is in the package with MODE.
has() {
    local mode=$1; shift
    local p
    for p in "$@"; do
        if awk -v p="./$p" -v m="$mode" '$6 == p && $1 == m { found = 1 } END { exit !found }' <<<"$contents"; then
            return 0
        fi
    done
    problem "missing ($mode): $*"
}

has -rwxr-xr-x usr/bin/mule
has -rw-r--r-- etc/mule/mule.toml
# cargo-deb 3.x installs units under usr/lib; older versions under lib.
has -rw-r--r-- usr/lib/systemd/system/mule.service lib/systemd/system/mule.service
has -rw-r--r-- usr/lib/sysusers.d/mule.conf
has -rwxr-xr-x usr/lib/mule/mule-apt-repo
has -rw-r--r-- usr/share/doc/mule/README.md
has -rw-r--r-- usr/share/doc/mule/REFERENCE.md
has -rw-r--r-- usr/share/doc/mule/examples/raspberry-pi.toml
has -rw-r--r-- usr/share/doc/mule/examples/vehicle-gateway.toml

# Nothing enabled at install: no symlinks into *.wants directories.
if grep -q '\.wants/' <<<"$contents"; then
    problem "the package enables a unit (a .wants/ link is shipped)"
fi

# Control files: the conffile and the maintainer scripts.
control=$(mktemp -d)
trap 'rm -rf "$control"' EXIT
dpkg-deb -e "$deb" "$control"
grep -qx '/etc/mule/mule.toml' "$control/conffiles" 2>/dev/null \
    || problem "/etc/mule/mule.toml is not a conffile"
grep -q 'systemd-sysusers' "$control/postinst" 2>/dev/null \
    || problem "postinst does not create the mule user"
# Code lines only (comments may mention `systemctl enable`).
postinst_code=$(grep -v '^[[:space:]]*#' "$control/postinst" 2>/dev/null || true)
if grep -Eq 'deb-systemd-invoke (start|restart|\$_dh_action)|systemctl( --system)? (enable|start)' <<<"$postinst_code"; then
    problem "postinst starts or enables the service"
fi
# cargo-deb's generated block re-enables the unit only if the admin had enabled it.
if grep -Eq 'deb-systemd-helper (--quiet )?enable' <<<"$postinst_code" \
    && ! grep -q 'was-enabled' <<<"$postinst_code"; then
    problem "postinst enables the service"
fi
grep -q '^Package: mule$' "$control/control" || problem "package name is not mule"
# Every maintainer script must at least parse: cargo-deb splices its fragments
# into ours, and a broken splice only shows when dpkg runs the script.
for script in preinst postinst prerm postrm; do
    [ -f "$control/$script" ] || continue
    sh -n "$control/$script" 2>/dev/null \
        || problem "$script does not parse: $(sh -n "$control/$script" 2>&1 | head -1)"
    grep -q '#DEBHELPER#' "$control/$script" \
        && problem "$script still contains the #DEBHELPER# marker"
done

# The shipped configuration is the embedded default.
cfg=$(mktemp)
here=$(cd "$(dirname "$0")/.." && pwd)
if dpkg-deb --fsys-tarfile "$deb" | tar -xO ./etc/mule/mule.toml >"$cfg" 2>/dev/null; then
    cmp -s "$cfg" "$here/config/mule.toml" || problem "etc/mule/mule.toml differs from config/mule.toml"
fi
rm -f "$cfg"

if [ "$fail" = 0 ]; then
    echo "check-deb: $deb: all expected files present"
fi
exit "$fail"
