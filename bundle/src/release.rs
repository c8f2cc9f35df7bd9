//! Release policy: whether this node may install a complete release now, as a pure function.
//!
//! # What decides
//! - **Stages** (from the signed manifest): a node belongs to a cohort, a stable number in
//!   `0..10000` from the hash of its node id and the release lineage ([`cohort`]), so it stays
//!   in the same cohort for every release of that lineage. It may install once
//!   `now − created ≥ delay` of the first stage whose share covers its cohort. A node above
//!   every share never installs that release. No stages: everyone installs at once.
//! - **Operator deferrals** (from the node's configuration): `install.hold` pauses every
//!   install; `install.window` allows installs only inside a local-time window. The caller
//!   evaluates the window against its local clock ([`Gate`]), so this module needs no clock
//!   and no time zone.
//!
//! # Non-goals
//! Rollback protection, supersession and equivocation: those are facts of the store (what is
//! installed, what else is known), see [`crate::store::Store::release_block`].
//!
//! The bundle still spreads whatever this says: the policy gates only the install.

use crate::manifest::{ALL_BP, Lineage, Manifest};

/// The cohort of `node` for a lineage: `0..10000` (basis points), stable across releases.
pub fn cohort(node: &[u8; 32], lineage: &Lineage) -> u32 {
    let mut h = blake3::Hasher::new();
    h.update(b"mule install cohort v1\0");
    h.update(node);
    h.update(&lineage.key());
    let bytes = h.finalize();
    let x = u64::from_le_bytes(bytes.as_bytes()[..8].try_into().expect("8 bytes"));
    (x % u64::from(ALL_BP)) as u32
}

/// The node-side deferrals, evaluated by the caller at `now`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Gate {
    /// `install.hold`: the operator paused installs.
    pub hold: bool,
    /// `Some(window)` when an install window is configured and `now` is outside it.
    pub outside_window: Option<String>,
}

/// Why a complete release is not installed yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wait {
    /// The node's stage has not opened; it opens at `opens_at` (unix seconds).
    Stage {
        /// This node's cohort, in basis points.
        cohort_bp: u32,
        /// When its stage opens.
        opens_at: u64,
    },
    /// The node's cohort is above every stage's share: this release is not for it.
    NotInRollout {
        /// This node's cohort, in basis points.
        cohort_bp: u32,
        /// The widest share of the rollout, in basis points.
        widest_bp: u32,
    },
    /// `install.hold` is set.
    Hold,
    /// Outside `install.window`.
    Window(String),
}

impl Wait {
    /// When waiting ends by itself (unix seconds), if it is a known time.
    pub fn until(&self) -> Option<u64> {
        match self {
            Wait::Stage { opens_at, .. } => Some(*opens_at),
            _ => None,
        }
    }
}

impl std::fmt::Display for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = |bp: u32| f64::from(bp) / 100.0;
        match self {
            Wait::Stage {
                cohort_bp,
                opens_at,
            } => write!(
                f,
                "staged rollout: cohort {:.2}% opens at unix {opens_at}",
                pct(*cohort_bp)
            ),
            Wait::NotInRollout {
                cohort_bp,
                widest_bp,
            } => write!(
                f,
                "staged rollout: cohort {:.2}% is outside the rollout's {:.2}%",
                pct(*cohort_bp),
                pct(*widest_bp)
            ),
            Wait::Hold => f.write_str("install.hold is set"),
            Wait::Window(w) => write!(f, "outside install.window {w}"),
        }
    }
}

/// When the stage covering `cohort_bp` opens (unix seconds), or `None` when no stage covers
/// it. No stages, or a stage without delay: at once (0), whatever this node's clock says
/// about the publisher's.
pub fn stage_opens_at(m: &Manifest, cohort_bp: u32) -> Option<u64> {
    if m.stages.is_empty() {
        return Some(0);
    }
    m.stages
        .iter()
        .find(|s| cohort_bp < s.share_bp)
        .map(|s| match s.delay_secs {
            0 => 0,
            d => m.created.saturating_add(d),
        })
}

