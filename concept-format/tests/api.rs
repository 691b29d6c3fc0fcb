//! Behaviour of the public API beyond the corpus: building, files, versions, limits

#[path = "support/corpus.rs"]
mod corpus;

use std::fs;

use concept_format::{
    migrate, peek_version, ConceptPackage, ConceptTensors, DType, Manifest, FORMAT_MINOR,
    MAX_FILE_LEN,
};
use corpus::{assemble, golden_manifest, golden_package};

fn golden_parts() -> (String, Vec<u8>) {
    let p = golden_package();
    (
        p.manifest().to_toml_string(),
        p.tensors().to_safetensors_bytes(),
    )
}

#[test]
fn new_fills_body_sha256_and_rejects_disagreeing_manifests() {
    let p = golden_package();
    assert_eq!(p.manifest().body_sha256.len(), 64);

    let tensors = p.tensors().clone();
    let mut m = golden_manifest();
    m.dtype = DType::BF16;
    let err = ConceptPackage::new(m, tensors.clone()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "manifest field `dtype` disagrees with the tensors: expected f32, found bf16"
    );

    let mut m = golden_manifest();
    m.k = 5;
    let err = ConceptPackage::new(m, tensors).unwrap_err();
    assert_eq!(err.kind(), "ManifestTensorMismatch");
}

#[test]
fn new_validates_the_manifest() {
    let mut m = golden_manifest();
    m.created = "yesterday".into();
    let err = ConceptPackage::new(m, golden_package().tensors().clone()).unwrap_err();
    assert_eq!(err.kind(), "InvalidTimestamp");
}

#[test]
fn oversized_manifests_are_rejected_by_validate() {
    let mut m = golden_package().manifest().clone();
    // 64 facts of 512 four-byte characters: valid one by one, 128 KiB together.
    m.user_facts = vec!["🐕".repeat(512); 64];
    let err = m.validate().unwrap_err();
    assert_eq!(err.kind(), "ManifestTooLarge");
    m.user_facts.push("one too many".into());
    assert_eq!(m.validate().unwrap_err().kind(), "InvalidField");
}

#[test]
fn manifest_without_provenance_or_lists_round_trips() {
    let mut m = golden_package().manifest().clone();
    m.provenance = None;
    m.user_facts.clear();
    m.relations.clear();
    m.ext.clear();
    let text = m.to_toml_string();
    assert!(!text.contains("[provenance]"));
    assert!(text.contains("user_facts = []\n"));
    assert_eq!(Manifest::from_toml_str(&text).unwrap(), m);
}

#[test]
fn optional_manifest_fields_may_be_omitted() {
    let (text, _) = golden_parts();
    let cut = text.find("user_facts = [").unwrap();
    let end = text[cut..].find("]\n").unwrap() + cut + 2;
    let without_facts = format!("{}{}", &text[..cut], &text[end..]);
    let m = Manifest::from_toml_str(&without_facts).unwrap();
    assert!(m.user_facts.is_empty());
}

#[test]
fn integers_are_accepted_for_float_fields() {
    let (text, _) = golden_parts();
    let text = text.replace("wall_time_secs = 123.5", "wall_time_secs = 120");
    let m = Manifest::from_toml_str(&text).unwrap();
    assert_eq!(m.provenance.unwrap().wall_time_secs, 120.0);
}

#[test]
fn newer_minor_files_are_read_and_their_unknown_keys_ignored() {
    let (text, body) = golden_parts();
    let text = text
        .replace("\nk = 4\n", "\nk = 4\nfuture_field = \"x\"\n")
        .replace("vocab_size = 1000\n", "vocab_size = 1000\nrope = 1.5\n");
    let newer = assemble(1, FORMAT_MINOR + 1, &text, &body);

    assert_eq!(peek_version(&newer).unwrap(), (1, FORMAT_MINOR + 1));
    let p = ConceptPackage::parse(&newer).unwrap();
    assert_eq!(p, golden_package());
    // Rewriting produces the current minor without the unknown keys.
    assert_eq!(p.to_bytes(), golden_package().to_bytes());
    let err = migrate(&newer).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot migrate format version 1.1: expected minor 0 or older, a newer minor would lose fields"
    );

    // The same keys in a current-minor file are an error.
    let current = assemble(1, FORMAT_MINOR, &text, &body);
    assert_eq!(
        ConceptPackage::parse(&current).unwrap_err().kind(),
        "UnknownField"
    );
}

#[test]
fn newer_minor_files_still_get_every_v1_0_check() {
    let (text, body) = golden_parts();
    let text = text.replace("category = \"pet\"", "category = \"dog\"");
    let newer = assemble(1, FORMAT_MINOR + 1, &text, &body);
    assert_eq!(
        ConceptPackage::parse(&newer).unwrap_err().kind(),
        "UnknownCategory"
    );
}

