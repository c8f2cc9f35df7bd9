//! Install reports: what one node did with one release, signed by the node's own key.
//!
//! After every install attempt a node writes a [`Report`] and signs it ([`Report::sign`]); the
//! encoded form ([`SignedReport::encode`]) is at most [`MAX_REPORT_BYTES`] and is the content
//! of an ordinary bundle on the reports channel, so it rides back through the fleet like any
//! other bundle. A collector decodes it with [`SignedReport::decode`], which checks the size,
//! the canonical encoding and the node's signature.
//!
//! Wire form (canonical CBOR, see `bundle/DESIGN.md`):
//!
//! ```text
//! [ 1,                      ; report format version
//!   body: bstr,             ; the canonical CBOR of the body below
//!   signature: bstr .size 64 ]  ; ed25519 by body.node over "mule-report-v1\0" || body
//! body = [ node: bstr .size 32, label: tstr, publisher: bstr .size 32, name: tstr,
//!          release: uint, bundle: bstr .size 32, at: uint, state: uint, detail: tstr ]
//! ```

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use mule_proto::cbor::{self, CborError, Reader};

use crate::BundleId;

/// Largest encoded report, signature included.
pub const MAX_REPORT_BYTES: usize = 1024;
/// Longest node label kept in a report (bytes; longer labels are cut at a char boundary).
pub const MAX_LABEL: usize = 64;
/// Longest lineage name in a report.
pub const MAX_NAME: usize = 256;
const VERSION: u64 = 1;
const DOMAIN: &[u8] = b"mule-report-v1\0";

/// The outcome of one install attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum State {
    /// Exported, the on-complete command and the health check (if any) succeeded.
    Installed,
    /// The export or the on-complete command failed (detail: status and last stderr lines).
    Failed,
    /// The health check failed and the previous release was put back.
    RolledBack,
    /// A release not newer than the installed one was refused.
    RollbackRefused,
    /// Two different bundles claim this lineage and release.
    Equivocation,
    /// Complete but deferred (detail: why).
    Waiting,
}

impl State {
    /// Every state, in wire order.
    pub const ALL: [State; 6] = [
        State::Installed,
        State::Failed,
        State::RolledBack,
        State::RollbackRefused,
        State::Equivocation,
        State::Waiting,
    ];

    /// The name used in `mule rollout status` and its JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Installed => "installed",
            State::Failed => "failed",
            State::RolledBack => "rolled_back",
            State::RollbackRefused => "rollback_refused",
            State::Equivocation => "equivocation",
            State::Waiting => "waiting",
        }
    }

    fn code(self) -> u64 {
        State::ALL.iter().position(|s| *s == self).unwrap_or(0) as u64
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One node's report on one release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The reporting node (its ed25519 public key, which is also its node id).
    pub node: [u8; 32],
    /// The operator-set `node.label`.
    pub label: String,
    /// The reported lineage's publisher key.
    pub publisher: [u8; 32],
    /// The reported lineage's name.
    pub name: String,
    /// The release attempted.
    pub release: u64,
    /// The bundle attempted.
    pub bundle: BundleId,
    /// When it happened (unix seconds, the node's clock).
    pub at: u64,
    /// The outcome.
    pub state: State,
    /// Exit status and the end of stderr for `failed`, the reason for `waiting`, the check
    /// and rollback result for `rolled_back`; may be empty. Cut to fit the size bound.
    pub detail: String,
}

/// Why bytes are not a valid report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Over [`MAX_REPORT_BYTES`].
    #[error("report is {0} bytes; at most {MAX_REPORT_BYTES} are accepted")]
    TooLarge(usize),
    /// Not canonical CBOR of the report shape.
    #[error("malformed report: {0}")]
    Cbor(#[from] CborError),
    /// Unknown format version or state code, or text that is not UTF-8 in the wire form.
    #[error("malformed report: {0}")]
    Format(String),
    /// The signature does not verify with the reporting node's key.
    #[error("report signature does not verify for node {0}")]
    BadSignature(String),
}

/// Cuts `s` to at most `max` bytes at a char boundary, keeping the end (the last stderr
/// lines matter most) when `keep_end`.
fn cut(s: &str, max: usize, keep_end: bool) -> &str {
    if s.len() <= max {
        return s;
    }
    if keep_end {
        let mut start = s.len() - max;
        while !s.is_char_boundary(start) {
            start += 1;
        }
        &s[start..]
    } else {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        &s[..end]
    }
}

