//! Fuzz target: the beacon decoder and the receive-side filter, fed what anyone on the LAN
//! can multicast to a node before any authentication.
//!
//! Two ways in, both must end in `Ok` or a typed drop, never a panic, hang or huge
//! allocation:
//! 1. the input as a raw datagram (almost everything stops at the CBOR or signature check);
//! 2. the input as a beacon *body*, wrapped and signed with a known key exactly as the wire
//!    format says, so the fields behind the signature (version, lengths, seq, time, port, met
//!    ids) and the filter's window and replay checks are reached too. A body that decodes
//!    must come back with the signer's id and at most `MAX_MET` met ids.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use mule_contacts::beacon::{Beacon, BeaconFilter, FilterConfig, MAX_BEACON_BYTES, MAX_MET};
use mule_contacts::{NodeId, NodeIdentity, Timestamp};

/// The signature's domain separation prefix (node/PROTOCOL.md, contacts/src/beacon.rs).
const SIGN_CONTEXT: &[u8] = b"mule-beacon-v1\0";

/// A CBOR byte-string header for `len` bytes.
fn bytes_header(out: &mut Vec<u8>, len: usize) {
    match len {
        0..=23 => out.push(0x40 | len as u8),
        24..=0xff => out.extend_from_slice(&[0x58, len as u8]),
        _ => {
            out.push(0x59);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
    }
}

/// `[body, ed25519(key, context || body)]` as the wire format has it.
fn signed_packet(key: &NodeIdentity, body: &[u8]) -> Vec<u8> {
    let mut msg = SIGN_CONTEXT.to_vec();
    msg.extend_from_slice(body);
    let sig = key.sign(&msg).to_bytes();
    let mut out = vec![0x82];
    bytes_header(&mut out, body.len());
    out.extend_from_slice(body);
    bytes_header(&mut out, sig.len());
    out.extend_from_slice(&sig);
    out
}

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    // A fixed wall clock near the values a fuzzer likes (0, small, u32/u64 edges are all
    // within reach of the window check from some side).
    let wall = Timestamp::from_secs(1_700_000_000);
    let mut filter = BeaconFilter::new(NodeId([0; 32]), FilterConfig::default());

    let _ = Beacon::decode(data);
    let _ = filter.handle(now, wall, data, &"fuzz");

    if data.len() > MAX_BEACON_BYTES {
        return;
    }
    let key = NodeIdentity::from_secret([7; 32]);
    let packet = signed_packet(&key, data);
    if let Ok(b) = Beacon::decode(&packet) {
        assert_eq!(b.node, key.id());
        assert!(b.met.len() <= MAX_MET);
    }
    // Twice through the filter: the second copy must never be accepted.
    let first = filter.handle(now, wall, &packet, &"fuzz");
    let second = filter.handle(now, wall, &packet, &"fuzz");
    if first.is_ok() {
        assert!(second.is_err(), "an exact replay was accepted");
    }
});
