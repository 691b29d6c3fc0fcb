//! The golden package and the malformed corpus, built from code
//!
//! Shared by `examples/gen_malformed.rs` (which writes the files) and the
//! tests (which check that the committed files are exactly what this code
//! builds, then parse each one). Every malformed case starts from the golden
//! file and breaks one thing; where the break is inside the body, the manifest's
//! `body_sha256` is recomputed so the intended check is the one that fires.

#![allow(dead_code)] // each includer uses a different part

use concepts_fs::sha256_hex;

use concept_format::{
    Category, ConceptPackage, ConceptTensors, DType, ImageCounts, Manifest, ModelFingerprint,
    Provenance, Relation, FORMAT_MINOR, MAGIC,
};

/// Golden dimensions: small enough to read in a hex dump
pub const GOLDEN_K: usize = 4;
/// Golden embedding width
pub const GOLDEN_D: usize = 8;

/// `identifier[i] = (i + 1) / 8`
pub fn golden_identifier() -> Vec<f32> {
    (0..GOLDEN_D).map(|i| (i as f32 + 1.0) / 8.0).collect()
}

/// `latents[r][c] = (r - c) / 4`
pub fn golden_latents() -> Vec<f32> {
    (0..GOLDEN_K * GOLDEN_D)
        .map(|i| ((i / GOLDEN_D) as f32 - (i % GOLDEN_D) as f32) / 4.0)
        .collect()
}

/// `head[i] = -i / 16`
pub fn golden_head() -> Vec<f32> {
    (0..GOLDEN_D).map(|i| -(i as f32) / 16.0).collect()
}

/// The golden manifest, `body_sha256` not yet filled in
pub fn golden_manifest() -> Manifest {
    let mut ext = toml::Table::new();
    let mut studio = toml::Table::new();
    studio.insert(
        "session".into(),
        toml::Value::String("garden-2025-05".into()),
    );
    studio.insert("favourite".into(), toml::Value::Boolean(true));
    ext.insert("example_studio".into(), toml::Value::Table(studio));
    Manifest {
        name: "bo".into(),
        identifier: "<bo>".into(),
        display_name: "Bo".into(),
        category: Category::Pet,
        k: GOLDEN_K as u32,
        d: GOLDEN_D as u32,
        dtype: DType::F32,
        base_model: ModelFingerprint {
            architecture: "toy/llava-tiny".into(),
            hidden_size: GOLDEN_D as u64,
            vocab_size: 1000,
            tokenizer_sha256: sha256_hex(b"toy tokenizer"),
            embed_sha256: sha256_hex(b"toy embeddings"),
            lm_head_sha256: sha256_hex(b"toy lm head"),
        },
        prompt_template: "llava_v1/yollava-1".into(),
        provenance: Some(Provenance {
            trainer: "concepts-train".into(),
            trainer_version: "0.1.0".into(),
            epochs: 15,
            learning_rate: 0.001,
            images: ImageCounts {
                positives: 10,
                hard_negatives: 100,
                easy_negatives: 100,
            },
            seed: 42,
            train_accuracy: 0.975,
            wall_time_secs: 123.5,
        }),
        user_facts: vec![
            "<bo>'s birthday is May 3".into(),
            "<bo> likes \"squeaky\" toys".into(),
        ],
        relations: vec![Relation {
            relation: "owner".into(),
            target: "<T>".into(),
        }],
        license: "CC-BY-4.0".into(),
        created: "2025-05-03T12:00:00Z".into(),
        body_sha256: String::new(),
        ext,
    }
}

/// The golden package: `spec/golden/bo-v1.0.ycpt`
pub fn golden_package() -> ConceptPackage {
    let tensors = ConceptTensors::from_f32(
        DType::F32,
        GOLDEN_K,
        GOLDEN_D,
        golden_identifier(),
        golden_latents(),
        golden_head(),
    )
    .expect("golden tensors are valid");
    ConceptPackage::new(golden_manifest(), tensors).expect("golden package is valid")
}

