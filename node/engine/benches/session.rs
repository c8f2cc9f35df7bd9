//! Session throughput and contact-efficiency figures (prints, never asserts).
//!
//! Run: `cargo bench -p mule-engine --bench session`
//!
//! 1. Loopback: two sessions in memory, a 64 MiB bundle in 256 KiB pieces, unlimited link;
//!    includes BLAKE3 verification of every piece by the receiving driver. Prints MB/s.
//! 2. Contact at 8 Mbit/s (1000 bytes per virtual ms), 10 s contact, 20 MB bundle in
//!    256 KiB pieces, with 0, 5 and 20 ms one-way delay: useful payload / (rate × contact
//!    time), virtual time from link up to the first piece byte and the first whole piece,
//!    and link bytes per payload byte (frames only; no TCP/IP headers).

#![allow(clippy::disallowed_methods)] // a benchmark measures wall time

use std::time::Instant;

use mule_engine::harness::{Catalog, MemNode, World, payload};
use mule_proto::Priority;

/// Like [`loopback`], but the transport hands over at most 64 KiB per read, so frames are
/// split across `handle_bytes` calls (the decoder's buffered path).
fn loopback_chunked(len: usize) -> f64 {
    let mut catalog = Catalog::default();
    let data = payload(len, 3);
    let e = catalog.publish("bench", "fw", Priority::Normal, vec![], &data, 256 * 1024);
    let mut w = World::new(catalog);
    let mut a = MemNode::new(1, &[]);
    a.hold(&e, &data, 0..e.meta.pieces);
    w.add(a);
    w.add(MemNode::new(2, &["fw"]));
    let start = Instant::now();
    w.connect(0, 1, None);
    w.settle_reads(Some(64 * 1024));
    assert!(w.nodes[1].complete(&e.meta.id));
    let secs = start.elapsed().as_secs_f64();
    len as f64 / secs / 1e6
}

/// The frame decoder alone: 64 MiB of piece frames pushed in 64 KiB reads.
fn decoder_only() -> f64 {
    use mule_engine::frame::{FrameDecoder, Message, encode_piece};
    use mule_proto::{BundleId, PieceRef};
    let data = payload(256 * 1024, 9);
    let mut wire = Vec::new();
    for index in 0..256 {
        encode_piece(
            PieceRef {
                bundle: BundleId([1; 32]),
                index,
            },
            &data,
            &mut wire,
        );
    }
    let start = Instant::now();
    let mut d = FrameDecoder::new();
    let mut got = 0usize;
    for chunk in wire.chunks(64 * 1024) {
        d.push(chunk);
        while let Ok(Some(Message::Piece { data, .. })) = d.next_message() {
            got += data.len();
        }
    }
    assert_eq!(got, 64 << 20);
    got as f64 / start.elapsed().as_secs_f64() / 1e6
}

fn loopback(len: usize) -> f64 {
    let mut catalog = Catalog::default();
    let data = payload(len, 3);
    let e = catalog.publish("bench", "fw", Priority::Normal, vec![], &data, 256 * 1024);
    let mut w = World::new(catalog);
    let mut a = MemNode::new(1, &[]);
    a.hold(&e, &data, 0..e.meta.pieces);
    w.add(a);
    w.add(MemNode::new(2, &["fw"]));
    let start = Instant::now();
    w.connect(0, 1, None);
    w.settle();
    let secs = start.elapsed().as_secs_f64();
    assert!(w.nodes[1].complete(&e.meta.id), "transfer incomplete");
    len as f64 / secs / 1e6
}

