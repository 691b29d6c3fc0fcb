//! The malformed corpus: every file in `tests/malformed/` must fail with the
//! error class and message listed in `tests/malformed/EXPECTED.toml`

#[path = "support/corpus.rs"]
mod corpus;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use concept_format::ConceptPackage;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/malformed")
}

struct Expected {
    file: String,
    error: String,
    contains: String,
}

fn expected() -> Vec<Expected> {
    let text = fs::read_to_string(corpus_dir().join("EXPECTED.toml")).expect("EXPECTED.toml");
    let table: toml::Table = text.parse().expect("EXPECTED.toml is valid toml");
    let cases = table["case"].as_array().expect("[[case]] entries");
    cases
        .iter()
        .map(|c| {
            let field = |k: &str| c[k].as_str().expect("string field").to_owned();
            Expected {
                file: field("file"),
                error: field("error"),
                contains: field("contains"),
            }
        })
        .collect()
}

/// The one check: reading `file` fails with class `error` and a message containing `contains`
fn check(case: &Expected) -> Result<(), String> {
    match ConceptPackage::read_file(&corpus_dir().join(&case.file)) {
        Ok(_) => Err(format!("{}: parsed, expected {}", case.file, case.error)),
        Err(e) if e.kind() != case.error => Err(format!(
            "{}: expected {}, found {} ({e})",
            case.file,
            case.error,
            e.kind()
        )),
        Err(e) if !e.to_string().contains(&case.contains) => Err(format!(
            "{}: message {:?} lacks {:?}",
            case.file,
            e.to_string(),
            case.contains
        )),
        Err(_) => Ok(()),
    }
}

#[test]
fn every_malformed_file_fails_with_its_expected_error() {
    let cases = expected();
    assert!(cases.len() >= 25, "corpus has only {} files", cases.len());
    let failures: Vec<String> = cases.iter().filter_map(|c| check(c).err()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn expected_toml_lists_exactly_the_files_in_the_corpus() {
    let listed: BTreeSet<String> = expected().into_iter().map(|c| c.file).collect();
    let on_disk: BTreeSet<String> = fs::read_dir(corpus_dir())
        .expect("corpus dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n != "EXPECTED.toml")
        .collect();
    assert_eq!(listed, on_disk);
}

#[test]
fn corpus_files_are_distinct_and_cover_every_body_error_class() {
    let cases = corpus::cases();
    let contents: BTreeSet<&[u8]> = cases.iter().map(|c| c.bytes.as_slice()).collect();
    assert_eq!(
        contents.len(),
        cases.len(),
        "two corpus files have equal bytes"
    );
    let classes: BTreeSet<&str> = cases.iter().map(|c| c.error).collect();
    for class in [
        "Truncated",
        "BadMagic",
        "UnsupportedMajor",
        "ManifestTooLarge",
        "ManifestNotUtf8",
        "ManifestSyntax",
        "MissingField",
        "FieldType",
        "UnknownField",
        "InvalidName",
        "UnknownCategory",
        "UnknownDType",
        "InvalidTimestamp",
        "DimensionOutOfRange",
        "HiddenSizeMismatch",
        "InvalidField",
        "BodyHashMismatch",
        "BodyHeaderTooLarge",
        "BodyHeaderInvalid",
        "BodyMetadata",
        "DuplicateTensor",
        "UnexpectedTensor",
        "MissingTensor",
        "TensorDtype",
        "TensorRank",
        "TensorShape",
        "TensorOffsets",
        "TensorByteLength",
        "TensorOutOfBounds",
        "TensorOverlap",
        "TensorGap",
        "TrailingBytes",
        "NonFinite",
        "NonCanonicalBody",
    ] {
        assert!(classes.contains(class), "no corpus file for {class}");
    }
}

#[test]
fn committed_corpus_matches_the_generator() {
    let cases = corpus::cases();
    for case in &cases {
        let on_disk = fs::read(corpus_dir().join(case.file)).unwrap_or_default();
        assert!(
            on_disk == case.bytes,
            "tests/malformed/{} is stale: run `cargo run -p concept-format --example gen_malformed`",
            case.file
        );
    }
    let on_disk = fs::read_to_string(corpus_dir().join("EXPECTED.toml")).expect("EXPECTED.toml");
    assert_eq!(
        on_disk,
        corpus::expected_toml(&cases),
        "EXPECTED.toml is stale"
    );
}
