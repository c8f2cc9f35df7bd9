//! The plan of an emulation, fixed before anything is created: the options checked against
//! the loaded trace, the simulator's [`Scenario`] they amount to, the distinct node pairs
//! (one bridge each) and the schedule of contact switches the replay applies.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::time::Duration;

use super::{EmulateError, EmulateOptions, MAX_NODES, MAX_PAIRS};
use crate::run::Audience;
use crate::sim::{Overheads, Radio, Scenario};
use crate::trace::{self, NodeIx, Trace};
use crate::units::Rate;

/// A contact switch due at trace time `t`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Switch {
    pub(super) t: f64,
    pub(super) up: bool,
    pub(super) pair: usize,
    pub(super) contact: usize,
}

/// A checked emulation: everything [`super::run`] derives from its options and the trace.
pub(super) struct Plan {
    pub(super) trace: Trace,
    pub(super) origin: NodeIx,
    /// Piece size, bytes.
    pub(super) piece_size: u64,
    /// Trace time of publishing.
    pub(super) publish_at: f64,
    /// Time compression `K`.
    pub(super) k: f64,
    /// The rate in trace time, `--rate ÷ K`.
    pub(super) eff_rate: Rate,
    /// Per node: subscribed.
    pub(super) audience: Vec<bool>,
    pub(super) scenario: Scenario,
    /// Distinct pairs `(a, b)` with `a < b`, in order of first contact.
    pub(super) pairs: Vec<(NodeIx, NodeIx)>,
    /// Every contact's up and down, in time order (downs first at the same instant).
    pub(super) switches: Vec<Switch>,
    /// Contacts shorter than one real second after compression.
    pub(super) under_1s: usize,
}

impl Plan {
    /// Checks the options (root, numbers, the trace, the bundle, the binary) in that order
    /// and plans the run.
    pub(super) fn new(opts: &EmulateOptions) -> Result<Plan, EmulateError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(EmulateError::NotRoot);
        }
        check_numbers(opts)?;
        let trace = load_trace(opts)?;
        let publish_at = check_publish(opts, &trace)?;
        if !opts.mule.is_file() && opts.mule.components().count() > 1 {
            return Err(EmulateError::Invalid(format!(
                "--mule {}: no such file (build it with `cargo build -p mule`)",
                opts.mule.display()
            )));
        }
        let origin = opts.publish.node;
        let piece_size = opts.piece_size.0;
        let k = opts.time_scale;
        let eff_rate = Rate(opts.rate.bytes_per_s() / k);
        let audience = match opts.audience {
            Audience::All => (0..trace.nodes).map(|v| v != origin).collect::<Vec<_>>(),
            Audience::Fraction(f) => Scenario::pick_audience(trace.nodes, origin, f, opts.seed),
        };
        let scenario = Scenario {
            rate: eff_rate,
            bundle: opts.publish.size.0,
            piece_size: piece_size as u32,
            origin,
            publish_at,
            audience: audience.clone(),
            carry_quota_pieces: (opts.carry_quota.0 / piece_size).min(u32::MAX as u64) as u32,
            fpr: 0.01,
            overheads: Overheads::mule(piece_size.min(256 << 10) as u32),
            radio: Radio::PerContact,
            seed: opts.seed,
        };
        let (pairs, switches) = schedule(&trace)?;
        let under_1s = trace
            .contacts
            .iter()
            .filter(|c| c.duration() / k < 1.0)
            .count();
        Ok(Plan {
            trace,
            origin,
            piece_size,
            publish_at,
            k,
            eff_rate,
            audience,
            scenario,
            pairs,
            switches,
            under_1s,
        })
    }

    /// Nodes in the trace.
    pub(super) fn nodes(&self) -> usize {
        self.trace.nodes as usize
    }

    /// Real time since the replay's start at which trace time `t` is due.
    pub(super) fn real_of(&self, t: f64) -> Duration {
        Duration::from_secs_f64(((t - self.trace.start) / self.k).max(0.0))
    }

    /// Trace time at real time `d` since the replay's start.
    pub(super) fn trace_of(&self, d: Duration) -> f64 {
        self.trace.start + d.as_secs_f64() * self.k
    }
}

