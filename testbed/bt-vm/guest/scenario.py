#!/usr/bin/python3
"""Mule over Bluetooth alone, inside the bt-vm guest (python3 standard library only).

Two `mule run` nodes, A on hci0 and B on hci1, beacons and mDNS off, TCP listening on
loopback only (and never told about each other), so whatever crosses, crosses over BLE
discovery + L2CAP LE CoC. Steps, each recorded pass/fail with timings in results.json:

  nodes_started         both daemons up, advertising and scanning on their own adapter
  ble_discovery         each node reports the other as a neighbour over "ble"
  l2cap_session         a session is up on both sides over "bluetooth"
  bundle_256k           a signed 256 KiB bundle published on A reaches B byte-identical
  resume_after_break    a larger bundle: B's adapter is powered off mid-transfer and back on;
                        a new session comes up, B's pieces never go back, new pieces arrive,
                        and what is left at the restore is less than the whole bundle
  big_bundle_complete   ... and that bundle then completes on B byte-identical
  bluetoothd_stopped    bluetoothd killed under running nodes: both keep running, `mule status`
                        answers, each logs exactly one "Bluetooth unavailable" warning
  clean_stop            SIGTERM stops both daemons

Measurements: discovery latency (node start -> "peer up"), session setup ("peer up" ->
"session up"), goodput (payload bytes / publish-to-complete time), bytes on the air per payload
byte (bytes the kernel handed to both controllers during the transfer, from the kernel's HCI
counters: ACL headers, L2CAP K-frame/SDU headers, credits, the session protocol's own frames).
"""
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

OUT = '/mule/out'
MULE = '/mule/mule'
WORK = '/tmp/mule'
ENV = dict(l.strip().split('=', 1) for l in open('/mule/env') if '=' in l)
BIG_KIB = int(ENV.get('BIG_KIB', '2048'))
LOG_LEVEL = 'info,mule_contacts::bluetooth=debug,mule::daemon::ble=debug,mule::daemon::conn=debug,mule_engine::session=debug'

results = {'steps': [], 'measurements': {}, 'all_ok': False}
M = results['measurements']


def log(*a):
    print('[scenario %.2f]' % uptime(), *a, flush=True)


def uptime():
    return float(open('/proc/uptime').read().split()[0])


def save():
    results['all_ok'] = bool(results['steps']) and all(s['ok'] for s in results['steps'])
    with open(os.path.join(OUT, 'results.json'), 'w') as f:
        json.dump(results, f, indent=2)


def step(name, ok, t0, detail=''):
    s = {'name': name, 'ok': bool(ok), 'seconds': round(time.time() - t0, 3), 'detail': detail}
    results['steps'].append(s)
    log('STEP', 'PASS' if ok else 'FAIL', name, '%.2fs' % s['seconds'], detail)
    save()
    return ok


def wait_for(pred, timeout, every=0.25):
    end = time.time() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.time() >= end:
            return None
        time.sleep(every)


def sha(path):
    return hashlib.sha256(open(path, 'rb').read()).hexdigest()


