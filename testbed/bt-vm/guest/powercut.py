#!/usr/bin/python3
"""One boot of the power-cut guest (python3 standard library only; see powercut.sh).

The store under test is node B's data directory on /dev/vda (ext4), a raw image the host
attaches with cache=none and kills (SIGKILL to qemu) at a random moment of the ingest. Each
boot:

  1. check   mount (journal replay), e2fsck -f -n, open B's store offline (`mule bundles --json`; `mule verify`
             when the binary has it), start B and read every piece of every bundle the host
             says was acknowledged through the control socket, byte-compared with the source.
             One `PC-CHECK {json}` line on the console carries the verdict; the host compares
             it with what was acknowledged before the cut.
  2. ingest  node A (source, on tmpfs, the same prepared store every boot) serves the big
             bundle to B over loopback TCP; meanwhile B publishes small bundles into its own
             daemon. `PC-ACK-N` lines report B's daemon's piece count (its status), `PC-ACK`
             lines the pieces it serves (its `ReadPiece` answers, byte-compared), `PC-ACK-PUB`
             every publish that returned. The host kills the VM somewhere in here.
  final mode (the host's last boot): check, stop B with SIGTERM (exit 0), unmount, power off.

When B's big bundle is complete at a check, it is exported (`mule export`, which verifies every
piece and the content hash) and compared with the source, then B's store is deleted and the
next ingest starts from nothing (`PC-RESET`).
"""
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time

MULE = '/tmp/mule'  # copied from the share by stage 2 (exec over 9p is slow)
SRC = '/mule/src'
STATE = '/mule/state'
OUT = '/mule/out'
DISK = '/disk'
BDIR = DISK + '/b'
ADIR = '/tmp/a'
PORT_A, PORT_B = 47101, 47102

job = json.load(open('/mule/cut.json'))
CUT = job['cut']
src = json.load(open(SRC + '/bundle.json'))
BIG = src['id']
PS = src['piece_size']
NPIECES = src['pieces']
content = open(SRC + '/content.bin', 'rb').read()
rng = random.Random(job.get('seed', CUT))


def uptime():
    return float(open('/proc/uptime').read().split()[0])


def emit(tag, **kw):
    kw['up'] = round(uptime(), 2)
    print('%s %s' % (tag, json.dumps(kw, sort_keys=True)), flush=True)


def note(*a):
    print('[powercut %.2f]' % uptime(), *a, flush=True)


# ---------------------------------------------------------------- control socket client
# The daemon's control protocol: 4-byte big-endian length + CBOR of a serde enum (externally
# tagged: {"Variant": {fields}}). Only what this test needs.
def cbor_head(major, n):
    if n < 24:
        return bytes([major << 5 | n])
    for ai, fmt in ((24, '>B'), (25, '>H'), (26, '>I'), (27, '>Q')):
        if n < 1 << (8 * struct.calcsize(fmt)):
            return bytes([major << 5 | ai]) + struct.pack(fmt, n)
    raise ValueError(n)


def cbor_enc(v):
    if isinstance(v, bool):
        return b'\xf5' if v else b'\xf4'
    if isinstance(v, int):
        return cbor_head(0, v)
    if isinstance(v, bytes):
        return cbor_head(2, len(v)) + v
    if isinstance(v, str):
        b = v.encode()
        return cbor_head(3, len(b)) + b
    if isinstance(v, dict):
        return cbor_head(5, len(v)) + b''.join(cbor_enc(k) + cbor_enc(x) for k, x in v.items())
    if isinstance(v, list):
        return cbor_head(4, len(v)) + b''.join(cbor_enc(x) for x in v)
    raise TypeError(type(v))


