//! Property test: on random small traces and random parameters, no strategy completes
//! any node before the oracle bound, and a run is deterministic.

use mule_testbed::mule_strategy::Mule;
use mule_testbed::oracle::Oracle;
use mule_testbed::sim::{Overheads, Radio, Scenario, simulate};
use mule_testbed::strategy::{ClientServer, Epidemic, Strategy};
use mule_testbed::trace::{Contact, Options, RawContact, Trace};
use mule_testbed::units::Rate;
use proptest::prelude::*;

fn trace(nodes: u32, raw: &[(u32, u32, u32, u32)]) -> Option<Trace> {
    let raw: Vec<RawContact> = raw
        .iter()
        .enumerate()
        .filter(|(_, c)| c.2 % nodes != c.3 % nodes)
        .map(|(i, &(s, d, a, b))| {
            let (a, b) = (a % nodes, b % nodes);
            RawContact {
                contact: Contact {
                    start: s as f64,
                    end: (s + d) as f64,
                    a: a.min(b),
                    b: a.max(b),
                },
                line: i + 1,
            }
        })
        .collect();
    if raw.is_empty() {
        return None;
    }
    let opts = Options {
        min_contact: 1.0,
        nodes: Some(nodes),
        window: None,
    };
    Trace::build(raw, &opts).ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn no_strategy_beats_the_oracle(
        nodes in 2u32..8,
        raw in prop::collection::vec((0u32..2000, 0u32..120, 0u32..8, 0u32..8), 1..40),
        bundle_kib in 1u64..400,
        piece_kib in prop::sample::select(vec![4u32, 16, 64]),
        rate_kbit in prop::sample::select(vec![64.0f64, 1000.0, 8000.0]),
        publish_frac in 0.0f64..0.6,
        fraction in prop::sample::select(vec![0.3f64, 1.0]),
        quota in 0u32..40,
        shared in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let Some(t) = trace(nodes, &raw) else { return Ok(()) };
        let piece_size = piece_kib * 1024;
        let sc = Scenario {
            rate: Rate(rate_kbit * 1000.0 / 8.0),
            bundle: bundle_kib * 1024,
            piece_size,
            origin: 0,
            publish_at: t.start + publish_frac * t.duration(),
            audience: Scenario::pick_audience(t.nodes, 0, fraction, seed),
            carry_quota_pieces: quota,
            fpr: 0.05,
            overheads: Overheads::mule(piece_size),
            radio: if shared { Radio::SharedEgress } else { Radio::PerContact },
            seed,
        };
        let o = Oracle::compute(&t, sc.origin, sc.publish_at, sc.bundle, sc.rate);
        let make = |sc: &Scenario| -> Vec<Box<dyn Strategy>> {
            vec![
                Box::new(Mule::new(sc, t.nodes, true)),
                Box::new(Mule::rarest(sc, t.nodes)),
                Box::new(Epidemic),
                Box::new(ClientServer),
            ]
        };
        for (mut s, mut again) in make(&sc).into_iter().zip(make(&sc)) {
            let out = simulate(&t, &sc, s.as_mut(), &mut |_| {});
            for (v, n) in out.nodes.iter().enumerate() {
                if let Some(c) = n.complete_at {
                    prop_assert!(
                        c >= o.complete[v],
                        "{}: node {v} complete at {c}, oracle {}", out.strategy, o.complete[v]
                    );
                }
            }
            let twice = simulate(&t, &sc, again.as_mut(), &mut |_| {});
            prop_assert_eq!(
                serde_json::to_string(&out).unwrap(),
                serde_json::to_string(&twice).unwrap()
            );
        }
    }
}