class Node:
    """One `mule run` process with a time-stamped copy of its log."""

    def __init__(self, name, adapter, publisher_hex):
        self.name, self.adapter = name, adapter
        self.dir = os.path.join(WORK, name)
        self.data = os.path.join(self.dir, 'data')
        os.makedirs(self.data, exist_ok=True)
        self.config = os.path.join(self.dir, 'mule.toml')
        with open(self.config, 'w') as f:
            f.write('[discovery]\nbeacons = false\nmdns = false\nbluetooth = true\n'
                    'bluetooth_adapter = "%s"\n' % adapter)
            f.write('[session]\nlisten = ["127.0.0.1:0"]\n')
            f.write('[subscriptions]\nchannels = ["fw"]\n')
            f.write('[trust]\npublishers = ["%s"]\n' % publisher_hex)
            f.write('[log]\nlevel = "%s"\nformat = "plain"\n' % LOG_LEVEL)
        self.lines = []  # (unix time, text)
        self.lock = threading.Lock()
        self.proc = None
        self.started = None

    def start(self):
        self.started = time.time()
        self.proc = subprocess.Popen([MULE, 'run', '--config', self.config, '--data-dir', self.data],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, errors='replace')
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        with open(os.path.join(OUT, 'node-%s.log' % self.name), 'w') as f:
            for line in self.proc.stderr:
                t = time.time()
                line = line.rstrip('\n')
                with self.lock:
                    self.lines.append((t, line))
                f.write('%.3f %s\n' % (t, line))
                f.flush()

    def matches(self, pattern, after=0.0):
        rx = re.compile(pattern)
        with self.lock:
            return [(t, l) for t, l in self.lines if t >= after and rx.search(l)]

    def first(self, pattern, after=0.0):
        m = self.matches(pattern, after)
        return m[0][0] if m else None

    def wait_line(self, pattern, timeout, after=0.0):
        return wait_for(lambda: self.first(pattern, after), timeout)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def cli(self, *args, timeout=30):
        try:
            return subprocess.run([MULE, *args, '--data-dir', self.data], capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            return subprocess.CompletedProcess(e.cmd, 124, '', 'timed out')

    def bundle(self, bid):
        r = self.cli('bundles', '--json')
        if r.returncode != 0:
            return None
        try:
            return next((b for b in json.loads(r.stdout) if b['id'] == bid), None)
        except (ValueError, KeyError, TypeError):
            return None


def hci_counters():
    """Bytes and ACL packets each controller was handed by the kernel (`hciconfig` shows the
    kernel's per-device counters). TX bytes are HCI commands plus ACL data with its 4-byte
    header, i.e. everything the controller must put on the air; during a transfer the
    commands are a handful of bytes. (The btmon capture is no use for this: under TCG the
    monitor socket drops most data packets.)"""
    out = {}
    for i in (0, 1):
        r = subprocess.run(['hciconfig', 'hci%d' % i], capture_output=True, text=True, timeout=20)
        m = re.search(r'TX bytes:(\d+) acl:(\d+)', r.stdout)
        if m:
            out[i] = (int(m.group(1)), int(m.group(2)))
    return out


def air_delta(before, after):
    """(TX bytes, ACL packets) handed to both controllers between two hci_counters()."""
    if len(before) != 2 or len(after) != 2:
        return None
    return (sum(after[i][0] - before[i][0] for i in (0, 1)),
            sum(after[i][1] - before[i][1] for i in (0, 1)))


def publish(node, path, name, version, key, piece=None):
    args = ['publish', path, '--name', name, '--version', version, '--key', key, '--audience', 'fw']
    if piece:
        args += ['--piece-size', str(piece)]
    r = node.cli(*args)
    if r.returncode != 0:
        raise RuntimeError('publish failed: %s %s' % (r.stdout, r.stderr))
    return r.stdout.strip().split()[-1]


def btmgmt(index, *args):
    return subprocess.run(['btmgmt', '--index', str(index), *args], capture_output=True, text=True,
                          timeout=20)


def main():
    os.makedirs(WORK, exist_ok=True)
    ready = float(open('/run/ready-uptime').read())
    M['guest_uptime_at_ready_s'] = ready
    key = os.path.join(WORK, 'publisher.key')
    r = subprocess.run([MULE, 'key', 'gen', '--out', key], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError('key gen failed: ' + r.stderr)
    pub_hex = r.stdout.split()[0]
    a = Node('a', 'hci0', pub_hex)
    b = Node('b', 'hci1', pub_hex)
    nodes = (a, b)

    # 1. both daemons up on their own adapters
    t0 = time.time()
    a.start()
    b.start()
    up = [n.wait_line(r'Bluetooth (back: )?advertising and scanning', 40) for n in nodes]
    lis = [n.wait_line(r'Bluetooth L2CAP session listener up', 20) for n in nodes]
    ok = all(up) and all(lis) and all(n.alive() for n in nodes)
    for n, t in zip(nodes, up):
        if t:
            M['advertising_after_start_s_%s' % n.name] = round(t - n.started, 3)
    if not step('nodes_started', ok, t0, 'advertising %s, listeners %s, alive %s' % (
            [bool(x) for x in up], [bool(x) for x in lis], [n.alive() for n in nodes])):
        return

    # 2. BLE discovery, both ways
    peer_up = [n.wait_line(r'peer up.*transport="?ble', 60) for n in nodes]
    for n, t in zip(nodes, peer_up):
        if t:
            M['ble_discovery_latency_s_%s' % n.name] = round(t - n.started, 3)
    step('ble_discovery', all(peer_up), t0, 'node start -> peer up: %s' % [
        round(t - n.started, 2) if t else None for n, t in zip(nodes, peer_up)])
    if not any(peer_up):
        return

    # 3. L2CAP CoC session
    t1 = min(t for t in peer_up if t)
    sess = [n.wait_line(r'session up.*transport="?bluetooth', 60) for n in nodes]
    if all(sess):
        M['session_setup_s'] = round(max(sess) - t1, 3)
    if not step('l2cap_session', all(sess), t1, 'first peer up -> session up: %s' % [
            round(t - t1, 2) if t else None for t in sess]):
        return

    # 4. a signed 256 KiB bundle crosses, byte-identical
    small = os.path.join(WORK, 'fw-256k.bin')
    with open(small, 'wb') as f:
        f.write(os.urandom(256 * 1024))
    c2 = hci_counters()
    t2 = time.time()
    bid = publish(a, small, 'fw', '1', key)
    got = wait_for(lambda: (lambda x: x and x['pieces_have'] == x['pieces_total'] and x)(b.bundle(bid)), 150)
    t3 = time.time()
    c3 = hci_counters()
    same = False
    if got:
        exp = os.path.join(WORK, 'b-256k.bin')
        r = b.cli('export', bid, '--out', exp)
        same = r.returncode == 0 and sha(exp) == sha(small)
        M['goodput_256k_kib_s'] = round(256 / (t3 - t2), 1)
        # The same from B's own log: manifest stored -> bundle complete (no CLI polling in it).
        tm = b.first(r'manifest stored bundle=%s' % bid[:8])
        tc = b.first(r'bundle complete bundle=%s' % bid[:8])
        if tm and tc and tc > tm:
            M['goodput_256k_kib_s_manifest_to_complete'] = round(256 / (tc - tm), 1)
        air = air_delta(c2, c3)
        if air:
            M['hci_tx_bytes_256k'], M['acl_packets_256k'] = air
            M['air_bytes_per_payload_byte_256k'] = round(air[0] / (256 * 1024), 3)
    step('bundle_256k', got and same, t2, 'complete on B: %s, identical: %s' % (bool(got), same))

    # 5. larger bundle, link broken (B's adapter powered off) and restored mid-transfer
    piece = 16 * 1024
    big = os.path.join(WORK, 'fw-big.bin')
    size = BIG_KIB * 1024
    with open(big, 'wb') as f:
        f.write(os.urandom(size))
    t4 = time.time()
    bid2 = publish(a, big, 'fw', '2', key, piece=piece)
    samples = []  # (seconds since publish, B's pieces_have)

    def have():
        x = b.bundle(bid2)
        if x:
            samples.append((time.time() - t4, x['pieces_have']))
        return x

    def complete(x):
        return x and x['pieces_have'] == x['pieces_total'] and x

    total = size // piece
    started = wait_for(lambda: (lambda x: x and x['pieces_have'] >= max(2, total // 5) and x)(have()), 120)
    detail = {}
    fin = {}
    ok = done = False
    if not started:
        detail['error'] = 'transfer did not get going'
    elif complete(started):
        detail['error'] = 'bundle complete before the link could be broken; raise MULE_BTVM_BIG_KIB'
    else:
        tb = time.time()
        off = btmgmt(1, 'power', 'off')
        at_break = (have() or {}).get('pieces_have', 0)
        down = wait_for(lambda: b.first(r'session (ended|closed)', tb), 20)
        time.sleep(3)
        mid = (have() or {}).get('pieces_have', 0)
        cr = hci_counters()
        tr = time.time()
        on = btmgmt(1, 'power', 'on')
        detail.update(power_off_rc=off.returncode, power_on_rc=on.returncode,
                      pieces_at_break=at_break, pieces_at_restore=mid, pieces_total=total,
                      session_down_after_break_s=round(down - tb, 2) if down else None)
        resumed = b.wait_line(r'session up', 120, tr)
        if resumed:
            M['session_back_after_restore_s'] = round(resumed - tr, 3)
        # Wait for completion; give up after 40 s without a new piece (a stalled session
        # would otherwise hold the job until its limit).
        last = [mid, time.time()]

        def progress():
            x = have()
            if complete(x):
                return x
            if x and x['pieces_have'] > last[0]:
                last[:] = [x['pieces_have'], time.time()]
            return 'stalled' if time.time() - last[1] > 40 else None

        res = wait_for(progress, 240)
        done = complete(res) if isinstance(res, dict) else None
        t5 = time.time()
        c5 = hci_counters()
        hs = [h for _, h in samples]
        monotone = all(x <= y for x, y in zip(hs, hs[1:]))
        after = [h for t, h in samples if t >= tr - t4]
        grew = max(after, default=0) > mid
        exp = os.path.join(WORK, 'b-big.bin')
        same = bool(done) and b.cli('export', bid2, '--out', exp).returncode == 0 and sha(exp) == sha(big)
        after_restore = (total - mid) * piece
        detail.update(never_went_back=monotone, pieces_after_restore=max(after, default=0) - mid,
                      payload_left_at_restore=after_restore, size=size)
        M['resume_payload_left_at_restore_bytes'] = after_restore
        M['resume_bundle_bytes'] = size
        first_t = next((t for t, h in samples if h > 0), None)
        if first_t is not None and at_break:
            M['goodput_big_before_break_kib_s'] = round(at_break * piece / 1024 / max(0.01, tb - t4 - first_t), 1)
        ok = bool(resumed) and mid > 0 and monotone and grew and after_restore < size
        fin = {'complete': bool(done), 'identical': same, 'pieces_have': hs[-1] if hs else None,
               'pieces_total': total}
        if done:
            M['resume_restore_to_complete_s'] = round(t5 - tr, 3)
            air = air_delta(cr, c5)
            if air:
                M['hci_tx_bytes_after_restore'] = air[0]
                M['air_bytes_per_payload_byte_after_restore'] = round(air[0] / max(1, after_restore), 3)
        else:
            shed = b.matches(r'shedding requests', tr)
            stalled = b.matches(r'requests stalled', tr)
            fin['stalled_for_s'] = round(time.time() - last[1], 1)
            fin['engine_shed_lines_on_b'] = [l.split('shedding requests')[-1].strip() for _, l in shed][:4]
            fin['engine_stalled_lines_on_b'] = len(stalled)
            if shed or stalled:
                fin['diagnosis'] = ('B shed/cancelled outstanding requests after the restore and never '
                                    'asked for those pieces again in that session (the engine skips '
                                    'cancelled pieces until they arrive, and the peer dropped them)')
        done = done and same
    detail['samples'] = [(round(t, 2), h) for t, h in samples][-8:]
    step('resume_after_break', ok, t4, detail)
    step('big_bundle_complete', done, t4, fin or 'not reached')

    # 6. bluetoothd stopped under running nodes
    t6 = time.time()
    pid = int(open('/run/bluetoothd.pid').read())
    os.kill(pid, signal.SIGTERM)
    # Each node notices at its next adapter check or retry (a few seconds); then wait a bit
    # more so that a second warning would be seen.
    wait_for(lambda: all(n.matches(r'Bluetooth unavailable', t6) for n in nodes), 25)
    time.sleep(4)
    status_ok = [n.cli('status', '--json', timeout=20).returncode == 0 for n in nodes]
    alive = [n.alive() for n in nodes]
    warns = [n.matches(r'Bluetooth unavailable', t6) for n in nodes]
    others = [[l for _, l in n.matches(r'\b(WARN|ERROR)\b', t6) if 'Bluetooth unavailable' not in l] for n in nodes]
    M['bluetoothd_stop_warning_after_s'] = [round(w[0][0] - t6, 2) if w else None for w in warns]
    step('bluetoothd_stopped', all(alive) and all(status_ok) and all(len(w) == 1 for w in warns), t6, {
        'alive': alive, 'status_answers': status_ok, 'bluetooth_unavailable_lines': [len(w) for w in warns],
        'warning': warns[0][0][1] if warns[0] else None, 'other_warnings': [o[:3] for o in others]})

    # 7. clean stop
    t7 = time.time()
    for n in nodes:
        n.proc.send_signal(signal.SIGTERM)
    codes = []
    for n in nodes:
        try:
            codes.append(n.proc.wait(15))
        except subprocess.TimeoutExpired:
            n.proc.kill()
            codes.append('killed')
    step('clean_stop', all(c == 0 for c in codes), t7, 'exit codes %s' % codes)
    time.sleep(0.3)
    ended = b.matches(r'session ended')
    M['b_sessions_ended'] = [l.split('session ended')[-1].strip() for _, l in ended][-4:]


if __name__ == '__main__':
    try:
        main()
    except Exception as e:  # a crash of the scenario itself is a failed step, never a pass
        import traceback
        traceback.print_exc()
        results['steps'].append({'name': 'scenario_crashed', 'ok': False, 'detail': repr(e)})
    save()
    sys.exit(0 if results['all_ok'] else 1)
