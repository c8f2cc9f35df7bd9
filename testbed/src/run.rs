//! One `simulate` run from parsed arguments to a written report: load the trace,
//! build the scenario, compute the oracle, simulate each strategy, write files.
//! `main.rs` only parses the command line into [`SimulateArgs`].

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::mule_strategy::Mule;
use crate::oracle::Oracle;
use crate::report::{Report, ReportError, RunInfo};
use crate::sim::{Model, Outcome, Overheads, Radio, Scenario, simulate};
use crate::strategy::{ClientServer, Epidemic, Strategy};
use crate::trace::{self, Format, NodeIx, Trace, TraceError};
use crate::units::{Rate, Size, UnitError};

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The trace was rejected.
    #[error(transparent)]
    Trace(#[from] TraceError),
    /// The report could not be written.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// An argument makes no sense for this trace.
    #[error("{0}")]
    Invalid(String),
}

/// `SIZE@NODE`: what to publish where.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Publish {
    /// Bundle size.
    pub size: Size,
    /// Origin node.
    pub node: NodeIx,
}

impl FromStr for Publish {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (size, node) = s
            .split_once('@')
            .ok_or_else(|| format!("{s:?}: expected SIZE@NODE, e.g. 2MB@0"))?;
        Ok(Publish {
            size: size.parse().map_err(|e: UnitError| e.to_string())?,
            node: node
                .trim()
                .parse()
                .map_err(|_| format!("{node:?}: expected a node index"))?,
        })
    }
}

/// When to publish: a fraction of the trace (`0.25`, `25%`) or seconds (`3600s`, or
/// any number above 1).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum PublishAt {
    /// Fraction of the trace's duration after its start.
    Fraction(f64),
    /// Seconds after the trace's start.
    Seconds(f64),
}

impl PublishAt {
    /// The publishing time in trace seconds.
    pub fn time_in(self, trace: &Trace) -> f64 {
        match self {
            PublishAt::Fraction(f) => trace.start + f * trace.duration(),
            PublishAt::Seconds(s) => s,
        }
    }

    /// [`time_in`](Self::time_in), refused when it falls outside the trace.
    pub fn resolve(self, trace: &Trace) -> Result<f64, String> {
        let at = self.time_in(trace);
        if at < trace.start || at > trace.end {
            return Err(format!(
                "--publish-at {at} s is outside the trace [{}, {}]",
                trace.start, trace.end
            ));
        }
        Ok(at)
    }
}

impl FromStr for PublishAt {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = || format!("{s:?}: expected a fraction (0.25, 25%) or seconds (3600s)");
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p.parse().map_err(|_| bad())?;
            return if (0.0..=100.0).contains(&p) {
                Ok(PublishAt::Fraction(p / 100.0))
            } else {
                Err(bad())
            };
        }
        if let Some(x) = s.strip_suffix('s') {
            let x: f64 = x.parse().map_err(|_| bad())?;
            return if x >= 0.0 && x.is_finite() {
                Ok(PublishAt::Seconds(x))
            } else {
                Err(bad())
            };
        }
        let x: f64 = s.parse().map_err(|_| bad())?;
        // A bare number is a fraction of the trace; `1.5` meaning 1.5 s while `1`
        // meant the trace's end surprised users, so seconds need their unit.
        if (0.0..=1.0).contains(&x) {
            Ok(PublishAt::Fraction(x))
        } else {
            Err(format!(
                "{s:?}: a bare number is a fraction of the trace (0 to 1); write {s}s for \
                 seconds or a percentage (25%)"
            ))
        }
    }
}

/// Who subscribes: everybody but the origin, or a seeded fraction of the others.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Audience {
    /// Every node except the origin.
    All,
    /// This fraction of the non-origin nodes (seeded choice).
    Fraction(f64),
}

impl FromStr for Audience {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "all" {
            return Ok(Audience::All);
        }
        let f = match s.strip_suffix('%') {
            Some(p) => p.parse::<f64>().map(|p| p / 100.0),
            None => s.parse::<f64>(),
        }
        .map_err(|_| format!("{s:?}: expected `all` or a fraction like 0.3 or 30%"))?;
        if (0.0..=1.0).contains(&f) && f > 0.0 {
            Ok(Audience::Fraction(f))
        } else {
            Err(format!("{s:?}: the audience fraction must be in (0, 1]"))
        }
    }
}

