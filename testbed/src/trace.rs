//! Contact traces: parsing, validation and normalisation.
//!
//! A trace says when which pairs of nodes could talk. Two input formats:
//!
//! - **CSV** `start_s,end_s,node_a,node_b`, one undirected contact per line, seconds
//!   (integer or float) from the trace start, nodes numbered `0..N-1`. A header line is
//!   optional (only as the first non-blank line). Blank lines and lines starting with
//!   `#` are ignored.
//! - **The ONE** connection events `time CONN a b up|down` (whitespace separated). An `up`
//!   opens a contact of the pair, the next `down` of the same pair closes it. A pair still
//!   up at the end of the file is closed at the last timestamp of the file.
//!
//! Malformed input is rejected with a [`TraceError`] naming the 1-based line number:
//! wrong field count, non-numeric or negative times, `end < start`, a node talking to
//! itself, a node id `>= --nodes`, a `down` without an `up`, a second `up` of an open
//! pair, or times going backwards in a ONE file.
//!
//! ## Normalisation ([`Trace::build`])
//!
//! 1. **Time window** (optional): contacts are clipped to `[from, to]`; those outside are
//!    dropped. Times stay absolute (seconds from the trace start).
//! 2. **Minimum contact length**: the iMote traces record a pair seen in a single
//!    Bluetooth scan as `start == end` (58% of infocom05's contacts). Such a sighting
//!    means the pair was in range at least for the scan, and the scans ran every ~120 s.
//!    Mule **extends** every contact shorter than `min_contact` to `start + min_contact`
//!    rather than dropping it: dropping would delete most of the meetings in the data and
//!    say more about the scanner than about people. The default, [`DEFAULT_MIN_CONTACT_S`]
//!    = 10 s, is deliberately short (a tenth of the scan interval) so the extension does
//!    not invent much capacity; every report states the value used.
//! 3. **Merging**: after extension, overlapping or touching contacts of the same pair are
//!    merged into one, so a pair never has two simultaneous links (which would double its
//!    capacity in both the simulator and the oracle).
//! 4. Contacts are sorted by `(start, a, b)` with `a < b`.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Index of a node in a trace, `0..nodes`.
pub type NodeIx = u32;

/// The default minimum contact length in seconds (see the module docs).
pub const DEFAULT_MIN_CONTACT_S: f64 = 10.0;

/// Largest node count we accept: the simulator keeps per-node state in vectors.
pub const MAX_NODES: u32 = 1_000_000;

/// One undirected contact: nodes `a < b` can exchange data during `[start, end]`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    /// Start, seconds from the trace start.
    pub start: f64,
    /// End, seconds from the trace start (`>= start`).
    pub end: f64,
    /// The lower node index.
    pub a: NodeIx,
    /// The higher node index.
    pub b: NodeIx,
}

impl Contact {
    /// Length in seconds.
    pub fn duration(&self) -> f64 {
        self.end - self.start
    }

    /// The other end of the contact, if `n` is one of its ends.
    pub fn peer_of(&self, n: NodeIx) -> Option<NodeIx> {
        if n == self.a {
            Some(self.b)
        } else if n == self.b {
            Some(self.a)
        } else {
            None
        }
    }
}

/// The two accepted input formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `start_s,end_s,node_a,node_b`.
    Csv,
    /// The ONE simulator's `time CONN a b up|down`.
    One,
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "csv" => Ok(Format::Csv),
            "one" => Ok(Format::One),
            _ => Err(format!("unknown trace format {s:?} (expected csv or one)")),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Csv => "csv",
            Format::One => "one",
        })
    }
}

