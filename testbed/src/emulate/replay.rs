//! The contact schedule driver: the real-time loop that switches contacts when they are
//! due, publishes at the publish time, watches the export directories and polls the
//! daemons, until every audience node completed, the trace (plus grace) ended, or Ctrl-C.

use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::daemons::{BundleRow, exported_file, poll_bundles, spawn_publish};
use super::plan::{Plan, Switch};
use super::report::{Finish, Progress};
use super::signals::stopped;
use super::tally::{Counters, Tally, tx_totals};
use super::topology::{Topology, ip_batch, link_counters};
use super::{EmulateError, EmulateOptions, POLL_EVERY, TICK};

/// What the publish thread returns: `mule publish`'s output.
type Published = Result<String, EmulateError>;

/// The loop's state.
pub(super) struct Replay<'a> {
    plan: &'a Plan,
    opts: &'a EmulateOptions,
    /// The published file's content (exports are compared with it).
    content: Vec<u8>,
    /// The published file.
    src: PathBuf,
    /// The publisher key file.
    key: String,
    data_dirs: Vec<PathBuf>,
    t0: Instant,
    next_switch: usize,
    next_poll: Duration,
    poller: Option<(Duration, JoinHandle<Vec<Vec<BundleRow>>>)>,
    publisher: Option<(Duration, JoinHandle<Published>)>,
    /// What the replay measured (see [`Measured`]).
    m: Measured,
}

/// What a replay measured, for the report.
pub(super) struct Measured {
    pub(super) finish: Finish,
    /// Real time since the replay's start when it ended.
    pub(super) real_end: Duration,
    pub(super) tally: Tally,
    /// Per node: bytes sent on all interfaces over the run.
    pub(super) tx_total: Vec<u64>,
    /// Contacts switched up.
    pub(super) replayed: usize,
    /// Largest contact-switch lag, real seconds.
    pub(super) max_lag: f64,
    pub(super) bundle_id: Option<String>,
    /// When `mule publish` started (real time since the replay's start).
    pub(super) published_real: Option<Duration>,
    /// Real seconds `mule publish` took.
    pub(super) publish_cmd_s: f64,
    /// Per node: when it completed (real time since the replay's start).
    pub(super) complete_real: Vec<Option<Duration>>,
    /// Per node: export byte-identical to the published file.
    pub(super) identical: Vec<Option<bool>>,
    /// Per node: its row of the bundle in the last poll.
    pub(super) rows: Vec<BundleRow>,
}