impl std::fmt::Display for Audience {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Audience::All => f.write_str("all"),
            Audience::Fraction(x) => write!(f, "{:.0}%", x * 100.0),
        }
    }
}

/// The strategies a run can compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StrategyKind {
    /// Mule's own scheduler and prediction.
    Mule,
    /// What-if: Mule with a stricter carry rule in front of the scheduler.
    MuleStrict,
    /// Rarest-first without prediction.
    Rarest,
    /// Naive epidemic.
    Epidemic,
    /// Client–server.
    ClientServer,
}

impl FromStr for StrategyKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "mule" => Ok(StrategyKind::Mule),
            "mule-strict" => Ok(StrategyKind::MuleStrict),
            "rarest" | "rarest-first" => Ok(StrategyKind::Rarest),
            "epidemic" => Ok(StrategyKind::Epidemic),
            "client-server" | "cs" => Ok(StrategyKind::ClientServer),
            other => Err(format!(
                "unknown strategy {other:?} (expected mule, rarest, epidemic, client-server, mule-strict)"
            )),
        }
    }
}

/// Arguments of `mule-testbed simulate`.
#[derive(Clone, Debug)]
pub struct SimulateArgs {
    /// The trace file.
    pub trace: PathBuf,
    /// Its format (`None`: guess).
    pub format: Option<Format>,
    /// Link rate.
    pub rate: Rate,
    /// Bundle size and origin.
    pub publish: Publish,
    /// When to publish.
    pub publish_at: PublishAt,
    /// Who subscribes.
    pub audience: Audience,
    /// Declared node count.
    pub nodes: Option<u32>,
    /// Minimum contact length, seconds.
    pub min_contact: f64,
    /// Optional time window `[from, to]` seconds.
    pub window: Option<(f64, f64)>,
    /// RNG seed.
    pub seed: u64,
    /// Piece size.
    pub piece_size: Size,
    /// Bytes a non-audience node may carry.
    pub carry_quota: Size,
    /// Bloom false-positive rate.
    pub fpr: f64,
    /// Strategies to compare, in order.
    pub strategies: Vec<StrategyKind>,
    /// Social prediction in the Mule strategy.
    pub prediction: bool,
    /// How a node's simultaneous contacts share capacity.
    pub radio: Radio,
    /// Which simulation runs Mule and rarest-first (the baselines are always piece-level).
    pub model: Model,
    /// One-way link latency of the real-session model, ms.
    pub latency_ms: u64,
}

/// Loads the trace and builds the scenario for `args`.
pub fn prepare(args: &SimulateArgs) -> Result<(Trace, Scenario), RunError> {
    let opts = trace::Options {
        min_contact: args.min_contact,
        nodes: args.nodes,
        window: args.window,
    };
    let trace = Trace::load(&args.trace, args.format, &opts)?;
    let origin = args.publish.node;
    if origin >= trace.nodes {
        return Err(RunError::Invalid(format!(
            "--publish: origin node {origin} is not in the trace (nodes 0..{})",
            trace.nodes
        )));
    }
    let publish_at = args.publish_at.resolve(&trace).map_err(RunError::Invalid)?;
    if args.publish.size.0 == 0 {
        return Err(RunError::Invalid(
            "--publish: the bundle size must be positive".into(),
        ));
    }
    let ps = args.piece_size.0;
    let max_piece = mule_engine::frame::MAX_PIECE_BYTES as u64;
    if !(1024..=max_piece).contains(&ps) {
        return Err(RunError::Invalid(format!(
            "--piece-size {} is outside 1 KiB..256 KiB (the session's largest piece)",
            args.piece_size
        )));
    }
    if !(args.fpr > 0.0 && args.fpr < 0.5) {
        return Err(RunError::Invalid(format!(
            "--fpr {} is outside (0, 0.5)",
            args.fpr
        )));
    }
    let pieces = args.publish.size.0.div_ceil(ps);
    if pieces > 1 << 22 {
        return Err(RunError::Invalid(format!(
            "{pieces} pieces is too many: use a larger --piece-size"
        )));
    }
    let fraction = match args.audience {
        Audience::All => 1.0,
        Audience::Fraction(f) => f,
    };
    let sc = Scenario {
        rate: args.rate,
        bundle: args.publish.size.0,
        piece_size: ps as u32,
        origin,
        publish_at,
        audience: Scenario::pick_audience(trace.nodes, origin, fraction, args.seed),
        carry_quota_pieces: (args.carry_quota.0 / ps).min(u32::MAX as u64) as u32,
        fpr: args.fpr,
        overheads: Overheads::mule(ps as u32),
        radio: args.radio,
        seed: args.seed,
    };
    Ok((trace, sc))
}