/// Why a trace was rejected.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file could not be read.
    #[error("cannot read trace {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A line does not have the expected number of fields.
    #[error("line {line}: expected {expected}, found {found} field(s)")]
    FieldCount {
        /// 1-based line number.
        line: usize,
        /// What the format wants.
        expected: &'static str,
        /// How many fields were found.
        found: usize,
    },
    /// A field is not a valid number / node id / keyword.
    #[error("line {line}: bad {field} {value:?}: {why}")]
    BadField {
        /// 1-based line number.
        line: usize,
        /// Which field.
        field: &'static str,
        /// The offending text.
        value: String,
        /// What was expected.
        why: &'static str,
    },
    /// A contact ends before it starts.
    #[error("line {line}: contact ends ({end}) before it starts ({start})")]
    EndBeforeStart {
        /// 1-based line number.
        line: usize,
        /// Start time.
        start: f64,
        /// End time.
        end: f64,
    },
    /// A node is in contact with itself.
    #[error("line {line}: node {node} in contact with itself")]
    SelfContact {
        /// 1-based line number.
        line: usize,
        /// The node.
        node: NodeIx,
    },
    /// A node id is not below the declared node count.
    #[error("line {line}: node {node} out of range (trace declared {nodes} nodes: 0..{nodes})")]
    NodeOutOfRange {
        /// 1-based line number.
        line: usize,
        /// The node id.
        node: NodeIx,
        /// The declared node count.
        nodes: u32,
    },
    /// A ONE `down` event for a pair that is not up.
    #[error("line {line}: `down` for pair {a}-{b} which is not up")]
    DownWithoutUp {
        /// 1-based line number.
        line: usize,
        /// First node.
        a: NodeIx,
        /// Second node.
        b: NodeIx,
    },
    /// A ONE `up` event for a pair that is already up.
    #[error("line {line}: `up` for pair {a}-{b} which is already up (since line {since})")]
    DoubleUp {
        /// 1-based line number.
        line: usize,
        /// First node.
        a: NodeIx,
        /// Second node.
        b: NodeIx,
        /// The line of the earlier `up`.
        since: usize,
    },
    /// ONE events must be in time order.
    #[error("line {line}: time {time} is earlier than the previous event ({previous})")]
    TimeBackwards {
        /// 1-based line number.
        line: usize,
        /// This event's time.
        time: f64,
        /// The previous event's time.
        previous: f64,
    },
    /// Nothing usable in the input (or in the selected window).
    #[error("trace has no contacts{0}")]
    Empty(&'static str),
    /// The options make no sense (e.g. an empty window).
    #[error("{0}")]
    BadOption(String),
    /// Node ids are numbered so sparsely that `highest + 1` nodes would mostly be idle.
    #[error(
        "the trace uses {used} distinct node ids but the highest is {highest}, which would \
         simulate {} nodes, most of them without a contact: renumber the ids 0..{used}, or \
         pass --nodes {} to run it anyway",
        u64::from(*highest) + 1,
        u64::from(*highest) + 1
    )]
    SparseIds {
        /// Distinct ids that appear in contacts.
        used: usize,
        /// The highest id.
        highest: u32,
    },
}

/// Node counts up to this are accepted however sparse their ids (small traces
/// often skip a few ids); above it, fewer than a quarter used is refused.
pub const SPARSE_MIN_NODES: u32 = 1000;

/// A contact as read from the file, before normalisation, with its source line.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RawContact {
    /// The contact (`a < b`).
    pub contact: Contact,
    /// 1-based line number it came from (the `up` line for ONE).
    pub line: usize,
}

/// How to turn raw contacts into a [`Trace`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Contacts shorter than this are extended to this length (seconds, `>= 0`).
    pub min_contact: f64,
    /// Declared node count; ids must be below it. `None`: infer `max id + 1`.
    pub nodes: Option<u32>,
    /// Keep only `[from, to]` (seconds), clipping contacts at the edges.
    pub window: Option<(f64, f64)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            min_contact: DEFAULT_MIN_CONTACT_S,
            nodes: None,
            window: None,
        }
    }
}

/// What normalisation did, for the report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NormStats {
    /// Contacts read from the input.
    pub raw_contacts: usize,
    /// Contacts dropped because they were outside the window.
    pub outside_window: usize,
    /// Contacts that were shorter than the minimum and extended.
    pub extended: usize,
    /// Contacts that were zero-length in the input (a subset of `extended` when the
    /// minimum is positive).
    pub zero_length: usize,
    /// Contacts absorbed into an overlapping contact of the same pair.
    pub merged: usize,
}

/// A normalised contact trace (see the module docs for the rules).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Trace {
    /// Number of nodes (`0..nodes`).
    pub nodes: u32,
    /// Contacts sorted by `(start, a, b)`.
    pub contacts: Vec<Contact>,
    /// Start of the trace (window start, or 0).
    pub start: f64,
    /// End of the trace (window end, or the latest contact end).
    pub end: f64,
    /// The minimum contact length applied.
    pub min_contact: f64,
    /// What normalisation did.
    pub stats: NormStats,
}