def cbor_dec(b, i=0):
    ib = b[i]
    major, ai = ib >> 5, ib & 31
    i += 1
    if ai < 24:
        n = ai
    elif ai in (24, 25, 26, 27):
        size = 1 << (ai - 24)
        n = int.from_bytes(b[i:i + size], 'big')
        i += size
    else:
        raise ValueError('indefinite or reserved CBOR item')
    if major == 0:
        return n, i
    if major == 1:
        return -1 - n, i
    if major == 2:
        return bytes(b[i:i + n]), i + n
    if major == 3:
        return b[i:i + n].decode(), i + n
    if major == 4:
        out = []
        for _ in range(n):
            x, i = cbor_dec(b, i)
            out.append(x)
        return out, i
    if major == 5:
        out = {}
        for _ in range(n):
            k, i = cbor_dec(b, i)
            out[k], i = cbor_dec(b, i)
        return out, i
    if major == 7:
        return {20: False, 21: True, 22: None}.get(ai), i
    raise ValueError('CBOR major %d' % major)


class Control:
    def __init__(self, data_dir):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(30)
        self.s.connect(os.path.join(data_dir, 'mule.sock'))

    def _recv(self, n):
        buf = b''
        while len(buf) < n:
            c = self.s.recv(n - len(buf))
            if not c:
                raise EOFError('daemon closed the control socket')
            buf += c
        return buf

    def call(self, req):
        body = cbor_enc(req)
        self.s.sendall(struct.pack('>I', len(body)) + body)
        n = struct.unpack('>I', self._recv(4))[0]
        return cbor_dec(self._recv(n))[0]

    def piece(self, bundle, index):
        """The piece's bytes, or None when the daemon says it does not have it."""
        r = self.call({'ReadPiece': {'bundle': bundle, 'index': index}})
        if isinstance(r, dict) and 'Bytes' in r:
            return r['Bytes']
        if isinstance(r, dict) and 'Error' in r and 'not in the store' in r['Error']:
            return None
        raise RuntimeError('ReadPiece %s/%d: %r' % (bundle[:12], index, r))

    def close(self):
        self.s.close()


# ---------------------------------------------------------------- nodes
def write_config(path, listen, peers):
    with open(path, 'w') as f:
        f.write('[discovery]\nbeacons = false\nmdns = false\nbluetooth = false\n')
        f.write('[session]\nlisten = ["127.0.0.1:%d"]\npeers = [%s]\n'
                % (listen, ', '.join('"127.0.0.1:%d"' % p for p in peers)))
        f.write('[subscriptions]\nchannels = ["powercut"]\n')
        f.write('[trust]\npublishers = ["%s"]\n' % src['publisher'])
        f.write('[metrics]\nenabled = false\n')
        f.write('[log]\nlevel = "info"\nformat = "plain"\n')