impl Report {
    fn body(&self, detail: &str) -> Vec<u8> {
        let mut b = Vec::with_capacity(256);
        cbor::array(&mut b, 9);
        cbor::bytes(&mut b, &self.node);
        cbor::text(&mut b, cut(&self.label, MAX_LABEL, false));
        cbor::bytes(&mut b, &self.publisher);
        cbor::text(&mut b, cut(&self.name, MAX_NAME, false));
        cbor::uint(&mut b, self.release);
        cbor::bytes(&mut b, self.bundle.as_bytes());
        cbor::uint(&mut b, self.at);
        cbor::uint(&mut b, self.state.code());
        cbor::text(&mut b, detail);
        b
    }

    /// Signs with the node's key (whose public half must be `self.node`). The label, name
    /// and detail are cut so the encoding fits in [`MAX_REPORT_BYTES`]; the detail keeps its
    /// end (the last stderr lines).
    pub fn sign(&self, key: &SigningKey) -> SignedReport {
        // Envelope: array head (1) + version (1) + bstr head (≤ 3) + body + bstr head (2) + 64.
        const ENVELOPE: usize = 1 + 1 + 3 + 2 + 64;
        let fixed = self.body("").len();
        // The detail's own text head grows by up to 2 bytes with its length.
        let room = MAX_REPORT_BYTES.saturating_sub(ENVELOPE + fixed + 2);
        let body = self.body(cut(&self.detail, room, true));
        let sig = key.sign(&[DOMAIN, &body].concat());
        let mut out = Vec::with_capacity(body.len() + ENVELOPE);
        cbor::array(&mut out, 3);
        cbor::uint(&mut out, VERSION);
        cbor::bytes(&mut out, &body);
        cbor::bytes(&mut out, &sig.to_bytes());
        debug_assert!(out.len() <= MAX_REPORT_BYTES, "{} bytes", out.len());
        SignedReport { bytes: out }
    }
}

/// An encoded, signed report; only [`Report::sign`] and a verifying
/// [`SignedReport::decode`] make one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedReport {
    bytes: Vec<u8>,
}

impl SignedReport {
    /// The encoded bytes (the content of a report bundle).
    pub fn encode(&self) -> &[u8] {
        &self.bytes
    }

    /// Checks size, canonical form and the node's signature, and returns the report.
    pub fn decode(buf: &[u8]) -> Result<Report, ReportError> {
        if buf.len() > MAX_REPORT_BYTES {
            return Err(ReportError::TooLarge(buf.len()));
        }
        let mut r = Reader::new(buf);
        r.array_exact("report", 3)?;
        let v = r.uint("report version", u64::MAX)?;
        if v != VERSION {
            return Err(ReportError::Format(format!(
                "report version {v} (this node reads {VERSION})"
            )));
        }
        let body = r.bytes("report body", MAX_REPORT_BYTES)?;
        let sig: [u8; 64] = r.fixed("report signature")?;
        r.finish()?;

        let mut b = Reader::new(body);
        b.array_exact("report body", 9)?;
        let node: [u8; 32] = b.fixed("node")?;
        let label = b.text("label", MAX_LABEL)?.to_owned();
        let publisher: [u8; 32] = b.fixed("publisher")?;
        let name = b.text("name", MAX_NAME)?.to_owned();
        let release = b.uint("release", u64::MAX)?;
        let bundle = BundleId(b.fixed("bundle")?);
        let at = b.uint("at", u64::MAX)?;
        let code = b.uint("state", State::ALL.len() as u64 - 1)?;
        let detail = b.text("detail", MAX_REPORT_BYTES)?.to_owned();
        b.finish()?;

        let bad = || ReportError::BadSignature(hex::encode(node));
        let vk = VerifyingKey::from_bytes(&node).map_err(|_| bad())?;
        vk.verify(&[DOMAIN, body].concat(), &Signature::from_bytes(&sig))
            .map_err(|_| bad())?;
        Ok(Report {
            node,
            label,
            publisher,
            name,
            release,
            bundle,
            at,
            state: State::ALL[code as usize],
            detail,
        })
    }
}

