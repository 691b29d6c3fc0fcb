//! The golden file `spec/golden/bo-v1.0.ycpt`: parses, has the documented
//! contents, and rewrites to identical bytes

#[path = "support/corpus.rs"]
mod corpus;

use std::fs;
use std::path::{Path, PathBuf};

use concept_format::{migrate, peek_version, Category, ConceptPackage, DType};
use concepts_fs::sha256_hex;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/golden")
}

fn golden_bytes() -> Vec<u8> {
    fs::read(golden_dir().join("bo-v1.0.ycpt")).expect("spec/golden/bo-v1.0.ycpt")
}

#[test]
fn golden_rewrites_to_identical_bytes() {
    let bytes = golden_bytes();
    let package = ConceptPackage::parse(&bytes).expect("golden parses");
    assert!(
        package.to_bytes() == bytes,
        "rewrite differs from the golden file"
    );
    assert_eq!(migrate(&bytes).expect("migrate"), bytes);
}

#[test]
fn golden_is_what_the_generator_builds() {
    let package = ConceptPackage::read_file(&golden_dir().join("bo-v1.0.ycpt")).expect("golden");
    assert_eq!(package, corpus::golden_package());
}

#[test]
fn golden_has_the_documented_contents() {
    let bytes = golden_bytes();
    assert_eq!(peek_version(&bytes).expect("version"), (1, 0));
    // Pinned in spec/ycpt-v1.md: any change to the writer shows up here.
    assert_eq!(bytes.len(), 1444);
    assert_eq!(
        sha256_hex(&bytes),
        "906c7728b45e0a6d97ebcfb1c829df9c23fe38005d9b8a1ccef9d44c316b9f5d"
    );
    let package = ConceptPackage::parse(&bytes).expect("golden parses");
    let m = package.manifest();
    assert_eq!((m.name.as_str(), m.identifier.as_str()), ("bo", "<bo>"));
    assert_eq!(
        (m.category, m.dtype, m.k, m.d),
        (Category::Pet, DType::F32, 4, 8)
    );
    assert_eq!(
        m.body_sha256,
        "eeef06d94cf4f1003d1dace456a7bfbe92990522b2ce9f329dd72e133bb34898"
    );
    assert_eq!(
        m.ext["example_studio"]["session"].as_str(),
        Some("garden-2025-05")
    );

    let t = package.tensors();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(t.identifier()), bits(&corpus::golden_identifier()));
    assert_eq!(bits(t.latents()), bits(&corpus::golden_latents()));
    assert_eq!(bits(t.head()), bits(&corpus::golden_head()));
    assert_eq!(
        t.head()[0].to_bits(),
        (-0.0f32).to_bits(),
        "head[0] is -0.0"
    );
    assert_eq!(t.latent_row(3)[1], 0.5);
}

#[test]
fn golden_manifest_file_is_the_embedded_manifest() {
    let text = fs::read_to_string(golden_dir().join("bo-v1.0.manifest.toml")).expect("manifest");
    let bytes = golden_bytes();
    let len = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize;
    assert_eq!(&bytes[16..16 + len], text.as_bytes());
}

#[test]
fn golden_body_is_plain_safetensors() {
    let bytes = golden_bytes();
    let package = ConceptPackage::parse(&bytes).expect("golden parses");
    let body = &bytes[bytes.len() - package.tensors().safetensors_bytes().len()..];
    let st = safetensors::SafeTensors::deserialize(body).expect("safetensors reads the body");
    let mut names = st.names();
    names.sort();
    assert_eq!(names, ["head", "identifier", "latents"]);
    assert_eq!(st.tensor("latents").expect("latents").shape(), [4, 8]);
}