impl Trace {
    /// Reads and normalises a trace file. `format: None` guesses from the content
    /// (a line with ` CONN ` means ONE, otherwise CSV).
    pub fn load(path: &Path, format: Option<Format>, opts: &Options) -> Result<Trace, TraceError> {
        let text = std::fs::read_to_string(path).map_err(|source| TraceError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let format = format.unwrap_or_else(|| guess_format(&text));
        Trace::parse(&text, format, opts)
    }

    /// Parses and normalises trace text (a leading UTF-8 byte-order mark, as some
    /// spreadsheet exports write, is skipped).
    pub fn parse(text: &str, format: Format, opts: &Options) -> Result<Trace, TraceError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let raw = match format {
            Format::Csv => parse_csv(text, opts.nodes)?,
            Format::One => parse_one(text, opts.nodes)?,
        };
        Trace::build(raw, opts)
    }

    /// Normalises raw contacts: window, minimum length, merging, sorting.
    pub fn build(raw: Vec<RawContact>, opts: &Options) -> Result<Trace, TraceError> {
        check_options(opts)?;
        let mut stats = NormStats {
            raw_contacts: raw.len(),
            ..NormStats::default()
        };
        let nodes = node_count(&raw, opts)?;
        let cs = clip(&raw, opts, &mut stats);
        if cs.is_empty() {
            return Err(TraceError::Empty(" in the selected window"));
        }
        let merged = merge(cs, &mut stats);
        let (start, end) = match opts.window {
            Some((from, to)) => (from, to),
            None => (0.0, merged.iter().map(|c| c.end).fold(0.0, f64::max)),
        };
        Ok(Trace {
            nodes,
            contacts: merged,
            start,
            end,
            min_contact: opts.min_contact,
            stats,
        })
    }

    /// Length of the trace in seconds.
    pub fn duration(&self) -> f64 {
        self.end - self.start
    }

    /// Writes the trace as CSV (with a header), e.g. for `gen-trace`.
    pub fn to_csv(&self) -> String {
        let mut s = String::with_capacity(self.contacts.len() * 24 + 32);
        s.push_str("start_s,end_s,node_a,node_b\n");
        for c in &self.contacts {
            use std::fmt::Write;
            let _ = writeln!(s, "{},{},{},{}", c.start, c.end, c.a, c.b);
        }
        s
    }
}

/// A trace's name for reports: its file name without a `.csv`, `.txt` or `.one` ending.
pub fn name_of(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.trim_end_matches(".csv")
        .trim_end_matches(".txt")
        .trim_end_matches(".one")
        .to_owned()
}

/// The minimum contact length and the window are usable.
fn check_options(opts: &Options) -> Result<(), TraceError> {
    if !(opts.min_contact >= 0.0 && opts.min_contact.is_finite()) {
        return Err(TraceError::BadOption(format!(
            "--min-contact must be a non-negative number of seconds, got {}",
            opts.min_contact
        )));
    }
    if let Some((from, to)) = opts.window
        && !(from.is_finite() && to.is_finite() && from >= 0.0 && to > from)
    {
        return Err(TraceError::BadOption(format!(
            "time window [{from}, {to}] is empty or invalid"
        )));
    }
    Ok(())
}

/// The declared node count, else the highest id + 1 unless the ids are too sparse.
fn node_count(raw: &[RawContact], opts: &Options) -> Result<u32, TraceError> {
    let max_id = raw
        .iter()
        .map(|r| r.contact.b)
        .max()
        .ok_or(TraceError::Empty(""))?;
    if let Some(n) = opts.nodes {
        return Ok(n);
    }
    // One stray large id (999999) would silently make a million-node run
    // (gigabytes of state and output): refuse, and say how to proceed.
    let mut ids: Vec<u32> = raw
        .iter()
        .flat_map(|r| [r.contact.a, r.contact.b])
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let inferred = max_id + 1;
    if inferred > SPARSE_MIN_NODES && (ids.len() as u64) * 4 < u64::from(inferred) {
        return Err(TraceError::SparseIds {
            used: ids.len(),
            highest: max_id,
        });
    }
    Ok(inferred)
}