/// The state and detail a report gives one install attempt's result, or `None` when the
/// attempt is not a reportable outcome (a superseded release is simply dropped, a store error
/// is the node's own trouble and is retried).
pub fn outcome(
    result: &Result<std::path::PathBuf, crate::complete::CompleteError>,
) -> Option<(State, String)> {
    use crate::complete::{CompleteError as E, HookError};
    use crate::store::Block;
    Some(match result {
        Ok(_) => (State::Installed, String::new()),
        Err(E::Blocked(Block::Rollback { .. })) => {
            (State::RollbackRefused, result.as_ref().err()?.to_string())
        }
        Err(E::Blocked(Block::Equivocal { .. })) => {
            (State::Equivocation, result.as_ref().err()?.to_string())
        }
        Err(E::Blocked(_)) | Err(E::Store(_)) | Err(E::DependenciesPending { .. }) => return None,
        Err(E::RolledBack { .. }) => (State::RolledBack, result.as_ref().err()?.to_string()),
        Err(E::Hook(HookError::Failed { status, stderr })) => {
            (State::Failed, format!("exit {status}: {stderr}"))
        }
        Err(e) => (State::Failed, e.to_string()),
    })
}

/// The name of the report bundle a node publishes about lineage `(publisher, name)`: one
/// lineage per reported lineage, so the node's newer report supersedes its older ones.
pub fn bundle_name(publisher: &[u8; 32], name: &str) -> String {
    let h = blake3::hash(&[&publisher[..], name.as_bytes()].concat());
    format!("report/{}", &h.to_hex()[..32])
}

/// One node's row in `mule rollout status`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NodeRow {
    /// The node id (hex).
    pub node_id: String,
    /// Its `node.label`.
    pub label: String,
    /// The release its latest report is about.
    pub release: u64,
    /// The state, as [`State::as_str`].
    pub state: String,
    /// When it happened (unix seconds, the node's clock).
    pub at: u64,
    /// When the collector received the report (unix seconds, the collector's clock).
    pub learned_at: u64,
}

/// The answer of `mule rollout status NAME --json`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RolloutStatus {
    /// The lineage name asked about.
    pub name: String,
    /// One row per reporting node, by node id.
    pub nodes: Vec<NodeRow>,
    /// Nodes per state.
    pub counts: std::collections::BTreeMap<String, u64>,
}

