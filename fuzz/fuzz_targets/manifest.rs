//! The manifest parser (`Manifest::parse`, docs/format.md §10.1) and the strict checks
//! (`check_strict`, `check_strict_bytes`) on arbitrary bytes.
//!
//! Besides "no panic", it checks that serialization is a fixed point: whatever `to_xml` emits
//! parses back to a manifest that serializes to the same bytes (the serializer normalizes, e.g.
//! it sorts the block device mappings, so the first parse may differ), and passes
//! `check_strict_bytes` whenever `check_strict` passed.
#![no_main]

use amibundle::bundle::manifest::{self, Manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = manifest::check_strict_bytes(data);
    let Ok(parsed) = Manifest::parse(data) else {
        return;
    };
    let _ = parsed.signed_bytes();
    let strict = parsed.check_strict().is_ok();
    let Ok(xml) = parsed.to_xml() else {
        assert!(!strict, "check_strict passed but to_xml failed");
        return;
    };
    let again = Manifest::parse(xml.as_bytes()).expect("our own serialization parses");
    assert_eq!(
        again.to_xml().expect("serializes again"),
        xml,
        "to_xml is not a fixed point"
    );
    assert_eq!(
        again.signed_bytes().ok(),
        parsed.signed_bytes().ok(),
        "signed bytes changed"
    );
    assert_eq!(again.check_strict().is_ok(), strict, "strictness changed");
    if strict {
        manifest::check_strict_bytes(xml.as_bytes()).expect("strict manifest, exact form");
    }
});
