//! Fuzzes the `.ycpt` reader: whole packages, bare safetensors bodies, manifests
//!
//! Seed with `fuzz/seed.sh` (golden file, malformed corpus, their bodies).
//! Any input must be rejected or parse to a package that rewrites to itself.

#![no_main]

use concept_format::{peek_version, ConceptPackage, ConceptTensors, Manifest, PREAMBLE_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = ConceptPackage::parse(data) {
        let bytes = p.to_bytes();
        let again = ConceptPackage::parse(&bytes).expect("a parsed package rewrites validly");
        assert_eq!(again, p);
        assert_eq!(again.to_bytes(), bytes);
    }

    // The body hash stops most mutations of a package before the body checks;
    // run those checks on whatever follows the manifest, and on the raw input.
    if peek_version(data).is_ok() && data.len() >= PREAMBLE_LEN {
        let len = u32::from_le_bytes([data[12], data[13], data[14], data[15]]) as usize;
        if let Some(body) = data.get(PREAMBLE_LEN.saturating_add(len)..) {
            if let Ok(t) = ConceptTensors::from_safetensors_bytes(body) {
                assert_eq!(t.to_safetensors_bytes(), body);
            }
        }
        if let Some(text) = data.get(PREAMBLE_LEN..PREAMBLE_LEN.saturating_add(len)) {
            if let Ok(text) = std::str::from_utf8(text) {
                if let Ok(m) = Manifest::from_toml_str(text) {
                    assert_eq!(
                        Manifest::from_toml_str(&m.to_toml_string()).expect("rewrite"),
                        m
                    );
                }
            }
        }
    }
    if let Ok(t) = ConceptTensors::from_safetensors_bytes(data) {
        assert_eq!(t.to_safetensors_bytes(), data);
    }
});