#[test]
fn ext_table_survives_a_round_trip() {
    let (text, body) = golden_parts();
    let text = text + "nested = { list = [1, 2.5, \"three\"], when = 1979-05-27T07:32:00Z }\n";
    let p = ConceptPackage::parse(&assemble(1, 0, &text, &body)).unwrap();
    let ext = &p.manifest().ext["example_studio"];
    assert_eq!(ext["nested"]["list"][1].as_float(), Some(2.5));
    let again = ConceptPackage::parse(&p.to_bytes()).unwrap();
    assert_eq!(again, p);
}

#[test]
fn non_finite_floats_in_ext_are_rejected() {
    let (text, _) = golden_parts();
    let text = text + "ratio = nan\n";
    let err = Manifest::from_toml_str(&text).unwrap_err();
    assert_eq!(
        err.to_string(),
        "manifest field `ext.example_studio.ratio` is invalid: expected a finite float, found NaN"
    );
}

#[test]
fn migrate_canonicalises_a_hand_edited_manifest() {
    let (text, body) = golden_parts();
    let edited = format!("# edited by hand\n{}", text.replace(" = ", "   =   "));
    let file = assemble(1, 0, &edited, &body);
    let migrated = migrate(&file).unwrap();
    assert_ne!(migrated, file);
    assert_eq!(migrated, golden_package().to_bytes());
}

#[test]
fn files_over_the_cap_are_refused_before_parsing() {
    let big = vec![0u8; MAX_FILE_LEN as usize + 1];
    let err = ConceptPackage::parse(&big).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "file is too large: expected at most {MAX_FILE_LEN} bytes, found {}",
            MAX_FILE_LEN + 1
        )
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.ycpt");
    let file = fs::File::create(&path).unwrap();
    file.set_len(MAX_FILE_LEN + 1).unwrap(); // sparse: nothing is read
    assert_eq!(
        ConceptPackage::read_file(&path).unwrap_err().kind(),
        "FileTooLarge"
    );
}

#[test]
fn read_file_names_the_missing_path() {
    let err = ConceptPackage::read_file("no/such/bo.ycpt".as_ref()).unwrap_err();
    assert_eq!(err.kind(), "Io");
    assert!(err
        .to_string()
        .starts_with("i/o error on `no/such/bo.ycpt`: "));
}

#[test]
fn write_file_atomic_replaces_the_file_and_leaves_no_temporaries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bo.ycpt");
    fs::write(&path, b"old contents").unwrap();
    let p = golden_package();
    p.write_file_atomic(&path).unwrap();
    assert_eq!(ConceptPackage::read_file(&path).unwrap(), p);
    assert_eq!(fs::read(&path).unwrap(), p.to_bytes());
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["bo.ycpt"]);
}

#[test]
fn write_file_atomic_reports_an_unwritable_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing-dir").join("bo.ycpt");
    let err = golden_package().write_file_atomic(&path).unwrap_err();
    assert_eq!(err.kind(), "Io");
    assert!(err.to_string().contains("missing-dir"));
}

#[test]
fn from_safetensors_bytes_takes_shapes_from_the_tensors() {
    let t = ConceptTensors::from_f32(
        DType::BF16,
        3,
        5,
        vec![1.0; 5],
        vec![0.5; 15],
        vec![-2.0; 5],
    )
    .unwrap();
    let back = ConceptTensors::from_safetensors_bytes(&t.to_safetensors_bytes()).unwrap();
    assert_eq!((back.k(), back.d(), back.dtype()), (3, 5, DType::BF16));
    assert_eq!(back, t);

    // Standalone, the identifier sets dtype and d; latents [k, d'] must agree.
    let bad = corpus::body(
        &corpus::object(&[
            corpus::entry("head", "F32", &[2], 0, 8),
            corpus::entry("identifier", "F32", &[2], 8, 16),
            corpus::entry("latents", "F32", &[1, 3], 16, 28),
        ]),
        &[0u8; 28],
    );
    let err = ConceptTensors::from_safetensors_bytes(&bad).unwrap_err();
    assert_eq!(
        err.to_string(),
        "tensor `latents` has shape [1, 3]: expected [1, 2]"
    );

    let zero = corpus::body(
        &corpus::object(&[
            corpus::entry("head", "F32", &[0], 0, 0),
            corpus::entry("identifier", "F32", &[0], 0, 0),
            corpus::entry("latents", "F32", &[1, 0], 0, 0),
        ]),
        &[],
    );
    let err = ConceptTensors::from_safetensors_bytes(&zero).unwrap_err();
    assert_eq!(
        err.to_string(),
        "tensor dimension `d` is out of range: expected 1..=16384, found 0"
    );
}

