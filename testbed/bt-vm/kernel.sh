# The guest kernel and initramfs shared by testbed/bt-vm/run.sh (Bluetooth) and
# testbed/bt-vm/powercut.sh (power cuts): sourced, not run. Needs `say`, `die`, $HERE (this
# directory) and $CACHE. Sets KPKG, KV, VMLINUX and INITRD (btvm_kernel); btvm_host_packages
# installs what the host lacks.
#
# Kernel: MULE_BTVM_KERNEL=stable (the default here and in powercut.sh) takes the release's
# own `linux-image-amd64` (6.1 on bookworm); MULE_BTVM_KERNEL=backports (run.sh's default)
# takes Debian's backports kernel (6.12 on bookworm), because 6.1 oopses now and then on
# L2CAP teardown (`list_del corruption` in `hci_chan_del`; see README.md, "Kernel 6.12").
# The kernel is only downloaded (`apt-get download`), never installed; for backports the
# script writes a sources.list.d entry for `<codename>-backports` on the mirror this host
# already uses for `<codename>` (read from /etc/apt), so it works on a fresh Debian CI machine.
#
# Cache: $CACHE/<kernel package>/ keeps vmlinux (uncompressed, booted through the PVH entry),
# the kernel .deb (to build a new initramfs without downloading again) and one initramfs per
# hash of the module sets + guest/init. A kernel security update makes a new directory.
#
# The initramfs holds static busybox, guest/init and the modules of every set below; the
# kernel command line's `mule.modset=NAME` picks the set that /init loads (default: bt).

# Load order matters: the crypto self-tests of drbg/ecdh run at insmod time, before any
# modprobe helper exists, so the algorithms they test go first.
MODSET_bt="sha512_generic sha3_generic ctr ecb cmac jitterentropy_rng drbg ansi_cprng ecdh_generic
      af_alg algif_hash algif_skcipher virtio_pci 9pnet_virtio 9p bluetooth hci_vhci"
# power cuts: the 9p shares plus a virtio disk with ext4
MODSET_disk="virtio_pci 9pnet_virtio 9p virtio_blk crc32c_generic ext4"
MODSETS="bt disk"

# Installs those of the Debian packages named as arguments that are missing on this host
# (the guest runs the host's /usr), then checks that qemu is there.
btvm_host_packages() {
    local p missing=""
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        say "installing:$missing"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends $missing >/dev/null
    fi
    command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing after install"
}

# The mirror and keyring this host uses for its release ("URI KEYRING", KEYRING "-" if none).
btvm_host_mirror() {
    python3 - "$1" <<'PY'
import glob, re, sys
code = sys.argv[1]
def found(uri, key):
    print(uri, key or '-')
    sys.exit(0)
for f in sorted(glob.glob('/etc/apt/sources.list.d/*.sources')):
    for stanza in re.split(r'\n\s*\n', open(f).read()):
        d = {}
        for line in stanza.splitlines():
            if line.startswith('#') or ':' not in line:
                continue
            k, v = line.split(':', 1)
            d[k.strip().lower()] = v.strip()
        if d.get('enabled', 'yes').lower() == 'no':
            continue
        if 'deb' in d.get('types', '').split() and code in d.get('suites', '').split() and d.get('uris'):
            found(d['uris'].split()[0], d.get('signed-by'))
for f in ['/etc/apt/sources.list'] + sorted(glob.glob('/etc/apt/sources.list.d/*.list')):
    try:
        lines = open(f).read().splitlines()
    except OSError:
        continue
    for line in lines:
        m = re.match(r'\s*deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)', line.split('#', 1)[0])
        if m and m.group(3) == code:
            key = re.search(r'signed-by=([^\s\]]+)', m.group(1) or '')
            found(m.group(2), key.group(1) if key else None)
sys.exit('no "deb" source for suite %s in /etc/apt' % code)
PY
}