/// Builds the piece-level strategy object of `kind`.
pub fn strategy(
    kind: StrategyKind,
    sc: &Scenario,
    nodes: u32,
    prediction: bool,
) -> Box<dyn Strategy> {
    match kind {
        StrategyKind::Mule => Box::new(Mule::new(sc, nodes, prediction)),
        StrategyKind::Rarest => Box::new(Mule::rarest(sc, nodes)),
        StrategyKind::MuleStrict => Box::new(Mule::strict(sc, nodes)),
        StrategyKind::Epidemic => Box::new(Epidemic),
        StrategyKind::ClientServer => Box::new(ClientServer),
    }
}

/// Builds the piece-level strategy objects for a run.
pub fn strategies(
    kinds: &[StrategyKind],
    sc: &Scenario,
    nodes: u32,
    prediction: bool,
) -> Vec<Box<dyn Strategy>> {
    kinds
        .iter()
        .map(|&k| strategy(k, sc, nodes, prediction))
        .collect()
}

/// The model `kind` runs on: Mule and rarest-first through real sessions when `args.model`
/// asks for them and the radio is per contact; everything else piece-level (epidemic,
/// client-server and `mule-strict` are not Mule's session).
pub fn model_of(kind: StrategyKind, args: &SimulateArgs) -> Model {
    let session_kind = matches!(kind, StrategyKind::Mule | StrategyKind::Rarest);
    if session_kind && args.model == Model::Sessions && args.radio == Radio::PerContact {
        Model::Sessions
    } else {
        Model::Pieces
    }
}

/// Runs one strategy on its model.
pub fn run_strategy(
    kind: StrategyKind,
    args: &SimulateArgs,
    trace: &Trace,
    sc: &Scenario,
    progress: &mut dyn FnMut(&str, f64),
) -> Outcome {
    let mut s = strategy(kind, sc, trace.nodes, args.prediction);
    let name = s.name().to_owned();
    match model_of(kind, args) {
        Model::Sessions => {
            let opts = crate::fleet::Options {
                latency_ms: args.latency_ms,
                prediction: kind == StrategyKind::Mule && args.prediction,
            };
            crate::fleet::simulate(trace, sc, &name, opts, &mut |f| progress(&name, f))
        }
        Model::Pieces => simulate(trace, sc, s.as_mut(), &mut |f| progress(&name, f)),
    }
}

/// The report's note on which model ran which strategy.
fn models_note(outcomes: &[Outcome], models: &[Model]) -> Vec<String> {
    let names = |m: Model| -> Vec<String> {
        outcomes
            .iter()
            .zip(models)
            .filter(|(_, x)| **x == m)
            .map(|(o, _)| o.strategy.clone())
            .collect()
    };
    let mut notes = Vec::new();
    let sessions = names(Model::Sessions);
    if !sessions.is_empty() {
        notes.push(format!(
            "{} ({}).",
            crate::fleet::STATUS,
            sessions.join(", ")
        ));
    }
    let pieces = names(Model::Pieces);
    if !pieces.is_empty() {
        notes.push(format!(
            "model: piece-level ({}): {}",
            pieces.join(", "),
            crate::mule_strategy::STATUS
        ));
    }
    notes
}

