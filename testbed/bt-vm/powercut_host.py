#!/usr/bin/python3
"""Host side of the power-cut test (run by powercut.sh, which prepares the share and the disk).

Boots the guest once per cut, waits until it reports that the ingest has started, lets it run a
random while and SIGKILLs the qemu process (by its PID): the guest's page cache and everything
in flight die with it, and the disk image (cache=none on this side) keeps only what reached it.
The next boot checks the store against what was acknowledged before the kill. A last boot only
checks and then stops node B cleanly.

Acknowledged (what must survive) = every piece the receiving daemon reported having (its
`ReadPiece` answers, on PC-ACK lines and in the boot's own check) and every `mule publish` into
that daemon that returned, as far as the host had read those console lines before it killed
the VM. A store is corrupt when it does not open offline, fails `mule verify` (once the binary
has it), B's daemon does not start on it, a piece it serves differs from the source, e2fsck
cannot repair the filesystem by itself (exit >= 4), or the verified export of a complete
bundle fails.
"""
import argparse
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument('--share', required=True)
    p.add_argument('--vmlinux', required=True)
    p.add_argument('--initrd', required=True)
    p.add_argument('--disk', required=True)
    p.add_argument('--cuts', type=int, default=5)
    p.add_argument('--out', required=True, help='results JSON')
    p.add_argument('--accel', default='tcg')
    p.add_argument('--min-delay', type=float, default=1.5)
    p.add_argument('--max-delay', type=float, default=6.0)
    p.add_argument('--boot-timeout', type=float, default=300)
    p.add_argument('--seed', type=int, default=None)
    p.add_argument('--kernel', default='')
    return p.parse_args()


A = parse_args()
rng = random.Random(A.seed)
T0 = time.time()
src = json.load(open(os.path.join(A.share, 'src', 'bundle.json')))
NPIECES = src['pieces']


def say(*a):
    print('[powercut %6.1fs]' % (time.time() - T0), *a, flush=True)


