//! Random operation sequences against a small store: after every operation the store must be
//! consistent (`verify_all`), within its quotas, and must never have dropped a bundle it
//! published or still wants, nor a piece it acknowledged, except by explicit removal or a
//! reported eviction.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use mule_bundle::keys::SigningKey;
use mule_bundle::store::{Origin, Put, PutError, Store, StoreOptions};
use mule_bundle::{BundleId, MIN_PIECE_SIZE, Priority, PublishOptions, VerifiedManifest, publish};
use proptest::prelude::*;

const PS: usize = MIN_PIECE_SIZE as usize;
const QUOTA: u64 = 7 * PS as u64;
const CARRY: u64 = 2 * PS as u64;
const T0: u64 = 1_700_000_000;

#[derive(Clone, Debug)]
enum Op {
    Insert(usize, bool),
    Put(usize, u32, bool),
    Batch(usize, u32, u32),
    Want(usize, bool),
    Remove(usize),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..6usize, prop::bool::weighted(0.2)).prop_map(|(b, p)| Op::Insert(b, p)),
        2 => (0..6usize, 0..5u32, prop::bool::weighted(0.2)).prop_map(|(b, i, c)| Op::Put(b, i, c)),
        4 => (0..6usize, 0..3u32, 2..6u32).prop_map(|(b, i, n)| Op::Batch(b, i, n)),
        2 => (0..6usize, any::<bool>()).prop_map(|(b, w)| Op::Want(b, w)),
        1 => (0..6usize).prop_map(Op::Remove),
        1 => (0..400u64).prop_map(Op::Advance),
    ]
}

struct Bundle {
    vm: VerifiedManifest,
    content: Vec<u8>,
}

fn bundles() -> Vec<Bundle> {
    let trusted = SigningKey::from_bytes(&[1; 32]);
    let stranger = SigningKey::from_bytes(&[2; 32]);
    (0..6u8)
        .map(|k| {
            let content: Vec<u8> = (0..4 * PS + 100).map(|i| (i as u8) ^ k).collect();
            let mut o = PublishOptions::new(format!("b{k}"), "1", T0);
            o.piece_size = MIN_PIECE_SIZE;
            o.priority = Priority::ALL[k as usize % 4];
            o.expires = (k % 3 == 0).then_some(T0 + 300 + u64::from(k) * 100);
            let key = if k == 5 { &stranger } else { &trusted };
            Bundle {
                vm: publish(&content[..], &o, key).unwrap(),
                content,
            }
        })
        .collect()
}

fn piece(b: &Bundle, i: u32) -> &[u8] {
    let start = (i as usize * PS).min(b.content.len());
    &b.content[start..(start + PS).min(b.content.len())]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn random_operations_keep_the_store_consistent(ops in prop::collection::vec(op(), 1..40)) {
        let all = bundles();
        let dir = tempfile::tempdir().unwrap();
        let time = Arc::new(AtomicU64::new(T0));
        let t = time.clone();
        let opts = StoreOptions {
            quota_bytes: QUOTA,
            carry_quota_bytes: CARRY,
            carry_untrusted: true,
            trust: [SigningKey::from_bytes(&[1; 32]).verifying_key().to_bytes()].into_iter().collect(),
            clock: Arc::new(move || t.load(Ordering::SeqCst)),
            ..StoreOptions::default()
        };
        let mut store = Store::open(dir.path(), opts).unwrap();
        // Model: acknowledged pieces per bundle, and bundles that must never be evicted.
        let mut acked: HashMap<BundleId, HashSet<u32>> = HashMap::new();
        let mut published: HashSet<BundleId> = HashSet::new();
        let mut wanted: HashSet<BundleId> = HashSet::new();
        let expiry: HashMap<BundleId, Option<u64>> =
            all.iter().map(|b| (b.vm.id(), b.vm.manifest().expires)).collect();
        let mut evictions = 0;
        for op in ops {
            let now = time.load(Ordering::SeqCst);
            match op {
                Op::Insert(k, as_published) => {
                    let origin = if as_published { Origin::Published } else { Origin::Received };
                    if store.insert_manifest(&all[k].vm, origin).is_ok() {
                        acked.entry(all[k].vm.id()).or_default();
                        if as_published {
                            published.insert(all[k].vm.id());
                        }
                    }
                }
                Op::Put(k, i, corrupt) => {
                    let mut data = piece(&all[k], i).to_vec();
                    if corrupt && !data.is_empty() {
                        data[0] ^= 1;
                    }
                    match store.put_piece(&all[k].vm.id(), i, &data) {
                        Ok(Put::Stored | Put::Completed | Put::AlreadyHad) => {
                            prop_assert!(!corrupt, "corrupt piece accepted");
                            acked.entry(all[k].vm.id()).or_default().insert(i);
                        }
                        Err(PutError::Store(e)) => panic!("store failed: {e}"),
                        Err(_) => {}
                    }
                }
                Op::Batch(k, from, n) => {
                    let id = all[k].vm.id();
                    let batch: Vec<_> = (from..from + n).map(|i| (id, i, piece(&all[k], i))).collect();
                    for (r, (_, i, _)) in store.put_pieces(&batch).unwrap().into_iter().zip(&batch) {
                        if r.is_ok() {
                            acked.entry(id).or_default().insert(*i);
                        }
                    }
                }
                Op::Want(k, w) => {
                    let id = all[k].vm.id();
                    if store.set_wanted(&id, w).is_ok() {
                        if w {
                            wanted.insert(id);
                        } else {
                            wanted.remove(&id);
                        }
                    }
                }
                Op::Remove(k) => {
                    store.remove(&all[k].vm.id()).unwrap();
                    acked.remove(&all[k].vm.id());
                    published.remove(&all[k].vm.id());
                    wanted.remove(&all[k].vm.id());
                }
                Op::Advance(s) => {
                    time.store(now + s, Ordering::SeqCst);
                }
            }
            for id in store.take_evicted() {
                prop_assert!(!published.contains(&id), "evicted a published bundle");
                let expired = expiry[&id].is_some_and(|e| time.load(Ordering::SeqCst) >= e);
                prop_assert!(!wanted.contains(&id) || expired, "evicted a wanted bundle");
                acked.remove(&id);
                wanted.remove(&id);
                evictions += 1;
            }
            store.verify_all().unwrap();
            let usage = store.usage().unwrap();
            prop_assert!(usage.total <= QUOTA, "over quota: {usage:?}");
            prop_assert!(usage.carry <= CARRY, "over carry quota: {usage:?}");
            let infos = store.bundles().unwrap();
            for (id, pieces) in &acked {
                let info = infos.iter().find(|b| b.id == *id);
                prop_assert!(info.is_some(), "bundle {id:?} vanished without a reported eviction");
                let bf = store.bitfield(id).unwrap().unwrap();
                for i in pieces {
                    prop_assert!(bf.get(*i), "acknowledged piece {i} of {id:?} lost");
                }
            }
        }
        if std::env::var_os("MULE_MODEL_VERBOSE").is_some() {
            eprintln!("evictions: {evictions}");
        }
    }
}