impl<'a> Replay<'a> {
    /// A replay about to start; `content` was written to `src`, `key` is the key file.
    pub(super) fn new(
        plan: &'a Plan,
        opts: &'a EmulateOptions,
        topo: &Topology,
        content: Vec<u8>,
        src: PathBuf,
        key: String,
    ) -> Replay<'a> {
        let n = plan.nodes();
        Replay {
            plan,
            opts,
            content,
            src,
            key,
            data_dirs: topo.daemons.iter().map(|d| d.data_dir.clone()).collect(),
            t0: Instant::now(),
            next_switch: 0,
            next_poll: Duration::ZERO,
            poller: None,
            publisher: None,
            m: Measured {
                finish: Finish::Interrupted,
                real_end: Duration::ZERO,
                tally: Tally::new(n),
                tx_total: vec![0; n],
                replayed: 0,
                max_lag: 0.0,
                bundle_id: None,
                published_real: None,
                publish_cmd_s: 0.0,
                complete_real: vec![None; n],
                identical: vec![None; n],
                rows: vec![BundleRow::default(); n],
            },
        }
    }

    /// Runs the loop to its end, then closes the contacts still up (their bytes count),
    /// takes the final counters and polls a last time. `progress` is called about once per
    /// real second.
    pub(super) fn run(
        mut self,
        topo: &Topology,
        progress: &mut impl FnMut(&Progress),
    ) -> Result<Measured, EmulateError> {
        let end_real =
            self.plan.real_of(self.plan.trace.end) + Duration::from_secs_f64(self.opts.grace);
        self.m.finish = loop {
            let now = self.t0.elapsed();
            if stopped() {
                break Finish::Interrupted;
            }
            self.switch_due(topo, now)?;
            self.start_publish(topo, now);
            self.collect_publish()?;
            self.check_exports(topo);
            self.collect_poll();
            if now >= self.next_poll {
                self.poll_and_report(now, progress);
            }
            if self.m.published_real.is_some() && self.all_complete() {
                break Finish::AllComplete;
            }
            if now >= end_real {
                break Finish::TraceEnded;
            }
            self.sleep(now);
        };
        self.m.real_end = self.t0.elapsed();
        self.wind_up(topo)?;
        Ok(self.m)
    }

    /// Applies the contact switches due at `now`.
    fn switch_due(&mut self, topo: &Topology, now: Duration) -> Result<(), EmulateError> {
        let (plan, switches) = (self.plan, &self.plan.switches);
        let due = |i: usize| i < switches.len() && plan.real_of(switches[i].t) <= now;
        if !due(self.next_switch) {
            return Ok(());
        }
        let snap = link_counters(topo.switch_name()).map_err(EmulateError::Topology)?;
        let mut batch = String::new();
        while due(self.next_switch) {
            let s = switches[self.next_switch];
            let lag = (now - plan.real_of(s.t)).as_secs_f64();
            self.m.max_lag = self.m.max_lag.max(lag);
            self.m.tally.apply(&s, plan, topo, &snap, &mut batch);
            if s.up {
                self.m.replayed += 1;
            }
            self.next_switch += 1;
        }
        // All switches due at once in one `ip` process: at high time compression several
        // contacts change within a few milliseconds, and one process per change would
        // delay the later ones.
        ip_batch(topo.switch_name(), &batch).map_err(EmulateError::Topology)
    }

    /// Starts `mule publish` at the origin once the publish time has come (on a helper
    /// thread; completion times count from the command's start, the trace's publish time).
    fn start_publish(&mut self, topo: &Topology, now: Duration) {
        if self.m.published_real.is_some()
            || self.publisher.is_some()
            || now < self.plan.real_of(self.plan.publish_at)
        {
            return;
        }
        let origin_dir = &topo.daemons[self.plan.origin as usize].data_dir;
        let h = spawn_publish(
            &self.opts.mule,
            &self.src,
            &self.key,
            self.plan.piece_size,
            origin_dir,
        );
        self.publisher = Some((now, h));
    }

    /// Takes the bundle id from a finished `mule publish`.
    fn collect_publish(&mut self) -> Result<(), EmulateError> {
        if self
            .publisher
            .as_ref()
            .is_some_and(|(_, h)| h.is_finished())
            && let Some((started, h)) = self.publisher.take()
        {
            let out_id = h.join().map_err(|_| EmulateError::Daemon {
                what: "`mule publish`".into(),
                why: "its thread panicked".into(),
            })??;
            self.m.bundle_id = out_id
                .split(|c: char| !c.is_ascii_hexdigit())
                .find(|w| w.len() == 64)
                .map(str::to_owned);
            self.m.published_real = Some(started);
            self.m.publish_cmd_s = (self.t0.elapsed() - started).as_secs_f64();
            self.m.complete_real[self.plan.origin as usize] = self.m.published_real;
            self.next_poll = Duration::ZERO;
        }
        Ok(())
    }

    /// Notes the audience nodes whose export appeared, comparing it with the published file
    /// (cheap: one directory listing per audience node).
    fn check_exports(&mut self, topo: &Topology) {
        let Some(pub_at) = self.m.published_real else {
            return;
        };
        for v in 0..self.plan.nodes() {
            if !self.plan.audience[v] || self.m.complete_real[v].is_some() {
                continue;
            }
            if let Some(file) = exported_file(&topo.daemons[v].data_dir) {
                let at = self.t0.elapsed();
                self.m.complete_real[v] = Some(at.max(pub_at));
                self.m.identical[v] = Some(std::fs::read(&file).is_ok_and(|b| b == self.content));
            }
        }
    }

    /// Takes a finished poll's rows; a node outside the audience completes when it holds
    /// every piece. (Polling runs on its own thread: a round of `mule bundles` takes a few
    /// hundred milliseconds of process start-ups, which would delay contact switches.)
    fn collect_poll(&mut self) {
        if self.poller.as_ref().is_some_and(|(_, h)| h.is_finished())
            && let Some((started, h)) = self.poller.take()
            && let (Ok(polled), Some(id)) = (h.join(), &self.m.bundle_id)
        {
            for (v, rows) in polled.iter().enumerate() {
                if let Some(r) = rows.iter().find(|r| &r.id == id) {
                    self.m.rows[v] = r.clone();
                    if !self.plan.audience[v]
                        && self.m.complete_real[v].is_none()
                        && r.pieces_total > 0
                        && r.pieces_have == r.pieces_total
                    {
                        self.m.complete_real[v] = Some(started);
                    }
                }
            }
        }
    }

    /// Starts the next poll (once published) and reports progress.
    fn poll_and_report(&mut self, now: Duration, progress: &mut impl FnMut(&Progress)) {
        self.next_poll = now + POLL_EVERY;
        if self.m.bundle_id.is_some() && self.poller.is_none() {
            let (mule, dirs) = (self.opts.mule.clone(), self.data_dirs.clone());
            self.poller = Some((now, std::thread::spawn(move || poll_bundles(&mule, &dirs))));
        }
        let (plan, m) = (self.plan, &self.m);
        let n = plan.nodes();
        let audience = |v: &usize| plan.audience[*v];
        let (have, total) = (0..n).filter(audience).fold((0, 0), |acc, v| {
            let total = m.rows[v].pieces_total.max(plan.scenario.pieces() as u64);
            let have = if m.complete_real[v].is_some() {
                total
            } else {
                m.rows[v].pieces_have
            };
            (acc.0 + have, acc.1 + total)
        });
        progress(&Progress {
            real_s: now.as_secs_f64(),
            trace_s: plan.trace_of(now).min(plan.trace.end) - plan.trace.start,
            trace_len_s: plan.trace.duration(),
            published: m.published_real.is_some(),
            contacts_up: m.tally.open.len(),
            complete: (0..n)
                .filter(|&v| audience(&v) && m.complete_real[v].is_some())
                .count(),
            audience: (0..n).filter(audience).count(),
            pieces_have: have,
            pieces_total: total,
        });
    }

    /// Whether every audience node completed.
    fn all_complete(&self) -> bool {
        (0..self.plan.nodes()).all(|v| !self.plan.audience[v] || self.m.complete_real[v].is_some())
    }

    /// Sleeps until the next thing due, at most one tick.
    fn sleep(&self, now: Duration) {
        let mut wake = now + TICK;
        if let Some(s) = self.plan.switches.get(self.next_switch) {
            wake = wake.min(self.plan.real_of(s.t));
        }
        let now2 = self.t0.elapsed();
        if wake > now2 {
            std::thread::sleep(wake - now2);
        }
    }

    /// After the loop: closes the contacts still up, takes the final counters, and polls a
    /// last time for the final piece counts.
    fn wind_up(&mut self, topo: &Topology) -> Result<(), EmulateError> {
        let snap: Counters = link_counters(topo.switch_name()).map_err(EmulateError::Topology)?;
        let still_open: Vec<usize> = self.m.tally.open.keys().copied().collect();
        for pair in still_open {
            let contact = self.m.tally.open[&pair].contact;
            let s = Switch {
                t: self.plan.trace_of(self.m.real_end),
                up: false,
                pair,
                contact,
            };
            self.m
                .tally
                .apply(&s, self.plan, topo, &snap, &mut String::new());
        }
        self.m.tx_total = tx_totals(topo, &snap, self.plan.nodes());
        if let Some(id) = &self.m.bundle_id {
            if let Some((_, h)) = self.poller.take() {
                let _ = h.join();
            }
            let polled = poll_bundles(&self.opts.mule, &self.data_dirs);
            for (v, rows) in polled.iter().enumerate() {
                if let Some(r) = rows.iter().find(|r| &r.id == id) {
                    self.m.rows[v] = r.clone();
                }
            }
        }
        Ok(())
    }
}