# Resolves KPKG (versioned kernel package) and the apt options to download it.
btvm_resolve_kernel() {
    local kind=${MULE_BTVM_KERNEL:-stable} code suite mirror keyring list policy
    APT_T=()
    case $kind in
    stable)
        KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
        if [ -z "$KPKG" ]; then
            apt-get update -qq
            KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
        fi
        ;;
    backports)
        code=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
        [ -n "$code" ] || die "cannot tell this host's release codename (/etc/os-release)"
        suite=$code-backports
        APT_T=(-t "$suite")
        # (policy captured first: `grep -q` closing the pipe early would fail it under pipefail)
        policy=$(apt-cache policy linux-image-amd64 2>/dev/null || true)
        if ! grep -q " $suite/main" <<< "$policy"; then
            read -r mirror keyring < <(btvm_host_mirror "$code") || die "cannot find this host's mirror in /etc/apt"
            list=/etc/apt/sources.list.d/mule-bt-vm-$suite.sources
            say "adding $suite (kernel download only) from this host's mirror: $list"
            {
                echo "# Written by testbed/bt-vm/kernel.sh: the Mule test guest's kernel comes from here."
                echo "# Backports are never installed unless asked for (apt pins them at priority 100)."
                echo "Types: deb"
                echo "URIs: $mirror"
                echo "Suites: $suite"
                echo "Components: main"
                [ "$keyring" = - ] || echo "Signed-By: $keyring"
            } > "$list"
            # refresh only the new list (a full `apt-get update` if that fails)
            apt-get update -qq -o Dir::Etc::sourcelist="$list" -o Dir::Etc::sourceparts=- \
                -o APT::Get::List-Cleanup=0 || apt-get update -qq
        fi
        policy=$(apt-cache policy linux-image-amd64)
        grep -q " $suite/main" <<< "$policy" || die "no linux-image-amd64 in $suite"
        KPKG=$(apt-cache "${APT_T[@]}" depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
        ;;
    *) die "MULE_BTVM_KERNEL must be backports or stable" ;;
    esac
    [ -n "$KPKG" ] || die "cannot resolve the kernel package behind linux-image-amd64 ($kind)"
    KV=${KPKG#linux-image-}
}