/// Clips contacts to the window (dropping those outside) and extends short ones to the
/// minimum length.
fn clip(raw: &[RawContact], opts: &Options, stats: &mut NormStats) -> Vec<Contact> {
    let mut cs: Vec<Contact> = Vec::with_capacity(raw.len());
    for r in raw {
        let mut c = r.contact;
        if let Some((from, to)) = opts.window {
            if c.end < from || c.start > to {
                stats.outside_window += 1;
                continue;
            }
            c.start = c.start.max(from);
            c.end = c.end.min(to);
        }
        if c.end == c.start {
            stats.zero_length += 1;
        }
        if c.duration() < opts.min_contact {
            stats.extended += 1;
            c.end = c.start + opts.min_contact;
        }
        cs.push(c);
    }
    cs
}

/// Merges overlapping contacts of the same pair; returns them sorted by start, then pair.
fn merge(mut cs: Vec<Contact>, stats: &mut NormStats) -> Vec<Contact> {
    // Sort by pair then start, so overlapping contacts of a pair are neighbours.
    cs.sort_by(|x, y| {
        (x.a, x.b)
            .cmp(&(y.a, y.b))
            .then(x.start.total_cmp(&y.start))
    });
    let mut merged: Vec<Contact> = Vec::with_capacity(cs.len());
    for c in cs {
        match merged.last_mut() {
            Some(last) if last.a == c.a && last.b == c.b && c.start <= last.end => {
                last.end = last.end.max(c.end);
                stats.merged += 1;
            }
            _ => merged.push(c),
        }
    }
    merged.sort_by(|x, y| {
        x.start
            .total_cmp(&y.start)
            .then((x.a, x.b).cmp(&(y.a, y.b)))
    });
    merged
}

/// Guesses the format of trace text: ONE if any of the first lines has a `CONN` field.
pub fn guess_format(text: &str) -> Format {
    let one = text
        .lines()
        .take(20)
        .any(|l| l.split_whitespace().nth(1) == Some("CONN"));
    if one { Format::One } else { Format::Csv }
}

/// Parses CSV `start_s,end_s,node_a,node_b` into raw contacts (not normalised).
pub fn parse_csv(text: &str, nodes: Option<u32>) -> Result<Vec<RawContact>, TraceError> {
    let mut out = Vec::new();
    let mut seen_data = false;
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = l.split(',').map(str::trim).collect();
        // A header: only as the first non-blank line, and only if it is not numeric.
        if !seen_data && fields.first().is_some_and(|f| f.parse::<f64>().is_err()) {
            let header = fields.iter().all(|f| {
                !f.is_empty()
                    && f.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ' ')
                    && f.chars().any(|c| c.is_ascii_alphabetic())
            });
            seen_data = true;
            if header && fields.len() == 4 {
                continue;
            }
        }
        seen_data = true;
        if fields.len() != 4 {
            return Err(TraceError::FieldCount {
                line: line_no,
                expected: "4 comma-separated fields start_s,end_s,node_a,node_b",
                found: fields.len(),
            });
        }
        let start = time_field(fields[0], line_no, "start_s")?;
        let end = time_field(fields[1], line_no, "end_s")?;
        let a = node_field(fields[2], line_no, "node_a", nodes)?;
        let b = node_field(fields[3], line_no, "node_b", nodes)?;
        if end < start {
            return Err(TraceError::EndBeforeStart {
                line: line_no,
                start,
                end,
            });
        }
        if a == b {
            return Err(TraceError::SelfContact {
                line: line_no,
                node: a,
            });
        }
        out.push(RawContact {
            contact: Contact {
                start,
                end,
                a: a.min(b),
                b: a.max(b),
            },
            line: line_no,
        });
    }
    if out.is_empty() {
        return Err(TraceError::Empty(""));
    }
    Ok(out)
}