class Node:
    def __init__(self, name, data, listen, peers):
        self.name, self.data = name, data
        self.config = '/tmp/%s.toml' % name
        write_config(self.config, listen, peers)
        self.proc = None

    def start(self):
        os.makedirs(self.data, exist_ok=True)
        log = open('%s/cut-%03d-node-%s.log' % (OUT, CUT, self.name), 'ab')
        self.proc = subprocess.Popen([MULE, 'run', '--config', self.config, '--data-dir', self.data],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        end = time.time() + 120
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError('node %s exited with %s at start' % (self.name, self.proc.returncode))
            try:
                c = Control(self.data)
                r = c.call('Status')
                c.close()
                if isinstance(r, dict) and 'Status' in r:
                    return
            except (OSError, EOFError, ValueError):
                pass
            time.sleep(0.2)
        raise RuntimeError('node %s: no control socket answer within 120 s' % self.name)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return 'killed after 60 s'
        return self.proc.returncode if self.proc else None

    def cli(self, *args, timeout=120):
        return subprocess.run([MULE, *args, '--config', self.config, '--data-dir', self.data],
                              capture_output=True, text=True, timeout=timeout)


def sh(*cmd, timeout=300):
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------- 1. check
def check(b):
    """Everything about the store as found after the cut; returns the PC-CHECK fields."""
    r = {'cut': CUT}
    if not os.path.isdir(BDIR):
        r['store'] = 'none'
        return r, False
    # offline: the store opens, and what `mule bundles` says it holds
    p = b.cli('bundles', '--json')
    r['offline_open'] = p.returncode == 0
    if p.returncode != 0:
        r['offline_error'] = (p.stderr or p.stdout).strip()[-400:]
    else:
        bundles = json.loads(p.stdout)
        r['offline_bundles'] = len(bundles)
        for x in bundles:
            if x.get('id') == BIG:
                r['offline_big_have'] = x.get('pieces_have', x.get('have'))
    # ---- `mule verify` (issue 18 item 3; added by another change). When this binary has the
    # verb, the store must pass it offline. Until then the byte-for-byte piece scan below and
    # the verified export of each complete bundle are the integrity check.
    if sh(MULE, 'verify', '--help').returncode == 0:
        v = b.cli('verify', timeout=600)
        r['verify'] = {'rc': v.returncode, 'out': (v.stdout + v.stderr).strip()[-400:]}
    else:
        r['verify'] = 'not in this binary'
    # online: B's daemon opens it, and serves every piece it claims, byte-identical
    b.start()
    c = Control(BDIR)
    present, bad = [], []
    for i in range(NPIECES):
        data = c.piece(BIG, i)
        if data is None:
            continue
        present.append(i)
        if data != content[i * PS:(i + 1) * PS]:
            bad.append(i)
    r['big_present'] = bitmap(present)
    r['big_have'] = len(present)
    r['big_bad'] = bad
    # every publish the host saw acknowledged: manifest there, every piece byte-identical
    pubs = {}
    for pub in job.get('pubs', []):
        want = open(pub['file'], 'rb').read()
        got, status = b'', 'ok'
        try:
            for i in range((len(want) + pub['piece_size'] - 1) // pub['piece_size']):
                data = c.piece(pub['id'], i)
                if data is None:
                    status = 'missing piece %d' % i
                    break
                got += data
        except RuntimeError as e:
            status = 'missing: %s' % e
        if status == 'ok' and got != want:
            status = 'content differs'
        pubs[pub['id']] = status
    c.close()
    r['pubs_checked'] = len(pubs)
    r['pubs_bad'] = {k: v for k, v in pubs.items() if v != 'ok'}
    complete = len(present) == NPIECES
    if complete:
        out = '/tmp/big.out'
        e = b.cli('export', BIG, '--out', out, timeout=600)
        same = e.returncode == 0 and hashlib.sha256(open(out, 'rb').read()).hexdigest() == src['sha256']
        r['export'] = 'identical' if same else 'FAILED: rc %d %s' % (e.returncode, e.stderr.strip()[-300:])
        if os.path.exists(out):
            os.unlink(out)
    return r, complete


def bitmap(indices):
    bits = bytearray((NPIECES + 7) // 8)
    for i in indices:
        bits[i // 8] |= 1 << (i % 8)
    return bits.hex()


# ---------------------------------------------------------------- 2. ingest
def status_have(c):
    """B's daemon's own count of the big bundle's pieces (`mule status`), or 0."""
    r = c.call('Status')
    for x in (r.get('Status') or {}).get('bundles', []) if isinstance(r, dict) else []:
        if x.get('id') == BIG:
            return x.get('pieces_have', 0)
    return 0


def watch_pieces(b, known, stop):
    """PC-ACK-N whenever B's daemon's piece count grows (a cheap status call, every 0.1 s),
    PC-ACK with the set of pieces it serves (each read back and byte-compared, every ~2 s)."""
    c = Control(BDIR)
    last_n, last_scan = 0, 0.0
    while not stop.is_set():
        n = status_have(c)
        if n > last_n:
            emit('PC-ACK-N', have=n)
            last_n = n
        if time.time() - last_scan < 2:
            time.sleep(0.1)
            continue
        last_scan = time.time()
        new = []
        for i in range(NPIECES):
            if i in known:
                continue
            data = c.piece(BIG, i)
            if data is not None:
                if data != content[i * PS:(i + 1) * PS]:
                    emit('PC-BAD', piece=i)
                known.add(i)
                new.append(i)
        if new:
            emit('PC-ACK', big=bitmap(known), have=len(known))
            if len(known) == NPIECES:
                emit('PC-COMPLETE')


def publish_loop(b, stop):
    """Small bundles published into B's running daemon; each one that returned is PC-ACK-PUB."""
    k = 0
    while not stop.is_set():
        path = '%s/pub-%03d-%02d.bin' % (STATE, CUT, k)
        data = os.urandom(rng.randrange(20000, 60000))
        with open(path, 'wb') as f:  # the host's copy of what was published
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        p = b.cli('publish', path, '--name', 'pc-%d-%d' % (CUT, k), '--version', '1', '--key',
                  SRC + '/key', '--piece-size', '16384')
        if p.returncode == 0:
            emit('PC-ACK-PUB', id=p.stdout.strip().split()[-1], file=path, piece_size=16384)
        else:
            emit('PC-PUB-FAILED', rc=p.returncode, err=p.stderr.strip()[-300:])
        k += 1
        time.sleep(0.5)


def main():
    for d in ('/tmp', '/run', '/var/lib'):
        os.makedirs(d, exist_ok=True)
    os.makedirs(STATE, exist_ok=True)
    # The kernel replays the journal at mount; then a read-only full check of the unmounted
    # filesystem must find nothing (rc 0), else the cut left the filesystem itself damaged.
    os.makedirs(DISK, exist_ok=True)
    m = sh('/usr/bin/mount', '-t', 'ext4', '/dev/vda', DISK)
    if m.returncode == 0:
        sh('/usr/bin/umount', DISK)
    fs = sh('/usr/sbin/e2fsck', '-f', '-n', '/dev/vda')
    emit('PC-FSCK', rc=fs.returncode, out=(fs.stdout + fs.stderr).strip()[-600:])
    m = sh('/usr/bin/mount', '-t', 'ext4', '/dev/vda', DISK)
    if m.returncode != 0:
        emit('PC-CHECK', cut=CUT, fatal='mount failed: %s' % m.stderr.strip())
        return
    b = Node('b', BDIR, PORT_B, [PORT_A])
    try:
        r, complete = check(b)
    except Exception as e:  # noqa: BLE001 (anything here is a finding, reported to the host)
        emit('PC-CHECK', cut=CUT, fatal='%s: %s' % (type(e).__name__, e))
        b.stop()
        return
    emit('PC-CHECK', **r)
    if job['mode'] == 'final':
        rc = b.stop()
        sh('/usr/bin/umount', DISK)
        emit('PC-FINAL', stop_rc=rc)
        return
    known = set()
    if complete:
        b.stop()
        shutil.rmtree(BDIR)
        os.sync()
        emit('PC-RESET')
    elif r.get('store') != 'none':
        bits = bytes.fromhex(r['big_present'])
        known = set(i for i in range(NPIECES) if bits[i // 8] >> (i % 8) & 1)
    if b.proc is None or b.proc.poll() is not None:
        b.start()
    # the source only now, so that nothing arrives during the check (B dials its static
    # peer every second until the session is up)
    shutil.rmtree(ADIR, ignore_errors=True)
    shutil.copytree(SRC + '/a', ADIR)
    Node('a', ADIR, PORT_A, []).start()
    emit('PC-INGEST', have=len(known))
    stop = threading.Event()
    threading.Thread(target=watch_pieces, args=(b, known, stop), daemon=True).start()
    threading.Thread(target=publish_loop, args=(b, stop), daemon=True).start()
    # the host cuts the power somewhere in here; if it does not, stop after a while
    time.sleep(job.get('max_ingest_s', 300))
    stop.set()
    emit('PC-NOCUT')


if __name__ == '__main__':
    main()