/// `--time-scale` and `--grace` are usable numbers.
fn check_numbers(opts: &EmulateOptions) -> Result<(), EmulateError> {
    if !(opts.time_scale > 0.0 && opts.time_scale.is_finite()) {
        return Err(EmulateError::Invalid(format!(
            "--time-scale {} must be a positive number",
            opts.time_scale
        )));
    }
    if !(opts.grace >= 0.0 && opts.grace.is_finite()) {
        return Err(EmulateError::Invalid(format!(
            "--grace {} must be a non-negative number of seconds",
            opts.grace
        )));
    }
    Ok(())
}

/// Loads the trace (the `simulate` rules) and refuses more than [`MAX_NODES`] nodes.
fn load_trace(opts: &EmulateOptions) -> Result<Trace, EmulateError> {
    let topts = trace::Options {
        min_contact: opts.min_contact,
        nodes: opts.nodes,
        window: None,
    };
    let trace = Trace::load(&opts.trace, opts.format, &topts)?;
    if trace.nodes > MAX_NODES {
        return Err(EmulateError::Invalid(format!(
            "{} nodes: emulation starts one daemon per node and is limited to {MAX_NODES}; \
             use `simulate` for larger fleets",
            trace.nodes
        )));
    }
    Ok(trace)
}

/// Checks the origin, the bundle and piece sizes; returns the trace time of publishing
/// (and warns when the origin meets nobody after it).
fn check_publish(opts: &EmulateOptions, trace: &Trace) -> Result<f64, EmulateError> {
    let origin = opts.publish.node;
    if origin >= trace.nodes {
        return Err(EmulateError::Invalid(format!(
            "--publish: origin node {origin} is not in the trace (nodes 0..{})",
            trace.nodes
        )));
    }
    if opts.publish.size.0 == 0 {
        return Err(EmulateError::Invalid(
            "--publish: the bundle size must be positive".into(),
        ));
    }
    let ps = opts.piece_size.0;
    if !(4096..=4 << 20).contains(&ps) {
        return Err(EmulateError::Invalid(format!(
            "--piece-size {} is outside 4 KiB..4 MiB (the daemon's limits)",
            opts.piece_size
        )));
    }
    let publish_at = opts
        .publish_at
        .resolve(trace)
        .map_err(EmulateError::Invalid)?;
    if let Some(w) = crate::run::isolated_origin(trace, origin, publish_at) {
        eprintln!("mule-testbed: warning: {w}");
    }
    Ok(publish_at)
}

/// The distinct pairs in order of first contact (at most [`MAX_PAIRS`]) and the contact
/// switches in time order.
type Schedule = (Vec<(NodeIx, NodeIx)>, Vec<Switch>);

fn schedule(trace: &Trace) -> Result<Schedule, EmulateError> {
    let mut pair_of: HashMap<(NodeIx, NodeIx), usize> = HashMap::new();
    let mut pairs: Vec<(NodeIx, NodeIx)> = Vec::new();
    for c in &trace.contacts {
        let key = (c.a.min(c.b), c.a.max(c.b));
        if let Entry::Vacant(e) = pair_of.entry(key) {
            e.insert(pairs.len());
            pairs.push(key);
        }
    }
    if pairs.len() > MAX_PAIRS {
        return Err(EmulateError::Invalid(format!(
            "{} distinct node pairs in the trace; the emulation builds one bridge per pair and \
             is limited to {MAX_PAIRS}",
            pairs.len()
        )));
    }
    let mut switches: Vec<Switch> = Vec::with_capacity(2 * trace.contacts.len());
    for (i, c) in trace.contacts.iter().enumerate() {
        let pair = pair_of[&(c.a.min(c.b), c.a.max(c.b))];
        switches.push(Switch {
            t: c.start,
            up: true,
            pair,
            contact: i,
        });
        switches.push(Switch {
            t: c.end,
            up: false,
            pair,
            contact: i,
        });
    }
    // Downs before ups at the same instant, so a pair never looks connected twice.
    switches.sort_by(|x, y| x.t.total_cmp(&y.t).then(x.up.cmp(&y.up)));
    Ok((pairs, switches))
}