btvm_kernel() {
    btvm_resolve_kernel
    local kd=$CACHE/$KPKG key set mods m R M full
    key=$(for set in $MODSETS; do eval "echo $set: \$MODSET_$set"; done | cat - "$HERE/guest/init" | sha256sum | cut -c1-12)
    VMLINUX=$kd/vmlinux
    INITRD=$kd/initrd-$key.gz
    if [ -s "$VMLINUX" ] && [ -s "$INITRD" ]; then
        say "kernel + initramfs cached ($KPKG, $INITRD)"
        return
    fi
    say "building kernel + initramfs for $KV in $kd"
    mkdir -p "$kd/dl"
    if ! ls "$kd"/dl/linux-image-*.deb "$kd"/dl/busybox-static_*.deb >/dev/null 2>&1; then
        rm -f "$kd"/dl/*.deb
        (cd "$kd/dl" && apt-get download "${APT_T[@]}" "$KPKG" 2>&1 && apt-get download busybox-static 2>&1) |
            grep -v 'Download is performed unsandboxed' || true
        ls "$kd"/dl/linux-image-*.deb "$kd"/dl/busybox-static_*.deb >/dev/null || die "kernel/busybox download failed"
    fi
    full=$kd/full
    rm -rf "$full" "$kd/bb" "$kd/root"
    dpkg-deb -x "$kd"/dl/linux-image-*.deb "$full"
    dpkg-deb -x "$kd"/dl/busybox-static_*.deb "$kd/bb"
    M=$full/lib/modules/$KV
    depmod -b "$full" "$KV"
    if [ ! -s "$VMLINUX" ]; then
        # qemu boots the uncompressed kernel through its PVH entry: no decompressor under TCG
        # (the payload is xz on Debian's 6.1 and zstd on 6.12; zstd needs the `zstd` tool)
        python3 - "$full/boot/vmlinuz-$KV" "$VMLINUX.tmp" <<'PY'
import lzma, struct, subprocess, sys, zlib
raw = open(sys.argv[1], 'rb').read()
# x86 boot protocol: the compressed kernel sits payload_offset bytes into the protected-mode
# part, which starts after the (setup_sects + 1) real-mode sectors; the build appends the
# uncompressed size (4 bytes) to the payload.
setup_sects = raw[0x1f1] or 4
offset, length = struct.unpack_from('<II', raw, 0x248)
start = (setup_sects + 1) * 512 + offset
payload = raw[start:start + length]
if payload.startswith(b'\xfd7zXZ\x00'):
    elf = lzma.LZMADecompressor().decompress(payload)
elif payload.startswith(b'\x28\xb5\x2f\xfd'):
    elf = subprocess.run(['zstd', '-dcq'], input=payload[:-4], capture_output=True, check=True).stdout
elif payload.startswith(b'\x1f\x8b'):
    elf = zlib.decompressobj(31).decompress(payload)
else:
    sys.exit('bzImage payload in an unknown format (%s)' % payload[:4].hex())
if not elf.startswith(b'\x7fELF'):
    sys.exit('the decompressed kernel is not an ELF file')
open(sys.argv[2], 'wb').write(elf)
PY
        mv "$VMLINUX.tmp" "$VMLINUX"
    fi
    R=$kd/root
    mkdir -p "$R"/{bbx,proc,sys,dev,usr,etc,mule,run,tmp,root,var/lib} "$R/kmods/lib/modules/$KV"
    cp "$kd/bb/bin/busybox" "$R/bbx/"
    for d in bin sbin lib lib64; do ln -s usr/$d "$R/$d"; done
    cp "$M"/modules.order "$M"/modules.builtin "$M"/modules.builtin.modinfo "$R/kmods/lib/modules/$KV/"
    for set in $MODSETS; do
        eval "mods=\$MODSET_$set"
        : > "$R/kmods/order.$set"
        for m in $mods; do
            # a module missing from this kernel is an error (a builtin one is fine)
            modprobe -d "$full" -S "$KV" --show-depends "$m" > "$kd/deps" 2>&1 ||
                die "kernel $KV has no module $m (module set $set): $(cat "$kd/deps")"
            awk '$1=="insmod"{print $2}' "$kd/deps" | while read -r ko; do
                # 6.12 ships modules xz-compressed: unpack them (busybox insmod takes plain .ko)
                rel=${ko#"$M"/}; rel=${rel%.xz}
                grep -qxF "$rel" "$R/kmods/order.$set" && continue
                mkdir -p "$R/kmods/lib/modules/$KV/$(dirname "$rel")"
                case $ko in
                *.xz) python3 -c 'import lzma, sys; open(sys.argv[2], "wb").write(lzma.open(sys.argv[1]).read())' \
                          "$ko" "$R/kmods/lib/modules/$KV/$rel" ;;
                *) cp "$ko" "$R/kmods/lib/modules/$KV/$rel" ;;
                esac
                echo "$rel" >> "$R/kmods/order.$set"
            done
        done
    done
    depmod -b "$R/kmods" "$KV"
    install -m 0755 "$HERE/guest/init" "$R/init"
    printf '#!/bbx/busybox sh\nexec /usr/sbin/modprobe -d /kmods "$@"\n' > "$R/kmods/modprobe"
    chmod +x "$R/kmods/modprobe"
    (cd "$R" && find . | cpio -o -H newc --quiet | gzip -1 > "$INITRD.tmp")
    mv "$INITRD.tmp" "$INITRD"
    rm -rf "$full" "$kd/bb" "$R" "$kd/deps"
    say "kernel + initramfs ready ($(du -sh "$kd" | cut -f1) in $kd)"
}