/// One malformed file and what reading it must report
pub struct Case {
    /// File name under `tests/malformed/`
    pub file: &'static str,
    /// Expected [`concept_format::FormatError::kind`]
    pub error: &'static str,
    /// A substring the error message must contain
    pub contains: &'static str,
    /// What is broken, for EXPECTED.toml
    pub why: &'static str,
    /// The file contents
    pub bytes: Vec<u8>,
}

/// Assembles a file from its parts at version `major.minor`
pub fn assemble(major: u16, minor: u16, manifest: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&major.to_le_bytes());
    out.extend_from_slice(&minor.to_le_bytes());
    out.extend_from_slice(&(manifest.len() as u32).to_le_bytes());
    out.extend_from_slice(manifest.as_bytes());
    out.extend_from_slice(body);
    out
}

/// A current-version file whose manifest `body_sha256` matches `body`
pub fn rehashed(manifest: &str, body: &[u8]) -> Vec<u8> {
    let old = golden_package().manifest().body_sha256.clone();
    let manifest = manifest.replace(&old, &sha256_hex(body));
    assemble(1, FORMAT_MINOR, &manifest, body)
}

/// A safetensors body from a literal JSON header (padded like safetensors pads) and data
pub fn body(header: &str, data: &[u8]) -> Vec<u8> {
    let mut h = header.as_bytes().to_vec();
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

/// One JSON header entry
pub fn entry(name: &str, dtype: &str, shape: &[u64], begin: u64, end: u64) -> String {
    let shape: Vec<String> = shape.iter().map(u64::to_string).collect();
    format!(
        "\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{begin},{end}]}}",
        shape.join(",")
    )
}

/// A JSON object from entries
pub fn object(entries: &[String]) -> String {
    format!("{{{}}}", entries.join(","))
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Every malformed case, in EXPECTED.toml order
pub fn cases() -> Vec<Case> {
    let golden = golden_package();
    let g = golden.to_bytes();
    let manifest = golden.manifest().to_toml_string();
    let m_end = 16 + manifest.len();
    let golden_body = g[m_end..].to_vec();
    let (k, d) = (GOLDEN_K as u64, GOLDEN_D as u64);
    // Canonical data order is head, identifier, latents.
    let head = f32_bytes(&golden_head());
    let ident = f32_bytes(&golden_identifier());
    let lat = f32_bytes(&golden_latents());
    let data = [head.clone(), ident.clone(), lat.clone()].concat();
    let (h_end, i_end, l_end) = (4 * d, 8 * d, 8 * d + 4 * k * d);
    let canonical_entries = || {
        vec![
            entry("head", "F32", &[d], 0, h_end),
            entry("identifier", "F32", &[d], h_end, i_end),
            entry("latents", "F32", &[k, d], i_end, l_end),
        ]
    };
    let with_manifest_line = |from: &str, to: &str| -> Vec<u8> {
        assert!(manifest.contains(from), "golden manifest lacks {from:?}");
        assemble(1, 0, &manifest.replacen(from, to, 1), &golden_body)
    };
    let with_body = |header: String, data: &[u8]| rehashed(&manifest, &body(&header, data));
    assert_eq!(
        body(&object(&canonical_entries()), &data),
        golden_body,
        "the corpus helpers must reproduce the canonical golden body"
    );
    let patched = |at: usize, bytes: &[u8]| -> Vec<u8> {
        let mut out = g.clone();
        out[at..at + bytes.len()].copy_from_slice(bytes);
        out
    };

    let mut cases = vec![
        // --- container -----------------------------------------------------
        Case {
            file: "empty.ycpt",
            error: "Truncated",
            contains: "magic",
            why: "zero bytes",
            bytes: Vec::new(),
        },
        Case {
            file: "truncated-in-magic.ycpt",
            error: "Truncated",
            contains: "in the magic: expected at least 8 bytes, found 5",
            why: "cut after 5 bytes",
            bytes: g[..5].to_vec(),
        },
        Case {
            file: "truncated-in-version.ycpt",
            error: "Truncated",
            contains: "in the version",
            why: "cut after 10 bytes",
            bytes: g[..10].to_vec(),
        },
        Case {
            file: "truncated-in-manifest-length.ycpt",
            error: "Truncated",
            contains: "in the manifest length",
            why: "cut after 14 bytes",
            bytes: g[..14].to_vec(),
        },
        Case {
            file: "truncated-in-manifest.ycpt",
            error: "Truncated",
            contains: "in the manifest:",
            why: "cut half-way through the manifest",
            bytes: g[..16 + manifest.len() / 2].to_vec(),
        },
        Case {
            file: "truncated-in-body.ycpt",
            error: "BodyHashMismatch",
            contains: "body sha256 mismatch",
            why: "last 10 bytes of tensor data cut; the hash check catches it first",
            bytes: g[..g.len() - 10].to_vec(),
        },
        Case {
            file: "truncated-after-manifest.ycpt",
            error: "BodyHashMismatch",
            contains: "body sha256 mismatch",
            why: "no body at all",
            bytes: g[..m_end].to_vec(),
        },
        Case {
            file: "wrong-magic.ycpt",
            error: "BadMagic",
            contains: "found GGUF",
            why: "a GGUF-like magic",
            bytes: patched(0, b"GGUF\0\0\0\0"),
        },
        Case {
            file: "bitflip-magic.ycpt",
            error: "BadMagic",
            contains: "bad magic",
            why: "bit 0 of magic byte 2 flipped",
            bytes: patched(2, &[MAGIC[2] ^ 1]),
        },
        Case {
            file: "future-major.ycpt",
            error: "UnsupportedMajor",
            contains: "version 2.0: expected major version 1",
            why: "major version 2",
            bytes: patched(8, &2u16.to_le_bytes()),
        },
        Case {
            file: "bitflip-major.ycpt",
            error: "UnsupportedMajor",
            contains: "version 257.0",
            why: "bit 0 of the major's high byte flipped",
            bytes: patched(9, &[1]),
        },
        Case {
            file: "manifest-length-oversized.ycpt",
            error: "ManifestTooLarge",
            contains: "expected at most 65536 bytes, found 1048576",
            why: "manifest length prefix 1 MiB",
            bytes: patched(12, &(1u32 << 20).to_le_bytes()),
        },
        Case {
            file: "manifest-length-past-eof.ycpt",
            error: "Truncated",
            contains: "in the manifest: expected at least 65552 bytes",
            why: "manifest length at the cap, past the end of the file",
            bytes: patched(12, &(64u32 * 1024).to_le_bytes()),
        },
        Case {
            file: "bitflip-manifest-length.ycpt",
            error: "ManifestNotUtf8",
            contains: "manifest is not valid utf-8",
            why: "manifest length +1 (bit 0 flipped): the manifest swallows the body's first byte, not utf-8 on its own",
            bytes: patched(12, &[g[12] ^ 1]),
        },
        // --- manifest --------------------------------------------------------
        Case {
            file: "manifest-not-utf8.ycpt",
            error: "ManifestNotUtf8",
            contains: "manifest offset 8",
            why: "byte 0xff inside the name string",
            bytes: patched(16 + 8, &[0xff]),
        },
        Case {
            file: "bad-toml.ycpt",
            error: "ManifestSyntax",
            contains: "manifest is not valid toml",
            why: "`name = bo` (unquoted string)",
            bytes: with_manifest_line("name = \"bo\"", "name = bo"),
        },
        Case {
            file: "missing-field-created.ycpt",
            error: "MissingField",
            contains: "`created` is missing",
            why: "the `created` line renamed to a comment",
            bytes: with_manifest_line("created = ", "#reated = "),
        },
        Case {
            file: "missing-field-base-model-vocab.ycpt",
            error: "MissingField",
            contains: "`base_model.vocab_size` is missing",
            why: "the `vocab_size` line commented out",
            bytes: with_manifest_line("vocab_size = ", "#ocab_size = "),
        },
        Case {
            file: "wrong-type-k.ycpt",
            error: "FieldType",
            contains: "`k` has the wrong type: expected integer, found string",
            why: "`k = \"4\"`",
            bytes: with_manifest_line("\nk = 4\n", "\nk = \"4\"\n"),
        },
        Case {
            file: "unknown-field.ycpt",
            error: "UnknownField",
            contains: "`colour` is not defined by format version 1.0",
            why: "a top-level key outside `[ext]` in a v1.0 file",
            bytes: with_manifest_line("\nk = 4\n", "\nk = 4\ncolour = \"brown\"\n"),
        },
        Case {
            file: "bad-category.ycpt",
            error: "UnknownCategory",
            contains: "found `dog`",
            why: "`category = \"dog\"`",
            bytes: with_manifest_line("category = \"pet\"", "category = \"dog\""),
        },
        Case {
            file: "bad-name.ycpt",
            error: "InvalidName",
            contains: "found `Bo`",
            why: "uppercase name",
            bytes: with_manifest_line("name = \"bo\"", "name = \"Bo\""),
        },
        Case {
            file: "bad-created.ycpt",
            error: "InvalidTimestamp",
            contains: "expected day between 01 and 28",
            why: "`created` on 2025-02-30",
            bytes: with_manifest_line("2025-05-03T12:00:00Z", "2025-02-30T12:00:00Z"),
        },
        Case {
            file: "bad-manifest-dtype.ycpt",
            error: "UnknownDType",
            contains: "found `f64`",
            why: "`dtype = \"f64\"`",
            bytes: with_manifest_line("dtype = \"f32\"", "dtype = \"f64\""),
        },
        Case {
            file: "k-zero.ycpt",
            error: "DimensionOutOfRange",
            contains: "`k` is out of range: expected 1..=256, found 0",
            why: "`k = 0`",
            bytes: with_manifest_line("\nk = 4\n", "\nk = 0\n"),
        },
        Case {
            file: "d-negative.ycpt",
            error: "DimensionOutOfRange",
            contains: "`d` is out of range: expected 1..=16384, found -8",
            why: "`d = -8`",
            bytes: with_manifest_line("\nd = 8\n", "\nd = -8\n"),
        },
        Case {
            file: "hidden-size-mismatch.ycpt",
            error: "HiddenSizeMismatch",
            contains: "expected 16, found 8",
            why: "`base_model.hidden_size = 16` with `d = 8`",
            bytes: with_manifest_line("hidden_size = 8", "hidden_size = 16"),
        },
        Case {
            file: "bad-tokenizer-hash.ycpt",
            error: "InvalidField",
            contains: "`base_model.tokenizer_sha256`",
            why: "tokenizer hash in uppercase hex",
            bytes: {
                let h = golden.manifest().base_model.tokenizer_sha256.clone();
                with_manifest_line(&h, &h.to_uppercase())
            },
        },
        Case {
            file: "bad-relation-target.ycpt",
            error: "InvalidField",
            contains: "`relations[0].target`",
            why: "relation target without angle brackets",
            bytes: with_manifest_line("target = \"<T>\"", "target = \"T  \""),
        },
        // --- body: hash ------------------------------------------------------
        Case {
            file: "body-hash-mismatch.ycpt",
            error: "BodyHashMismatch",
            contains: "manifest `body_sha256`",
            why: "one bit flipped in the last tensor value",
            bytes: {
                let mut b = g.clone();
                let last = b.len() - 1;
                b[last] ^= 0x01;
                b
            },
        },
        Case {
            file: "bitflip-body-header.ycpt",
            error: "BodyHashMismatch",
            contains: "body sha256 mismatch",
            why: "one bit flipped inside the safetensors JSON header",
            bytes: {
                let mut b = g.clone();
                b[m_end + 8 + 3] ^= 0x20;
                b
            },
        },
        // --- body: safetensors header ---------------------------------------
        Case {
            file: "body-header-too-large.ycpt",
            error: "BodyHeaderTooLarge",
            contains: "expected at most 4096 bytes, found 1048576",
            why: "safetensors header length 1 MiB (hash recomputed)",
            bytes: {
                let mut b = golden_body.clone();
                b[..8].copy_from_slice(&(1u64 << 20).to_le_bytes());
                rehashed(&manifest, &b)
            },
        },
        Case {
            file: "body-header-past-end.ycpt",
            error: "Truncated",
            contains: "in the safetensors header",
            why: "safetensors header length 4096, body shorter (hash recomputed)",
            bytes: {
                let mut b = golden_body.clone();
                b[..8].copy_from_slice(&4096u64.to_le_bytes());
                rehashed(&manifest, &b)
            },
        },
        Case {
            file: "body-too-short.ycpt",
            error: "Truncated",
            contains: "in the safetensors header length",
            why: "a 5-byte body (hash recomputed)",
            bytes: rehashed(&manifest, &[8, 0, 0, 0, 0]),
        },
        Case {
            file: "body-header-bad-json.ycpt",
            error: "BodyHeaderInvalid",
            contains: "json error",
            why: "JSON header cut short",
            bytes: with_body("{\"head\":{\"dtype\":\"F32\"".into(), &data),
        },
        Case {
            file: "body-header-bad-entry.ycpt",
            error: "BodyHeaderInvalid",
            contains: "tensor `head`",
            why: "`head` entry with an extra `offset` key",
            bytes: with_body(
                object(&[
                    "\"head\":{\"dtype\":\"F32\",\"shape\":[8],\"data_offsets\":[0,32],\"offset\":0}"
                        .into(),
                    entry("identifier", "F32", &[d], h_end, i_end),
                    entry("latents", "F32", &[k, d], i_end, l_end),
                ]),
                &data,
            ),
        },
        Case {
            file: "body-metadata.ycpt",
            error: "BodyMetadata",
            contains: "__metadata__",
            why: "a `__metadata__` entry in the safetensors header",
            bytes: {
                let mut e = vec!["\"__metadata__\":{\"format\":\"pt\"}".to_owned()];
                e.extend(canonical_entries());
                with_body(object(&e), &data)
            },
        },
        Case {
            file: "missing-tensor-head.ycpt",
            error: "MissingTensor",
            contains: "tensor `head` is missing",
            why: "no `head` entry; identifier and latents start at 0",
            bytes: with_body(
                object(&[
                    entry("identifier", "F32", &[d], 0, 4 * d),
                    entry("latents", "F32", &[k, d], 4 * d, 4 * d + 4 * k * d),
                ]),
                &[ident.clone(), lat.clone()].concat(),
            ),
        },
        Case {
            file: "extra-tensor.ycpt",
            error: "UnexpectedTensor",
            contains: "unexpected tensor `bias`",
            why: "a fourth tensor `bias`",
            bytes: {
                let mut e = canonical_entries();
                e.insert(0, entry("bias", "F32", &[1], l_end, l_end + 4));
                with_body(object(&e), &[data.clone(), vec![0; 4]].concat())
            },
        },
        Case {
            file: "duplicate-tensor.ycpt",
            error: "DuplicateTensor",
            contains: "tensor `head` appears more than once",
            why: "`head` listed twice",
            bytes: {
                let mut e = canonical_entries();
                e.push(entry("head", "F32", &[d], 0, h_end));
                with_body(object(&e), &data)
            },
        },
        Case {
            file: "dtype-disagrees-with-manifest.ycpt",
            error: "TensorDtype",
            contains: "tensor `identifier` has dtype `F16`: expected F32",
            why: "body stored as F16 while the manifest says f32",
            bytes: {
                let t = ConceptTensors::from_f32(
                    DType::F16,
                    GOLDEN_K,
                    GOLDEN_D,
                    golden_identifier(),
                    golden_latents(),
                    golden_head(),
                )
                .expect("valid f16 tensors");
                rehashed(&manifest, &t.to_safetensors_bytes())
            },
        },
        Case {
            file: "unsupported-tensor-dtype.ycpt",
            error: "TensorDtype",
            contains: "tensor `latents` has dtype `F64`",
            why: "latents declared F64",
            bytes: {
                let mut e = canonical_entries();
                e[2] = entry("latents", "F64", &[k, d], i_end, l_end);
                with_body(object(&e), &data)
            },
        },
        Case {
            file: "wrong-rank-latents.ycpt",
            error: "TensorRank",
            contains: "tensor `latents` has rank 1: expected rank 2",
            why: "latents flattened to [32]",
            bytes: {
                let mut e = canonical_entries();
                e[2] = entry("latents", "F32", &[k * d], i_end, l_end);
                with_body(object(&e), &data)
            },
        },
        Case {
            file: "wrong-rank-identifier.ycpt",
            error: "TensorRank",
            contains: "tensor `identifier` has rank 2",
            why: "identifier as [1, 8]",
            bytes: {
                let mut e = canonical_entries();
                e[1] = entry("identifier", "F32", &[1, d], h_end, i_end);
                with_body(object(&e), &data)
            },
        },
        Case {
            file: "shape-disagrees-with-k.ycpt",
            error: "TensorShape",
            contains: "tensor `latents` has shape [3, 8]: expected [4, 8]",
            why: "latents [3, 8] while the manifest says k = 4",
            bytes: {
                let mut e = canonical_entries();
                e[2] = entry("latents", "F32", &[k - 1, d], i_end, l_end - 4 * d);
                with_body(object(&e), &data[..(l_end - 4 * d) as usize])
            },
        },
        Case {
            file: "shape-disagrees-with-d.ycpt",
            error: "TensorShape",
            contains: "tensor `head` has shape [7]: expected [8]",
            why: "head [7] while the manifest says d = 8",
            bytes: {
                let mut e = canonical_entries();
                e[0] = entry("head", "F32", &[d - 1], 0, h_end);
                with_body(object(&e), &data)
            },
        },
        // --- body: data section ----------------------------------------------
        Case {
            file: "offsets-reversed.ycpt",
            error: "TensorOffsets",
            contains: "data_offsets [32, 0]",
            why: "head data_offsets [32, 0]",
            bytes: {
                let mut e = canonical_entries();
                e[0] = entry("head", "F32", &[d], h_end, 0);
                with_body(object(&e), &data)
            },
        },
        Case {
            file: "byte-length-mismatch.ycpt",
            error: "TensorByteLength",
            contains: "tensor `head` spans 16 bytes: expected 32",
            why: "head spans 16 bytes but [8] F32 needs 32",
            bytes: {
                let mut e = canonical_entries();
                e[0] = entry("head", "F32", &[d], 0, 16);
                with_body(object(&e), &data)
            },
        },
        Case {
            file: "offsets-out-of-bounds.ycpt",
            error: "TensorOutOfBounds",
            contains: "tensor `latents` ends at data byte 4288: expected at most 192",
            why: "latents shifted 4 KiB past the data section",
            bytes: {
                let mut e = canonical_entries();
                e[2] = entry("latents", "F32", &[k, d], i_end + 4096, l_end + 4096);
                with_body(object(&e), &data)
            },
        },
        Case {
            file: "offsets-huge.ycpt",
            error: "TensorOutOfBounds",
            contains: "ends at data byte 18446744073709551615",
            why: "latents ending at u64::MAX (checked arithmetic)",
            bytes: {
                let mut e = canonical_entries();
                let span = 4 * k * d;
                e[2] = entry("latents", "F32", &[k, d], u64::MAX - span, u64::MAX);
                with_body(object(&e), &data)
            },
        },
        Case {
            file: "offsets-overlap.ycpt",
            error: "TensorOverlap",
            contains: "tensors `head` and `identifier` overlap: expected `identifier` to begin at 32, found 16",
            why: "identifier starts half-way into head",
            bytes: {
                let mut e = canonical_entries();
                e[1] = entry("identifier", "F32", &[d], 16, 16 + 4 * d);
                e[2] = entry("latents", "F32", &[k, d], 16 + 4 * d, l_end - 16);
                with_body(object(&e), &data[..(l_end - 16) as usize])
            },
        },
        Case {
            file: "offsets-gap.ycpt",
            error: "TensorGap",
            contains: "before tensor `latents`: expected it to begin at 64, found 72",
            why: "8 unused bytes between identifier and latents",
            bytes: {
                let mut e = canonical_entries();
                e[2] = entry("latents", "F32", &[k, d], i_end + 8, l_end + 8);
                let padded = [head.clone(), ident.clone(), vec![0; 8], lat.clone()].concat();
                with_body(object(&e), &padded)
            },
        },
        Case {
            file: "offsets-gap-at-start.ycpt",
            error: "TensorGap",
            contains: "before tensor `head`: expected it to begin at 0, found 4",
            why: "4 unused bytes before the first tensor",
            bytes: {
                let e = vec![
                    entry("head", "F32", &[d], 4, 4 + h_end),
                    entry("identifier", "F32", &[d], 4 + h_end, 4 + i_end),
                    entry("latents", "F32", &[k, d], 4 + i_end, 4 + l_end),
                ];
                with_body(object(&e), &[vec![0; 4], data.clone()].concat())
            },
        },
        Case {
            file: "trailing-bytes.ycpt",
            error: "TrailingBytes",
            contains: "expected 192 bytes, found 200",
            why: "8 bytes after the last tensor",
            bytes: with_body(object(&canonical_entries()), &[data.clone(), vec![0; 8]].concat()),
        },
        Case {
            file: "nan-in-latents.ycpt",
            error: "NonFinite",
            contains: "tensor `latents` has a non-finite value at element 5",
            why: "a quiet NaN in latents[0][5]",
            bytes: {
                let mut dd = data.clone();
                let at = (i_end + 5 * 4) as usize;
                dd[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
                with_body(object(&canonical_entries()), &dd)
            },
        },
        Case {
            file: "inf-in-head.ycpt",
            error: "NonFinite",
            contains: "tensor `head` has a non-finite value at element 7",
            why: "+inf in head[7]",
            bytes: {
                let mut dd = data.clone();
                let at = 7 * 4;
                dd[at..at + 4].copy_from_slice(&f32::INFINITY.to_le_bytes());
                with_body(object(&canonical_entries()), &dd)
            },
        },
        Case {
            file: "non-canonical-key-order.ycpt",
            error: "NonCanonicalBody",
            contains: "body is not canonical",
            why: "valid safetensors with the header keys in another order",
            bytes: {
                let mut e = canonical_entries();
                e.rotate_left(1);
                with_body(object(&e), &data)
            },
        },
    ];
    // Keep the corpus honest: every file distinct, every name unique.
    let mut seen = std::collections::HashSet::new();
    for c in &cases {
        assert!(seen.insert(c.file), "duplicate corpus file name {}", c.file);
    }
    cases.sort_by_key(|c| c.file);
    cases
}

/// EXPECTED.toml for `cases`
pub fn expected_toml(cases: &[Case]) -> String {
    let mut out = String::from(
        "# Generated by `cargo run -p concept-format --example gen_malformed`; do not edit.\n\
         # Each file must fail ConceptPackage::read_file with FormatError::kind() == error\n\
         # and a message containing `contains`.\n",
    );
    for c in cases {
        out.push_str("\n[[case]]\n");
        for (key, value) in [
            ("file", c.file),
            ("error", c.error),
            ("contains", c.contains),
            ("why", c.why),
        ] {
            out.push_str(&format!("{key} = {}\n", toml::Value::from(value)));
        }
    }
    out
}