#[test]
fn peek_version_reports_unsupported_majors_without_rejecting_them() {
    let mut bytes = golden_package().to_bytes();
    bytes[8..10].copy_from_slice(&7u16.to_le_bytes());
    assert_eq!(peek_version(&bytes).unwrap(), (7, 0));
    assert_eq!(
        ConceptPackage::parse(&bytes).unwrap_err().to_string(),
        "unsupported format version 7.0: expected major version 1"
    );
    assert_eq!(migrate(&bytes).unwrap_err().kind(), "UnsupportedMajor");
}

#[test]
fn provenance_numbers_are_checked() {
    let (text, _) = golden_parts();
    let nan = text.replace("learning_rate = 0.001", "learning_rate = nan");
    assert_eq!(
        Manifest::from_toml_str(&nan).unwrap_err().to_string(),
        "manifest field `provenance.learning_rate` is invalid: expected a finite number greater than 0, found NaN"
    );
    let acc = text.replace("train_accuracy = 0.975", "train_accuracy = 1.5");
    assert_eq!(
        Manifest::from_toml_str(&acc).unwrap_err().kind(),
        "InvalidField"
    );
    let epochs = text.replace("epochs = 15", "epochs = -1");
    assert_eq!(
        Manifest::from_toml_str(&epochs).unwrap_err().to_string(),
        "manifest field `provenance.epochs` is invalid: expected an integer in 0..=4294967295, found -1"
    );
}

#[test]
fn unknown_keys_are_named_by_their_path() {
    let (text, _) = golden_parts();
    let text = text.replace("target = \"<T>\"", "target = \"<T>\"\nweight = 2");
    assert_eq!(
        Manifest::from_toml_str(&text).unwrap_err().to_string(),
        "manifest field `relations[0].weight` is not defined by format version 1.0: \
         expected only the v1.0 fields, with extensions under `[ext]`"
    );
}

#[test]
fn manifests_serialize_with_serde_for_other_indexes() {
    let m = golden_package().manifest().clone();
    let json = serde_json::to_value(&m).unwrap();
    assert_eq!(json["category"], "pet");
    assert_eq!(json["dtype"], "f32");
    let back: Manifest = serde_json::from_value(json).unwrap();
    assert_eq!(back, m);
}

/// Spec §6: unknown keys (rule 8) are reported before extraction (rule 9), wherever they are;
/// extraction then stops at the first field at fault in schema order, absent or mistyped.
#[test]
fn errors_come_in_spec_order() {
    let (text, _) = golden_parts();
    let k_mistyped = text.replace("k = 4", "k = \"4\"");
    let cases = [
        (
            k_mistyped.replace("target = \"<T>\"", "target = \"<T>\"\nweight = 2"),
            "manifest field `relations[0].weight` is not defined by format version 1.0",
        ),
        (
            k_mistyped.replace("name = \"bo\"\n", ""),
            "manifest field `name` is missing",
        ),
        (
            text.replace("positives = 10", "positives = 1.5"),
            "manifest field `provenance.images.positives` has the wrong type: expected integer, found float",
        ),
        (
            text.replace("    \"<bo>'s birthday is May 3\",", "    3,"),
            "manifest field `user_facts[0]` has the wrong type: expected string, found integer",
        ),
        (
            text.replace("vocab_size = 1000", "vocab_size = -1"),
            "manifest field `base_model.vocab_size` is out of range: expected 1..=16777216, found -1",
        ),
    ];
    for (manifest, expected) in cases {
        let message = Manifest::from_toml_str(&manifest).unwrap_err().to_string();
        assert!(message.starts_with(expected), "{message}");
    }
}

/// Optional parts may be absent: no provenance, no relations, no facts, no `[ext]`
#[test]
fn optional_parts_may_be_absent() {
    let (text, _) = golden_parts();
    let cut = |s: &str, from: &str, to: &str| {
        let a = s.find(from).unwrap();
        let b = s[a..].find(to).map_or(s.len(), |b| a + b);
        format!("{}{}", &s[..a], &s[b..])
    };
    let bare = cut(&text, "\n[provenance]", "\n[ext");
    let bare = cut(&bare, "\n[ext", "\u{0}");
    let bare = cut(&bare, "user_facts = [", "\n\n[base_model]");
    let m = Manifest::from_toml_str(&bare).unwrap();
    assert!(m.provenance.is_none() && m.relations.is_empty() && m.user_facts.is_empty());
    assert!(m.ext.is_empty());
    assert_eq!(Manifest::from_toml_str(&m.to_toml_string()).unwrap(), m);
    assert!(m.to_toml_string().contains("user_facts = []\n"));
}
