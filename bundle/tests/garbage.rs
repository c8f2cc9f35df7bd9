//! 100 000 random and mutated byte strings fed to the manifest decoder: each must be rejected
//! with an error (or, for the rare mutation that yields another valid manifest, decode to a
//! manifest whose re-encoding is exactly the input), never panic. Runs in the normal suite; the
//! `fuzz/` crate runs the same decoder under libFuzzer.

use std::collections::BTreeMap;

use mule_bundle::keys::SigningKey;
use mule_bundle::{PublishOptions, VerifiedManifest, publish};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

fn seeds() -> Vec<Vec<u8>> {
    let key = SigningKey::from_bytes(&[3; 32]);
    let mut out = Vec::new();
    for (len, ps, meta) in [
        (0usize, 4096u32, 0),
        (1, 4096, 1),
        (70_000, 4096, 3),
        (200_000, 65536, 5),
    ] {
        let content: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        let mut opts = PublishOptions::new("pkg", "1.2.3", 1_700_000_000);
        opts.piece_size = ps;
        opts.expires = Some(1_800_000_000);
        opts.audience = vec!["updates".into(), "ab".repeat(32)];
        opts.depends = vec![mule_bundle::BundleId([5; 32])];
        opts.metadata = (0..meta)
            .map(|i| (format!("k{i}"), "v".repeat(i * 10)))
            .collect::<BTreeMap<_, _>>();
        out.push(publish(&content[..], &opts, &key).unwrap().to_bytes());
    }
    out
}

fn mutate(rng: &mut SmallRng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..rng.random_range(1..4) {
        match rng.random_range(0..7) {
            0 if !b.is_empty() => {
                let i = rng.random_range(0..b.len() * 8);
                b[i / 8] ^= 1 << (i % 8);
            }
            1 if !b.is_empty() => {
                let i = rng.random_range(0..b.len());
                b[i] = rng.random();
            }
            2 => {
                let cut = rng.random_range(0..=b.len());
                b.truncate(cut);
            }
            3 => {
                let i = rng.random_range(0..=b.len());
                let n = rng.random_range(1..16);
                let ins: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                b.splice(i..i, ins);
            }
            4 if !b.is_empty() => {
                let i = rng.random_range(0..b.len());
                let n = rng.random_range(1..16).min(b.len() - i);
                b.drain(i..i + n);
            }
            5 if !b.is_empty() => {
                // Interesting CBOR heads: huge lengths, indefinite markers, breaks.
                let i = rng.random_range(0..b.len());
                b[i] =
                    [0x5b, 0x7b, 0x9b, 0xbb, 0x5f, 0x9f, 0xff, 0xf6, 0x1b][rng.random_range(0..9)];
            }
            _ => {
                let n = rng.random_range(0..8);
                b.extend((0..n).map(|_| rng.random::<u8>()));
            }
        }
    }
    b
}

#[test]
fn decoder_survives_100k_random_and_mutated_inputs() {
    let seed = 0x6761_7262;
    eprintln!("garbage test seed: {seed}");
    let mut rng = SmallRng::seed_from_u64(seed);
    let seeds = seeds();
    for (i, s) in seeds.iter().enumerate() {
        VerifiedManifest::decode(s).unwrap();
        // `MULE_WRITE_FUZZ_SEEDS=fuzz/corpus/manifest_decode` refreshes the fuzz seed corpus.
        if let Some(dir) = std::env::var_os("MULE_WRITE_FUZZ_SEEDS") {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(std::path::Path::new(&dir).join(format!("seed-{i}")), s).unwrap();
        }
    }
    let (mut rejected, mut accepted) = (0u32, 0u32);
    for n in 0..100_000u32 {
        let input = if n % 4 == 0 {
            let mut b = vec![0u8; rng.random_range(0..300)];
            rng.fill_bytes(&mut b);
            b
        } else {
            let s = &seeds[rng.random_range(0..seeds.len())];
            mutate(&mut rng, s)
        };
        match VerifiedManifest::decode(&input) {
            Err(e) => {
                assert!(!e.to_string().is_empty());
                rejected += 1;
            }
            Ok(vm) => {
                // Only an unchanged seed can verify (any change breaks the signature).
                assert_eq!(vm.as_bytes(), &input[..]);
                assert!(seeds.contains(&input), "a mutated manifest verified");
                accepted += 1;
            }
        }
    }
    eprintln!("garbage test: {rejected} rejected, {accepted} accepted (unchanged seeds)");
    assert!(rejected > 90_000);
}