/// Parses The ONE's `time CONN a b up|down` events into raw contacts (not normalised).
pub fn parse_one(text: &str, nodes: Option<u32>) -> Result<Vec<RawContact>, TraceError> {
    let mut out = Vec::new();
    // Open pairs: (a, b) -> (start time, line of the `up`).
    let mut open: HashMap<(NodeIx, NodeIx), (f64, usize)> = HashMap::new();
    let mut last_t = 0.0f64;
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let (t, key, state) = one_event(l, line_no, nodes, last_t)?;
        last_t = t;
        match state {
            "up" => {
                if let Some(&(_, since)) = open.get(&key) {
                    return Err(TraceError::DoubleUp {
                        line: line_no,
                        a: key.0,
                        b: key.1,
                        since,
                    });
                }
                open.insert(key, (t, line_no));
            }
            "down" => {
                let (start, up_line) = open.remove(&key).ok_or(TraceError::DownWithoutUp {
                    line: line_no,
                    a: key.0,
                    b: key.1,
                })?;
                out.push(RawContact {
                    contact: Contact {
                        start,
                        end: t,
                        a: key.0,
                        b: key.1,
                    },
                    line: up_line,
                });
            }
            other => {
                return Err(TraceError::BadField {
                    line: line_no,
                    field: "state",
                    value: other.to_owned(),
                    why: "expected `up` or `down`",
                });
            }
        }
    }
    // Pairs still up at the end: close them at the last event time (deterministic order).
    let mut dangling: Vec<_> = open.into_iter().collect();
    dangling.sort_by_key(|&(_, (_, line))| line);
    for ((a, b), (start, line)) in dangling {
        out.push(RawContact {
            contact: Contact {
                start,
                end: last_t,
                a,
                b,
            },
            line,
        });
    }
    if out.is_empty() {
        return Err(TraceError::Empty(""));
    }
    Ok(out)
}

/// Parses one `time CONN a b up|down` line (not before `last_t`): its time, its pair
/// `(min, max)` and its state word.
fn one_event(
    l: &str,
    line_no: usize,
    nodes: Option<u32>,
    last_t: f64,
) -> Result<(f64, (NodeIx, NodeIx), &str), TraceError> {
    let f: Vec<&str> = l.split_whitespace().collect();
    if f.len() != 5 {
        return Err(TraceError::FieldCount {
            line: line_no,
            expected: "5 fields `time CONN a b up|down`",
            found: f.len(),
        });
    }
    let t = time_field(f[0], line_no, "time")?;
    if f[1] != "CONN" {
        return Err(TraceError::BadField {
            line: line_no,
            field: "event type",
            value: f[1].to_owned(),
            why: "only CONN events are supported",
        });
    }
    if t < last_t {
        return Err(TraceError::TimeBackwards {
            line: line_no,
            time: t,
            previous: last_t,
        });
    }
    let a = node_field(f[2], line_no, "node a", nodes)?;
    let b = node_field(f[3], line_no, "node b", nodes)?;
    if a == b {
        return Err(TraceError::SelfContact {
            line: line_no,
            node: a,
        });
    }
    Ok((t, (a.min(b), a.max(b)), f[4]))
}

fn time_field(s: &str, line: usize, field: &'static str) -> Result<f64, TraceError> {
    match s.parse::<f64>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(t),
        _ => Err(TraceError::BadField {
            line,
            field,
            value: s.to_owned(),
            why: "expected a non-negative number of seconds",
        }),
    }
}

fn node_field(
    s: &str,
    line: usize,
    field: &'static str,
    nodes: Option<u32>,
) -> Result<NodeIx, TraceError> {
    let n: NodeIx = s.parse().map_err(|_| TraceError::BadField {
        line,
        field,
        value: s.to_owned(),
        why: "expected a node index 0..N-1",
    })?;
    let limit = nodes.unwrap_or(MAX_NODES);
    if n >= limit {
        return Err(TraceError::NodeOutOfRange {
            line,
            node: n,
            nodes: limit,
        });
    }
    Ok(n)
}

/// Where the shared real traces live, if that folder exists: `$MULE_TRACES` when set (e.g. a
/// git worktree that is not next to `shared/`), otherwise `../../shared/traces` from this crate
/// (`../shared/traces` from the workspace root).
pub fn shared_traces_dir() -> Option<std::path::PathBuf> {
    let p = match std::env::var_os("MULE_TRACES") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/traces"),
    };
    p.is_dir().then_some(p)
}

