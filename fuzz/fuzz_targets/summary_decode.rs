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
    // The same bytes as a bare filter (the growable-bloom-filter serde form): validation
    // must refuse whatever would make `contains` panic or run long.
    if let Ok(f) = BloomFilter::decode([0; 16], data) {
        for i in 0..64 {
            let _ = f.contains(PieceRef {
                bundle: BundleId([7; 32]),
                index: i,
            });
        }
    }
});