/// A collector's view of lineage `name` from `(report, learned_at)` pairs: for each node its
/// newest report (highest release, then latest `at`), and the nodes per state.
pub fn rollout(name: &str, reports: &[(Report, u64)]) -> RolloutStatus {
    let mut latest: std::collections::BTreeMap<[u8; 32], &(Report, u64)> = Default::default();
    for entry in reports.iter().filter(|(r, _)| r.name == name) {
        let r = &entry.0;
        let newer = latest
            .get(&r.node)
            .is_none_or(|(o, _)| (r.release, r.at) > (o.release, o.at));
        if newer {
            latest.insert(r.node, entry);
        }
    }
    let mut counts = std::collections::BTreeMap::new();
    let nodes = latest
        .values()
        .map(|(r, learned_at)| {
            *counts.entry(r.state.as_str().to_owned()).or_insert(0) += 1;
            NodeRow {
                node_id: hex::encode(r.node),
                label: r.label.clone(),
                release: r.release,
                state: r.state.as_str().to_owned(),
                at: r.at,
                learned_at: *learned_at,
            }
        })
        .collect();
    RolloutStatus {
        name: name.to_owned(),
        nodes,
        counts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    fn sample(detail: &str) -> Report {
        Report {
            node: key(7).verifying_key().to_bytes(),
            label: "gw-north-3".into(),
            publisher: [1; 32],
            name: "fw".into(),
            release: 42,
            bundle: BundleId([9; 32]),
            at: 1_700_000_000,
            state: State::Failed,
            detail: detail.into(),
        }
    }

    #[test]
    fn round_trip_every_state() {
        for s in State::ALL {
            let r = Report {
                state: s,
                ..sample("exit status 3: disk full")
            };
            let enc = r.sign(&key(7));
            assert_eq!(SignedReport::decode(enc.encode()).unwrap(), r);
        }
    }

    #[test]
    fn long_stderr_is_cut_to_fit_keeping_its_end() {
        let mut detail = "x".repeat(5000);
        detail.push_str("LAST LINE é");
        let r = sample(&detail);
        let enc = r.sign(&key(7));
        assert!(
            enc.encode().len() <= MAX_REPORT_BYTES,
            "{}",
            enc.encode().len()
        );
        let back = SignedReport::decode(enc.encode()).unwrap();
        assert!(back.detail.ends_with("LAST LINE é"));
        assert!(back.detail.len() < detail.len());
        // Long labels and names are cut too; the bound holds.
        let r = Report {
            label: "l".repeat(1000),
            name: "n".repeat(1000),
            ..sample(&detail)
        };
        let enc = r.sign(&key(7));
        assert!(enc.encode().len() <= MAX_REPORT_BYTES);
        assert_eq!(
            SignedReport::decode(enc.encode()).unwrap().label.len(),
            MAX_LABEL
        );
    }

    #[test]
    fn oversized_input_is_refused() {
        let big = vec![0u8; MAX_REPORT_BYTES + 1];
        assert!(matches!(
            SignedReport::decode(&big),
            Err(ReportError::TooLarge(_))
        ));
    }

    #[test]
    fn signature_is_checked_and_tampering_refused() {
        let r = sample("exit 1");
        // Signed by a key that is not the claimed node's.
        let forged = r.sign(&key(8));
        assert!(matches!(
            SignedReport::decode(forged.encode()),
            Err(ReportError::BadSignature(_))
        ));
        // Any flipped byte is refused (malformed or bad signature), never accepted.
        let enc = r.sign(&key(7)).encode().to_vec();
        for i in 0..enc.len() {
            let mut t = enc.clone();
            t[i] ^= 0x01;
            assert!(
                SignedReport::decode(&t).is_err(),
                "byte {i} flipped was accepted"
            );
        }
        // Trailing bytes are refused.
        let mut t = enc.clone();
        t.push(0);
        assert!(SignedReport::decode(&t).is_err());
    }

    #[test]
    fn outcomes_map_to_states() {
        use crate::complete::{CompleteError as E, HookError};
        use crate::store::Block;
        assert_eq!(outcome(&Ok("/x".into())).unwrap().0, State::Installed);
        let failed = Err(E::Hook(HookError::Failed {
            status: "exit status: 3".into(),
            stderr: "no space left".into(),
        }));
        let (s, d) = outcome(&failed).unwrap();
        assert_eq!(s, State::Failed);
        assert!(
            d.contains("exit status: 3") && d.ends_with("no space left"),
            "{d}"
        );
        let refused = Err(E::Blocked(Block::Rollback {
            release: 1,
            installed: 2,
        }));
        assert_eq!(outcome(&refused).unwrap().0, State::RollbackRefused);
        let eq = Err(E::Blocked(Block::Equivocal { release: 2 }));
        assert_eq!(outcome(&eq).unwrap().0, State::Equivocation);
        let rb = Err(E::RolledBack {
            check: HookError::Timeout(std::time::Duration::from_secs(1)),
            rollback: "rolled back to release 1".into(),
        });
        assert_eq!(outcome(&rb).unwrap().0, State::RolledBack);
        let pending = Err(E::DependenciesPending {
            id: BundleId([0; 32]),
            missing: vec![],
        });
        assert!(outcome(&pending).is_none());
    }

    #[test]
    fn rollout_keeps_each_nodes_newest_report_and_counts_states() {
        let at = |node: u8, release, at, state| Report {
            node: [node; 32],
            release,
            at,
            state,
            ..sample("")
        };
        let reports = vec![
            (at(1, 1, 100, State::Installed), 150),
            (at(1, 2, 200, State::Failed), 250),
            (at(2, 2, 210, State::Installed), 260),
            (at(2, 1, 300, State::RollbackRefused), 320),
            (at(3, 2, 220, State::Waiting), 230),
            (
                Report {
                    name: "other".into(),
                    ..at(4, 9, 9, State::Installed)
                },
                10,
            ),
        ];
        let st = rollout("fw", &reports);
        let rows: Vec<_> = st
            .nodes
            .iter()
            .map(|n| (n.release, n.state.as_str(), n.learned_at))
            .collect();
        assert_eq!(
            rows,
            vec![
                (2, "failed", 250),
                (2, "installed", 260),
                (2, "waiting", 230)
            ]
        );
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["name"], "fw");
        assert_eq!(v["counts"]["installed"], 1);
        assert_eq!(v["counts"]["failed"], 1);
        let keys: Vec<_> = v["nodes"][0].as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            ["at", "label", "learned_at", "node_id", "release", "state"]
        );
    }

    #[test]
    fn bundle_name_depends_on_lineage() {
        let a = bundle_name(&[1; 32], "fw");
        assert_eq!(a, bundle_name(&[1; 32], "fw"));
        assert_ne!(a, bundle_name(&[2; 32], "fw"));
        assert_ne!(a, bundle_name(&[1; 32], "fw2"));
        assert!(a.len() < 64);
    }
}