def bits(hexstr):
    b = bytes.fromhex(hexstr)
    return {i for i in range(NPIECES) if b[i // 8] >> (i % 8) & 1}


def qemu_cmd():
    accel = ['-accel', 'kvm', '-cpu', 'host'] if A.accel == 'kvm' else ['-accel', 'tcg', '-cpu', 'max']
    return ['qemu-system-x86_64', *accel, '-m', '768', '-smp', '2',
            '-nodefaults', '-no-user-config', '-display', 'none', '-serial', 'stdio', '-no-reboot',
            '-kernel', A.vmlinux, '-initrd', A.initrd,
            '-append', 'console=ttyS0 quiet panic=-1 mule.modset=disk',
            # O_DIRECT on the host: nothing the guest wrote lingers in a host cache that the
            # kill would spare, and the guest's own page cache dies with the process
            '-drive', 'file=%s,format=raw,if=virtio,cache=none,aio=threads' % A.disk,
            '-virtfs', 'local,path=/usr,mount_tag=usr,security_model=none,readonly=on',
            '-virtfs', 'local,path=/etc,mount_tag=etc,security_model=none,readonly=on',
            '-virtfs', 'local,path=%s,mount_tag=mule,security_model=none' % A.share]


acked_big = set()
acked_n = [0]  # the daemon's own piece count, highest reported (status)
xfer_s = []  # seconds from ingest start to "all pieces acknowledged", whole transfers


def window():
    """When a cut falls after the ingest starts: min-delay..max-delay at first, then within
    the longest whole transfer seen (a fast machine moves the bundle in a second or two, and
    a cut after it would not be mid-ingest)."""
    hi = A.max_delay
    if xfer_s:
        hi = max(0.5, min(hi, 1.1 * max(xfer_s)))
    return min(A.min_delay, hi / 3), hi
acked_pubs = {}  # id -> {"id", "file", "piece_size"}
summary = {'kernel': A.kernel, 'cuts_planned': A.cuts, 'cuts': 0, 'mid_transfer_cuts': 0,
           'corrupt_stores': 0, 'acked_pieces_lost': 0,
           'acked_publishes_lost': 0, 'fs_damaged': 0, 'guest_failures': 0, 'resets': 0,
           'acked_pieces_checked': 0, 'acked_publishes_checked': 0, 'boots': []}
console = open(os.path.join(A.share, 'out', 'console.log'), 'a')


def judge(chk, fsck, boot):
    """Compares one boot's PC-CHECK with what was acknowledged before the previous cut."""
    global acked_big
    problems = []
    if chk is None:
        problems.append('no PC-CHECK from the guest')
    elif chk.get('fatal'):
        problems.append('check failed: %s' % chk['fatal'])
    elif chk.get('store') == 'none':
        if acked_big or acked_pubs:
            problems.append('store directory gone')
    else:
        if not chk.get('offline_open'):
            problems.append('store does not open offline: %s' % chk.get('offline_error'))
        v = chk.get('verify')
        if isinstance(v, dict) and v.get('rc') != 0:
            problems.append('mule verify: %s' % v)
        present = bits(chk['big_present'])
        prev = summary['boots'][-1] if summary['boots'] else {}
        if 'have_at_ingest' in prev and prev['have_at_ingest'] < max(
                prev['acked_pieces_at_end'], len(present)) and prev['acked_pieces_at_end'] < NPIECES:
            # pieces had arrived since the previous ingest started, and the daemon had not
            # acknowledged them all when the power went: that cut fell mid-ingest
            summary['mid_transfer_cuts'] += 1
            prev['mid_transfer'] = True
        lost = sorted(acked_big - present)
        boot['lost_pieces'] = lost
        summary['acked_pieces_checked'] += len(acked_big)
        if lost:
            problems.append('%d acknowledged pieces missing: %s' % (len(lost), lost[:20]))
        if chk.get('big_bad'):
            problems.append('pieces served that differ from the source: %s' % chk['big_bad'][:20])
        # counts: what the daemon said it had (status) before the cut, against what the store
        # holds offline and what the daemon serves now
        short = 0
        for key in ('offline_big_have', 'big_have'):
            if chk.get(key) is not None and chk[key] < acked_n[0]:
                problems.append('%s %d < %d acknowledged by status' % (key, chk[key], acked_n[0]))
                short = max(short, acked_n[0] - chk[key])
        summary['acked_pieces_lost'] += max(short, len(lost))
        boot['acked_count_checked'] = acked_n[0]
        summary['acked_counts_checked'] = summary.get('acked_counts_checked', 0) + acked_n[0]
        bad_pubs = chk.get('pubs_bad') or {}
        summary['acked_publishes_lost'] += len(bad_pubs)
        summary['acked_publishes_checked'] += chk.get('pubs_checked', 0)
        if chk.get('pubs_checked', 0) != len(acked_pubs):
            problems.append('guest checked %s of %d publishes' % (chk.get('pubs_checked'), len(acked_pubs)))
        if bad_pubs:
            problems.append('acknowledged publishes damaged: %s' % bad_pubs)
        if str(chk.get('export', 'identical')) != 'identical':
            problems.append('export: %s' % chk['export'])
        # what the daemon serves now is acknowledged from here on (a lost piece is counted once)
        acked_big = present
        acked_n[0] = len(present)
    if fsck is None:
        problems.append('no e2fsck result')
    elif fsck['rc'] != 0:
        summary['fs_damaged'] += 1
        problems.append('e2fsck -f -n after journal replay: rc %d: %s' % (fsck['rc'], fsck['out'][-200:]))
    boot['problems'] = problems
    corrupt = [p for p in problems if not p.startswith('no PC-CHECK')]
    if corrupt:
        summary['corrupt_stores'] += 1
    return problems


def boot_once(n, mode):
    """One boot. mode 'cut': killed during the ingest; 'final': checks and powers off."""
    job = {'cut': n, 'mode': mode, 'seed': rng.randrange(1 << 30),
           'pubs': list(acked_pubs.values())}
    with open(os.path.join(A.share, 'cut.json'), 'w') as f:
        json.dump(job, f)
    boot = {'boot': n, 'mode': mode}
    tb = time.time()
    proc = subprocess.Popen(qemu_cmd(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    lines = queue.Queue()

    def pump():
        for raw in proc.stdout:
            lines.put((time.time(), raw.decode(errors='replace').rstrip('\n')))
        lines.put((time.time(), None))

    threading.Thread(target=pump, daemon=True).start()
    chk = fsck = None
    kill_at = None
    deadline = tb + A.boot_timeout
    ingest_t = None
    target = None
    pubs_this_boot = 0
    publishing = False
    ended = False
    while True:
        now = time.time()
        limit = min(x for x in (kill_at, deadline) if x is not None)
        try:
            t, line = lines.get(timeout=max(0.01, limit - now))
        except queue.Empty:
            t, line = time.time(), ''
        if line is None:
            ended = True
            break
        if line:
            console.write('[%d %7.2f] %s\n' % (n, t - tb, line))
            tag, _, rest = line.partition(' ')
            try:
                data = json.loads(rest) if tag.startswith('PC-') else None
            except ValueError:
                data = None  # a line cut short by the kill: not acknowledged
            if data is not None:
                if tag == 'PC-FSCK':
                    fsck = data
                elif tag == 'PC-CHECK':
                    chk = data
                    boot['check_s'] = round(t - tb, 1)
                    problems = judge(chk, fsck, boot)
                    say('  boot %d check: %s' % (n, '; '.join(problems) if problems else
                        'store opens, %d/%d acknowledged pieces present, %d/%d publishes intact%s' % (
                            len(acked_big & bits(chk['big_present'])) if 'big_present' in chk else 0,
                            len(acked_big), chk.get('pubs_checked', 0) - len(chk.get('pubs_bad') or {}),
                            len(acked_pubs), ', export identical' if chk.get('export') else '')))
                elif tag == 'PC-RESET':
                    acked_n[0] = 0
                    acked_big.clear()
                    acked_pubs.clear()
                    summary['resets'] += 1
                elif tag == 'PC-INGEST':
                    ingest_t = t
                    boot['boot_to_ingest_s'] = round(t - tb, 1)
                    if mode == 'cut':
                        # Half the cuts fall right after B's daemon acknowledged a random
                        # number of pieces (plus up to 0.3 s), when it is writing the next
                        # ones; the other half at a random time in the first max-delay seconds
                        # (session setup, the burst of pieces, publishes). B's daemon answers
                        # status calls late while it ingests at full speed, so the first kind
                        # often falls back to the timed cut.
                        have = acked_n[0]
                        boot['have_at_ingest'] = have
                        if rng.random() < 0.5 and have < NPIECES - 1:
                            target = rng.randint(have + 1, NPIECES - 1)
                            boot['cut_policy'] = 'after %d acknowledged pieces' % target
                            kill_at = t + rng.uniform(*window())  # if acks are late
                        else:
                            target = None
                            boot['cut_policy'] = 'timed'
                            boot['have_at_ingest'] = have
                            kill_at = t + rng.uniform(*window())
                elif tag in ('PC-ACK', 'PC-ACK-N'):
                    if tag == 'PC-ACK':
                        acked_big.update(bits(data['big']))
                    acked_n[0] = max(acked_n[0], data['have'], len(acked_big))
                    if acked_n[0] == NPIECES and boot.get('have_at_ingest') == 0 and 'full_xfer_s' not in boot:
                        # a whole transfer seen: later timed cuts fall within that time
                        boot['full_xfer_s'] = round(t - ingest_t, 2)
                        xfer_s.append(t - ingest_t)
                    if mode == 'cut' and target is not None and acked_n[0] >= target:
                        kill_at = min(kill_at, t + rng.uniform(0, 0.3))
                        target = None
                elif tag == 'PC-ACK-PUB':
                    acked_pubs[data['id']] = {'id': data['id'], 'file': data['file'],
                                              'piece_size': data['piece_size']}
                    pubs_this_boot += 1
                elif tag == 'PC-BAD':
                    boot.setdefault('problems', []).append('piece %d served wrong while live' % data['piece'])
                    summary['corrupt_stores'] += 1
                elif tag == 'PC-FINAL':
                    boot['stop_rc'] = data.get('stop_rc')
        if kill_at is not None and time.time() >= kill_at:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            boot['killed_after_ingest_s'] = round(time.time() - ingest_t, 2)
            break
        if time.time() >= deadline and kill_at is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            boot['timeout'] = True
            break
    if ended:
        proc.wait()
    boot['ended_by_itself'] = ended
    boot['qemu_rc'] = proc.returncode
    boot['acked_pieces_at_end'] = acked_n[0]
    boot['acked_piece_set_at_end'] = len(acked_big)
    boot['acked_publishes_at_end'] = len(acked_pubs)
    boot['publishes_this_boot'] = pubs_this_boot
    boot['vm_s'] = round(time.time() - tb, 1)
    summary['boots'].append(boot)
    return boot, chk


fail = False
done = 0
n = -1
while done <= A.cuts:
    n += 1
    mode = 'cut' if done < A.cuts else 'final'
    boot, chk = boot_once(n, mode)
    done += 1
    if boot.get('problems'):
        fail = True
    if mode == 'cut' and boot['ended_by_itself'] and boot['qemu_rc'] != 0 and 'check_s' not in boot:
        # qemu itself died before the guest did anything (qemu 7.2 crashes now and then
        # under this load): an unplanned power cut at boot; boot again, up to 3 times.
        summary['qemu_crashes'] = summary.get('qemu_crashes', 0) + 1
        say('boot %d: qemu exited on its own (rc %s) after %.0f s; booting again' % (
            n, boot['qemu_rc'], boot['vm_s']))
        done -= 1
        if summary['qemu_crashes'] > 3 + A.cuts // 10:
            fail = True
            break
        continue
    if mode == 'cut':
        if 'killed_after_ingest_s' in boot:
            summary['cuts'] += 1
            say('cut %d/%d: power cut %.1f s into the ingest (VM %.0f s), acknowledged %d/%d pieces, '
                '%d publishes (%d this boot)' % (done, A.cuts, boot['killed_after_ingest_s'],
                                                 boot['vm_s'], acked_n[0], NPIECES,
                                                 len(acked_pubs), boot['publishes_this_boot']))
        else:
            fail = True
            summary['guest_failures'] += 1
            say('cut %d/%d: guest never started the ingest (qemu rc %s, %.0f s); see console.log' % (
                done, A.cuts, boot['qemu_rc'], boot['vm_s']))
    else:
        ok = chk is not None and boot.get('stop_rc') == 0 and boot.get('qemu_rc') == 0
        if not ok:
            fail = True
            summary['guest_failures'] += 1
        say('final boot: checked, node B stopped with %s, qemu rc %s' % (boot.get('stop_rc'), boot.get('qemu_rc')))
    with open(A.out, 'w') as f:
        json.dump(summary, f, indent=1)

summary['wall_s'] = round(time.time() - T0, 1)
summary['ok'] = not fail and summary['corrupt_stores'] == 0 and summary['acked_pieces_lost'] == 0 \
    and summary['acked_publishes_lost'] == 0 and summary['cuts'] == A.cuts \
    and summary['mid_transfer_cuts'] > 0 and summary['acked_publishes_checked'] > 0
if summary['mid_transfer_cuts'] == 0 or summary['acked_publishes_checked'] == 0:
    say('NOT A TEST: no cut fell while pieces were arriving, or no acknowledged publish was checked')
with open(A.out, 'w') as f:
    json.dump(summary, f, indent=1)
say('---- %d power cuts (%d mid-transfer), %d corrupt stores, %d acknowledged pieces lost '
    '(of %d checked), %d acknowledged publishes lost (of %d checked), %d filesystems damaged, '
    '%d store resets, %d guest failures, %.0f s' % (
        summary['cuts'], summary['mid_transfer_cuts'], summary['corrupt_stores'],
        summary['acked_pieces_lost'], summary['acked_pieces_checked'], summary['acked_publishes_lost'],
        summary['acked_publishes_checked'], summary['fs_damaged'], summary['resets'],
        summary['guest_failures'], summary['wall_s']))
sys.exit(0 if summary['ok'] else 1)