/// Whether `node` may install the complete release `m` at `now` (unix seconds), given the
/// operator's `gate`. Stages come first (they say when), then hold, then the window.
pub fn decide(m: &Manifest, node: &[u8; 32], now: u64, gate: &Gate) -> Result<(), Wait> {
    let cohort_bp = cohort(node, &m.release_lineage());
    match stage_opens_at(m, cohort_bp) {
        None => {
            return Err(Wait::NotInRollout {
                cohort_bp,
                widest_bp: m.stages.last().map_or(ALL_BP, |s| s.share_bp),
            });
        }
        Some(opens_at) if now < opens_at => {
            return Err(Wait::Stage {
                cohort_bp,
                opens_at,
            });
        }
        Some(_) => {}
    }
    if gate.hold {
        return Err(Wait::Hold);
    }
    if let Some(w) = &gate.outside_window {
        return Err(Wait::Window(w.clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Stage;
    use crate::manifest::tests::{key, manifest_for};

    fn staged(stages: &[&str]) -> Manifest {
        let mut m = manifest_for(b"fw", crate::MIN_PIECE_SIZE, &key(1));
        m.name = "fw".into();
        m.stages = stages.iter().map(|s| s.parse::<Stage>().unwrap()).collect();
        m
    }

    fn node(i: u32) -> [u8; 32] {
        *blake3::hash(&i.to_le_bytes()).as_bytes()
    }

    #[test]
    fn cohorts_are_stable_per_lineage_and_spread_evenly() {
        let m = staged(&[]);
        let l = m.release_lineage();
        assert_eq!(cohort(&node(1), &l), cohort(&node(1), &l));
        // Another release of the lineage: same cohort (the release number is not hashed).
        let mut m2 = m.clone();
        m2.release = 7;
        assert_eq!(
            cohort(&node(1), &m2.release_lineage()),
            cohort(&node(1), &l)
        );
        // 10 000 nodes: each tenth of the range holds about a tenth of them.
        let mut buckets = [0u32; 10];
        for i in 0..10_000 {
            buckets[(cohort(&node(i), &l) / 1000) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&b| (850..1150).contains(&b)),
            "{buckets:?}"
        );
    }

    #[test]
    fn stages_open_in_turn() {
        let m = staged(&["5%@0", "50%@2d", "100%@4d"]);
        let t0 = m.created;
        let open = Gate::default();
        let (mut first, mut second, mut third) = (0, 0, 0);
        for i in 0..2000 {
            let n = node(i);
            let c = cohort(&n, &m.release_lineage());
            let at = |t| decide(&m, &n, t, &open).is_ok();
            match c {
                0..500 => {
                    first += 1;
                    assert!(at(t0));
                }
                500..5000 => {
                    second += 1;
                    assert!(!at(t0) && !at(t0 + 2 * 86_400 - 1) && at(t0 + 2 * 86_400));
                    assert_eq!(
                        decide(&m, &n, t0, &open),
                        Err(Wait::Stage {
                            cohort_bp: c,
                            opens_at: t0 + 2 * 86_400
                        })
                    );
                }
                _ => {
                    third += 1;
                    assert!(!at(t0 + 4 * 86_400 - 1) && at(t0 + 4 * 86_400));
                }
            }
        }
        assert!(
            first > 50 && second > 800 && third > 800,
            "{first} {second} {third}"
        );

        // Unstaged: at once. A canary-only rollout leaves the rest out.
        assert_eq!(decide(&staged(&[]), &node(1), t0, &open), Ok(()));
        let canary = staged(&["1%@0"]);
        let outside = (0..)
            .map(node)
            .find(|n| cohort(n, &canary.release_lineage()) >= 100);
        assert!(matches!(
            decide(&canary, &outside.unwrap(), u64::MAX, &open),
            Err(Wait::NotInRollout { widest_bp: 100, .. })
        ));
    }

    #[test]
    fn hold_and_window_defer_an_open_stage_only() {
        let m = staged(&["100%@60s"]);
        let hold = Gate {
            hold: true,
            outside_window: None,
        };
        let window = Gate {
            hold: false,
            outside_window: Some("Mon-Fri 01:00-05:00".into()),
        };
        // The stage says when first.
        assert!(matches!(
            decide(&m, &node(3), m.created, &hold),
            Err(Wait::Stage { .. })
        ));
        assert_eq!(decide(&m, &node(3), m.created + 60, &hold), Err(Wait::Hold));
        assert_eq!(
            decide(&m, &node(3), m.created + 60, &window),
            Err(Wait::Window("Mon-Fri 01:00-05:00".into()))
        );
        assert_eq!(
            decide(&m, &node(3), m.created + 60, &Gate::default()),
            Ok(())
        );
    }
}
