//! Fuzz target: the store's piece path. Input = 4-byte little-endian piece index + piece
//! bytes, put into a store holding one small bundle. The piece must be rejected with a typed
//! error unless it is exactly the right piece, and the store must stay consistent.
#![no_main]

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use mule_bundle::keys::SigningKey;
use mule_bundle::store::{Origin, Store, StoreOptions};
use mule_bundle::{PublishOptions, VerifiedManifest, publish};

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    vm: VerifiedManifest,
    content: Vec<u8>,
}

fn fixture() -> &'static Mutex<Fixture> {
    static F: OnceLock<Mutex<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        let key = SigningKey::from_bytes(&[9; 32]);
        let content: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut opts = PublishOptions::new("fuzz", "1", 1);
        opts.piece_size = mule_bundle::MIN_PIECE_SIZE;
        let vm = publish(&content[..], &opts, &key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        store.insert_manifest(&vm, Origin::Published).unwrap();
        Mutex::new(Fixture {
            _dir: dir,
            store,
            vm,
            content,
        })
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let index = u32::from_le_bytes(data[..4].try_into().unwrap());
    let piece = &data[4..];
    let mut f = fixture().lock().unwrap();
    let id = f.vm.id();
    let ps = mule_bundle::MIN_PIECE_SIZE as usize;
    let start = (index as usize).saturating_mul(ps);
    let right = f
        .content
        .get(start..(start + ps).min(f.content.len()))
        .is_some_and(|p| !p.is_empty() && p == piece);
    let r = f.store.put_piece(&id, index, piece);
    assert_eq!(r.is_ok(), right, "index {index}: {r:?}");
    if let Ok(stored) = f.store.read_piece(&id, index) {
        if let Some(stored) = stored {
            assert!(mule_bundle::verify_piece(&f.vm, index, &stored).is_ok());
        }
    }
});
