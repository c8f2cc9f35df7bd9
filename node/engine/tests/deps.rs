//! The engine is pure by dependency, not only by lint (issue 12): neither `mule-engine` nor
//! the leaf `mule-proto` may reach an async runtime, storage, sockets, discovery, a logging
//! back end, Bluetooth, or the crates that own those (`mule-bundle`, `mule-contacts`).
//!
//! Reads `cargo tree` of the workspace (normal edges, the host platform: `--target all` would
//! need crates for other platforms that an offline machine has not downloaded) offline from
//! the lock file, so it needs no network and fails as soon as a forbidden crate appears
//! anywhere below either crate, directly or through another dependency.

use std::process::Command;

/// Crates the sans-IO core must not depend on, even indirectly.
const FORBIDDEN: &[&str] = &[
    "tokio",
    "redb",
    "mdns-sd",
    "socket2",
    "tracing-subscriber",
    "bluer",
    "mule-bundle",
    "mule-contacts",
];

/// Every crate in the normal-dependency tree of `package`, by name.
fn dependencies(package: &str) -> Vec<String> {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["tree", "--offline", "--locked", "--manifest-path", manifest])
        .args(["-p", package, "--edges", "normal", "--prefix", "none"])
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout).expect("cargo tree prints UTF-8");
    let names: Vec<String> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    assert!(
        names.iter().any(|n| n == package),
        "cargo tree did not list {package} itself:\n{tree}"
    );
    names
}

fn assert_free_of_forbidden(package: &str, also: &[&str]) {
    let names = dependencies(package);
    let found: Vec<&str> = FORBIDDEN
        .iter()
        .chain(also)
        .copied()
        .filter(|f| names.iter().any(|n| n == f))
        .collect();
    assert!(
        found.is_empty(),
        "{package} depends on {found:?}; see `cargo tree -p {package} -e normal -i <crate>`"
    );
}

#[test]
fn engine_depends_on_nothing_async_or_storage() {
    assert_free_of_forbidden("mule-engine", &[]);
}

#[test]
fn proto_is_a_leaf() {
    // Nothing of ours either: every other crate builds on it, not the other way round.
    assert_free_of_forbidden(
        "mule-proto",
        &["mule-engine", "mule-config", "mule", "tracing"],
    );
}