/// [`shared_traces_dir`] for a test or benchmark that needs the real traces: when they are
/// missing it prints `SKIPPED: <what>: ...` and returns `None`, except under `CI=true`, where
/// the traces must be there and this panics.
pub fn shared_traces_or_skip(what: &str) -> Option<std::path::PathBuf> {
    if let Some(dir) = shared_traces_dir() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{what}: ../shared/traces (or $MULE_TRACES) not found, and CI=true forbids skipping"
        );
    }
    eprintln!("SKIPPED: {what}: ../shared/traces not found (set MULE_TRACES to its path)");
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(min: f64) -> Options {
        Options {
            min_contact: min,
            ..Options::default()
        }
    }

    /// Issue 11: a UTF-8 byte-order mark (spreadsheet export) made the header unreadable.
    #[test]
    fn a_byte_order_mark_is_skipped() {
        let t = Trace::parse(
            "\u{feff}start_s,end_s,node_a,node_b\n0,10,0,1\n",
            Format::Csv,
            &opts(0.0),
        )
        .expect("BOM accepted");
        assert_eq!(t.contacts.len(), 1);
    }

    /// Issue 11: one stray id 999999 silently became a 1,000,000-node run.
    #[test]
    fn sparse_ids_are_refused_unless_the_node_count_is_given() {
        let text = "0,10,0,1\n20,30,1,2\n40,50,2,999999\n";
        let err = Trace::parse(text, Format::Csv, &opts(0.0)).unwrap_err();
        assert!(
            matches!(
                err,
                TraceError::SparseIds {
                    used: 4,
                    highest: 999_999
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("--nodes 1000000"), "{err}");
        let given = Options {
            nodes: Some(1_000_000),
            ..opts(0.0)
        };
        assert_eq!(
            Trace::parse(text, Format::Csv, &given).unwrap().nodes,
            1_000_000
        );
        // Small traces may skip ids freely.
        let small = Trace::parse("0,10,0,900\n", Format::Csv, &opts(0.0)).unwrap();
        assert_eq!(small.nodes, 901);
    }

    #[test]
    fn csv_with_and_without_header_and_floats() {
        let with = "start_s,end_s,node_a,node_b\n0,10,0,1\n5.5,7.25,2,1\n";
        let without = "0,10,0,1\n5.5,7.25,2,1\n";
        for text in [with, without] {
            let t = Trace::parse(text, Format::Csv, &opts(0.0)).unwrap();
            assert_eq!(t.nodes, 3);
            assert_eq!(t.contacts.len(), 2);
            assert_eq!(t.contacts[1].start, 5.5);
            assert_eq!((t.contacts[1].a, t.contacts[1].b), (1, 2));
            assert_eq!(t.end, 10.0);
        }
    }

    #[test]
    fn csv_errors_carry_line_numbers() {
        let cases: &[(&str, usize, &str)] = &[
            ("0,1,0,1\n0,1,0\n", 2, "expected 4"),
            ("0,1,0,1\n\n0,x,0,1\n", 3, "bad end_s"),
            ("0,1,0,1\n5,4,0,1\n", 2, "before it starts"),
            ("0,1,0,1\n0,1,3,3\n", 2, "itself"),
            ("0,1,0,1\n0,1,0,-1\n", 2, "bad node_b"),
            ("0,1,0,1\n-1,1,0,1\n", 2, "bad start_s"),
            ("0,1,0,1\nstart_s,end_s,node_a,node_b\n", 2, "bad start_s"),
            ("0,1,0,1\n0,1,0,nan\n", 2, "bad node_b"),
        ];
        for (text, line, what) in cases {
            let err = Trace::parse(text, Format::Csv, &opts(0.0)).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with(&format!("line {line}:")), "{text:?}: {msg}");
            assert!(msg.contains(what), "{text:?}: {msg}");
        }
        let err = Trace::parse("", Format::Csv, &opts(0.0)).unwrap_err();
        assert!(matches!(err, TraceError::Empty(_)));
    }

    #[test]
    fn declared_node_count_is_enforced() {
        let o = Options {
            nodes: Some(3),
            ..opts(0.0)
        };
        let err = Trace::parse("0,1,0,1\n0,1,0,3\n", Format::Csv, &o).unwrap_err();
        assert!(matches!(
            err,
            TraceError::NodeOutOfRange {
                line: 2,
                node: 3,
                nodes: 3
            }
        ));
        // A declared count larger than the ids seen is kept (silent nodes exist).
        let o = Options {
            nodes: Some(10),
            ..opts(0.0)
        };
        assert_eq!(
            Trace::parse("0,1,0,1\n", Format::Csv, &o).unwrap().nodes,
            10
        );
    }

    #[test]
    fn one_format_pairs_up_and_down() {
        let text =
            "0 CONN 0 1 up\n5 CONN 2 1 up\n5 CONN 1 0 down\n9 CONN 1 2 down\n9 CONN 0 2 up\n";
        let t = Trace::parse(text, Format::One, &opts(0.0)).unwrap();
        assert_eq!(t.nodes, 3);
        let got: Vec<_> = t
            .contacts
            .iter()
            .map(|c| (c.start, c.end, c.a, c.b))
            .collect();
        // The dangling 0-2 is closed at the last event time (9): zero length.
        assert_eq!(
            got,
            vec![(0.0, 5.0, 0, 1), (5.0, 9.0, 1, 2), (9.0, 9.0, 0, 2)]
        );
        assert_eq!(guess_format(text), Format::One);
        assert_eq!(guess_format("0,1,0,1\n"), Format::Csv);
    }

    #[test]
    fn one_format_errors_carry_line_numbers() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "0 CONN 0 1 up\n1 CONN 0 1 up\n",
                2,
                "already up (since line 1)",
            ),
            ("0 CONN 0 1 down\n", 1, "not up"),
            ("0 CONN 0 1 up\n1 CONN 0 1 sideways\n", 2, "bad state"),
            ("5 CONN 0 1 up\n1 CONN 0 1 down\n", 2, "earlier than"),
            ("0 C 0 1 up\n", 1, "only CONN"),
            ("0 CONN 0 1\n", 1, "expected 5"),
        ];
        for (text, line, what) in cases {
            let err = Trace::parse(text, Format::One, &opts(0.0)).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with(&format!("line {line}:")), "{text:?}: {msg}");
            assert!(msg.contains(what), "{text:?}: {msg}");
        }
    }

    #[test]
    fn min_contact_extends_and_merges_overlaps() {
        // Two zero-length sightings of 0-1 five seconds apart become one 15 s contact.
        let text = "0,0,0,1\n5,5,0,1\n100,100,1,2\n";
        let t = Trace::parse(text, Format::Csv, &opts(10.0)).unwrap();
        let got: Vec<_> = t
            .contacts
            .iter()
            .map(|c| (c.start, c.end, c.a, c.b))
            .collect();
        assert_eq!(got, vec![(0.0, 15.0, 0, 1), (100.0, 110.0, 1, 2)]);
        assert_eq!(t.stats.extended, 3);
        assert_eq!(t.stats.zero_length, 3);
        assert_eq!(t.stats.merged, 1);
        // Without a minimum, nothing is extended; touching intervals still merge.
        let t = Trace::parse(text, Format::Csv, &opts(0.0)).unwrap();
        assert_eq!(t.contacts.len(), 3);
    }

    #[test]
    fn window_clips_and_drops() {
        let text = "0,50,0,1\n60,70,1,2\n200,300,0,2\n";
        let o = Options {
            window: Some((40.0, 100.0)),
            ..opts(0.0)
        };
        let t = Trace::parse(text, Format::Csv, &o).unwrap();
        let got: Vec<_> = t.contacts.iter().map(|c| (c.start, c.end)).collect();
        assert_eq!(got, vec![(40.0, 50.0), (60.0, 70.0)]);
        assert_eq!(t.stats.outside_window, 1);
        assert_eq!((t.start, t.end), (40.0, 100.0));
        let o = Options {
            window: Some((500.0, 600.0)),
            ..opts(0.0)
        };
        assert!(Trace::parse(text, Format::Csv, &o).is_err());
    }

    #[test]
    fn real_traces_parse_in_both_formats() {
        let Some(dir) = shared_traces_or_skip("real_traces_parse_in_both_formats") else {
            return;
        };
        for (name, nodes) in [("intel", 9), ("infocom05", 41), ("cambridge_students", 36)] {
            let o = opts(0.0);
            let csv = Trace::load(&dir.join(format!("{name}.csv")), None, &o).unwrap();
            let one = Trace::load(&dir.join(format!("{name}.one.txt")), None, &o).unwrap();
            assert_eq!(csv.nodes, nodes, "{name}");
            assert_eq!(one.nodes, nodes, "{name}");
            assert_eq!(csv.contacts.len(), one.contacts.len(), "{name}");
            for (x, y) in csv.contacts.iter().zip(&one.contacts) {
                assert_eq!((x.a, x.b), (y.a, y.b), "{name}");
                assert!((x.start - y.start).abs() < 1e-6 && (x.end - y.end).abs() < 1e-6);
            }
        }
    }
}