fn contact(len: usize, contact_ms: u64, latency_ms: u64) -> (f64, u64, u64, f64) {
    let mut catalog = Catalog::default();
    let data = payload(len, 4);
    let e = catalog.publish("contact", "fw", Priority::Normal, vec![], &data, 256 * 1024);
    let mut w = World::new(catalog);
    let mut a = MemNode::new(1, &[]);
    a.hold(&e, &data, 0..e.meta.pieces);
    w.add(a);
    w.add(MemNode::new(2, &["fw"]));
    let l = w.connect(0, 1, Some(1000));
    w.links[l].latency_ms = latency_ms;
    let t0 = w.now;
    // First piece byte: the sender's first piece frame goes on the wire (queued behind
    // nothing), and arrives one propagation delay later.
    w.run_until(contact_ms, |w| {
        w.links[l].ends[0].session.stats().pieces_sent > 0
    });
    let first_byte = w.now - t0 + latency_ms;
    w.run_until(contact_ms, |w| {
        w.links[l].ends[1].session.stats().pieces_received > 0
    });
    let first_piece = w.now - t0;
    w.run_for(contact_ms - (w.now - t0));
    let useful = w.nodes[1]
        .store
        .values()
        .map(|v| v.len() as u64)
        .sum::<u64>();
    let on_link = w.links[l].delivered[0] + w.links[l].delivered[1];
    let eff = useful as f64 / (1000.0 * contact_ms as f64);
    (
        eff,
        first_byte,
        first_piece,
        on_link as f64 / useful.max(1) as f64,
    )
}

/// Bytes of a summary frame for `partial` pieces of partly held bundles at 1 % FPR.
fn summary_bytes(partial: u32) -> usize {
    use mule_engine::frame::Message;
    use mule_engine::summary::{BloomFilter, Summary};
    use mule_proto::{BundleId, PieceRef};
    let mut filter = BloomFilter::for_items([1; 16], partial as usize, 0.01);
    for index in 0..partial {
        filter.insert(PieceRef {
            bundle: BundleId([index as u8; 32]),
            index,
        });
    }
    let mut out = Vec::new();
    Message::Summary(Box::new(Summary {
        filter,
        complete: (0..20u8).map(|i| BundleId([i; 32])).collect(),
        manifests: (0..20u8).map(|i| BundleId([100 + i; 32])).collect(),
        channels: vec!["fw/gateway".into()],
        want_bundles: vec![],
        predictabilities: vec![],
        carry_quota_bytes: 1 << 30,
        expected_contact_ms: Some(10_000),
    }))
    .encode(&mut out);
    out.len()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let runs: Vec<f64> = (0..5).map(|_| loopback(64 << 20)).collect();
    println!(
        "loopback 64 MiB (256 KiB pieces, BLAKE3-verified): median {:.0} MB/s  runs {:?}",
        median(runs.clone()),
        runs.iter().map(|r| r.round()).collect::<Vec<_>>()
    );
    let runs: Vec<f64> = (0..5).map(|_| loopback_chunked(64 << 20)).collect();
    println!(
        "loopback 64 MiB, 64 KiB reads (frames split across reads): median {:.0} MB/s  runs {:?}",
        median(runs.clone()),
        runs.iter().map(|r| r.round()).collect::<Vec<_>>()
    );
    let runs: Vec<f64> = (0..5).map(|_| decoder_only()).collect();
    println!(
        "frame decoder alone, 64 KiB reads: median {:.0} MB/s",
        median(runs)
    );
    println!(
        "summary frame: 80 partial pieces + 40 bundle ids {} B; 10 000 partial pieces {} B; piece frame overhead {} B per 256 KiB",
        summary_bytes(80),
        summary_bytes(10_000),
        mule_engine::frame::piece_overhead(
            mule_proto::PieceRef {
                bundle: mule_proto::BundleId([0; 32]),
                index: 1000
            },
            256 * 1024
        )
    );
    for latency in [0, 5, 20] {
        let (eff, byte, piece, ratio) = contact(20_000_000, 10_000, latency);
        println!(
            "contact 10 s at 8 Mbit/s, {latency} ms one-way delay, 20 MB bundle: efficiency {eff:.3}  link-up->first piece byte {byte} ms, ->first whole 256 KiB piece {piece} ms (virtual)  link bytes per payload byte {ratio:.4}"
        );
    }
}