/// Runs the simulation and returns the report (not yet written). `progress(name,
/// fraction)` is called as each strategy advances.
pub fn simulate_run(
    args: &SimulateArgs,
    progress: &mut dyn FnMut(&str, f64),
) -> Result<(Trace, Report), RunError> {
    let (trace, sc) = prepare(args)?;
    let oracle = Oracle::compute(&trace, sc.origin, sc.publish_at, sc.bundle, sc.rate);
    let mut outcomes = Vec::new();
    let mut models = Vec::new();
    for &kind in &args.strategies {
        outcomes.push(run_strategy(kind, args, &trace, &sc, progress));
        models.push(model_of(kind, args));
    }
    let name = crate::trace::name_of(&args.trace);
    let mut notes = vec![format!(
        "Contacts shorter than {} s were extended to {} s (not dropped); overlapping contacts of a pair were merged.",
        trace.min_contact, trace.min_contact
    )];
    notes.extend(models_note(&outcomes, &models));
    if let Some(w) = isolated_origin(&trace, sc.origin, sc.publish_at) {
        progress_warning(&w);
        notes.push(format!("Warning: {w}"));
    }
    let info = RunInfo {
        trace: name,
        nodes: trace.nodes,
        contacts: trace.contacts.len(),
        start_s: trace.start,
        duration_s: trace.duration(),
        min_contact_s: trace.min_contact,
        contacts_extended: trace.stats.extended,
        scenario: sc,
        audience_spec: args.audience.to_string(),
        prediction: args.prediction,
        notes,
    };
    let mut report = Report::build(info, oracle, outcomes);
    report.label_models(&models);
    Ok((trace, report))
}

/// Why nothing can spread: the origin has no contact that lasts past the
/// publishing time (`None` when it has one).
pub fn isolated_origin(trace: &Trace, origin: u32, publish_at: f64) -> Option<String> {
    let any = trace
        .contacts
        .iter()
        .any(|c| (c.a == origin || c.b == origin) && c.end > publish_at);
    (!any).then(|| {
        format!(
            "origin node {origin} has no contact after the publishing time ({publish_at} s): \
             the bundle cannot leave it, every strategy delivers nothing"
        )
    })
}

fn progress_warning(w: &str) {
    eprintln!("mule-testbed: warning: {w}");
}

/// Writes the report files and plots into `out`; returns plot warnings.
pub fn write_report(
    report: &Report,
    trace: &Trace,
    out: &std::path::Path,
) -> Result<Vec<String>, RunError> {
    report.write(out, trace)?;
    Ok(crate::plot::write_all(report, trace, out)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 11: an origin with no contact after publishing ran with no warning.
    #[test]
    fn an_isolated_origin_is_named() {
        let t = Trace::parse(
            "0,10,0,1\n20,30,1,2\n",
            trace::Format::Csv,
            &trace::Options {
                min_contact: 0.0,
                ..trace::Options::default()
            },
        )
        .unwrap();
        assert!(isolated_origin(&t, 0, 5.0).is_none());
        let w = isolated_origin(&t, 0, 15.0).expect("node 0 is isolated after 10 s");
        assert!(w.contains("origin node 0"), "{w}");
        assert!(isolated_origin(&t, 2, 15.0).is_none());
    }

    #[test]
    fn argument_values_parse() {
        assert_eq!(
            "2MB@3".parse::<Publish>().unwrap(),
            Publish {
                size: Size(2_000_000),
                node: 3
            }
        );
        assert!("2MB".parse::<Publish>().is_err());
        assert!("2MB@x".parse::<Publish>().is_err());
        assert_eq!(
            "0.25".parse::<PublishAt>().unwrap(),
            PublishAt::Fraction(0.25)
        );
        assert_eq!(
            "25%".parse::<PublishAt>().unwrap(),
            PublishAt::Fraction(0.25)
        );
        assert_eq!(
            "3600s".parse::<PublishAt>().unwrap(),
            PublishAt::Seconds(3600.0)
        );
        // Issue 11: `1.5` meant 1.5 s while `1` meant the end of the trace.
        assert!("1.5".parse::<PublishAt>().unwrap_err().contains("1.5s"));
        assert!("3600".parse::<PublishAt>().is_err());
        assert_eq!("1".parse::<PublishAt>().unwrap(), PublishAt::Fraction(1.0));
        assert_eq!("1s".parse::<PublishAt>().unwrap(), PublishAt::Seconds(1.0));
        assert!("-1".parse::<PublishAt>().is_err());
        assert_eq!("all".parse::<Audience>().unwrap(), Audience::All);
        assert_eq!("30%".parse::<Audience>().unwrap(), Audience::Fraction(0.3));
        assert!("1.5".parse::<Audience>().is_err());
        assert!("0".parse::<Audience>().is_err());
        assert_eq!(
            "cs".parse::<StrategyKind>().unwrap(),
            StrategyKind::ClientServer
        );
        assert!("flood".parse::<StrategyKind>().is_err());
    }
}
