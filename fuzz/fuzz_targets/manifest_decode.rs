//! Fuzz target: the manifest decoder, the first thing a peer's bytes reach.
//!
//! Anything must come back as `Ok` or a typed error, never a panic, hang or huge allocation;
//! and whatever is accepted must be canonical (its bytes are exactly the input).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mule_bundle::VerifiedManifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(vm) = VerifiedManifest::decode(data) {
        assert_eq!(vm.as_bytes(), data);
        let again = VerifiedManifest::decode(vm.as_bytes()).expect("re-decodes");
        assert_eq!(again.id(), vm.id());
    }
});
