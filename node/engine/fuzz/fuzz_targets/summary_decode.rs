//! Decodes arbitrary summary bodies and, when one validates, queries its filter: neither may
//! panic or take unbounded time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mule_bundle::{BundleId, PieceRef};
use mule_engine::frame::{Message, MessageType, parse_body};
use mule_engine::summary::{BloomFilter, PeerHoldings};

fuzz_target!(|data: &[u8]| {
    if let Ok(Message::Summary(s)) = parse_body(MessageType::Summary, data) {
        let h = PeerHoldings::new(*s);
        for i in 0..64 {
            let _ = h.has(PieceRef {
                bundle: BundleId([i as u8; 32]),
                index: i,
            });
        }
    }
    // Raw filter parts: first byte is the hash count, the rest the bits.
    if let Some((&k, bits)) = data.split_first()
        && let Ok(f) = BloomFilter::from_parts([0; 16], k as u64, bits.to_vec())
    {
        for i in 0..64 {
            let _ = f.contains(PieceRef {
                bundle: BundleId([7; 32]),
                index: i,
            });
        }
    }
});
