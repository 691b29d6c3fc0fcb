//! Property tests: random valid packages round-trip bit-exactly; random
//! mutations of valid files never panic the reader

#[path = "support/corpus.rs"]
mod corpus;

use concept_format::{
    Category, ConceptPackage, ConceptTensors, DType, ImageCounts, Manifest, ModelFingerprint,
    Provenance, Relation, MAX_MANIFEST_LEN,
};
use proptest::prelude::*;

fn dtype() -> impl Strategy<Value = DType> {
    prop::sample::select(DType::ALL.to_vec())
}

/// Finite values that stay finite in `dtype`, with the awkward ones mixed in
fn value(dtype: DType) -> BoxedStrategy<f32> {
    let limit = match dtype {
        DType::F32 => f32::MAX,
        DType::F16 => 65000.0,
        DType::BF16 => 3.0e38,
    };
    prop_oneof![
        4 => -limit..limit,
        1 => prop::sample::select(vec![0.0, -0.0, 1e-40, -1e-45, 6.0e-8, 1.0, -1.0]),
        1 => any::<f32>().prop_filter("finite in dtype", move |x| x.is_finite() && x.abs() < limit),
    ]
    .boxed()
}

fn tensors() -> impl Strategy<Value = ConceptTensors> {
    (dtype(), 1usize..=5, 1usize..=9).prop_flat_map(|(dtype, k, d)| {
        (
            prop::collection::vec(value(dtype), d),
            prop::collection::vec(value(dtype), k * d),
            prop::collection::vec(value(dtype), d),
        )
            .prop_map(move |(i, l, h)| {
                ConceptTensors::from_f32(dtype, k, d, i, l, h).expect("generated values are valid")
            })
    })
}

fn text(max: usize) -> impl Strategy<Value = String> {
    // Any characters but control characters, including quotes, backslashes and emoji.
    proptest::string::string_regex(&format!("[^\\p{{Cc}}]{{1,{max}}}")).expect("regex")
}

fn sha() -> impl Strategy<Value = String> {
    "[0-9a-f]{64}"
}

fn identifier() -> impl Strategy<Value = String> {
    "<[A-Za-z0-9_-]{1,64}>"
}

fn finite(lo: f64, hi: f64) -> impl Strategy<Value = f64> {
    prop_oneof![lo..=hi, Just(lo), Just(hi)]
}

fn provenance() -> impl Strategy<Value = Provenance> {
    (
        (text(40), text(20), any::<u32>()),
        (
            finite(1e-12, 10.0),
            any::<(u32, u32, u32)>(),
            0..=i64::MAX as u64,
        ),
        (finite(0.0, 1.0), finite(0.0, 1e9)),
    )
        .prop_map(
            |((trainer, trainer_version, epochs), (lr, (p, h, e), seed), (acc, wall))| Provenance {
                trainer,
                trainer_version,
                epochs,
                learning_rate: lr,
                images: ImageCounts {
                    positives: p,
                    hard_negatives: h,
                    easy_negatives: e,
                },
                seed,
                train_accuracy: acc,
                wall_time_secs: wall,
            },
        )
}

fn ext() -> impl Strategy<Value = toml::Table> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(toml::Value::Integer),
        (-1e300f64..1e300).prop_map(toml::Value::Float),
        any::<bool>().prop_map(toml::Value::Boolean),
        text(20).prop_map(toml::Value::String),
    ];
    let value = leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(toml::Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..3)
                .prop_map(|m| toml::Value::Table(m.into_iter().collect())),
        ]
    });
    prop::collection::btree_map("[a-z_-]{1,10}", value, 0..3).prop_map(|m| m.into_iter().collect())
}

fn date_time() -> impl Strategy<Value = String> {
    (
        1970u32..2100,
        1u32..=12,
        1u32..=28,
        0u32..24,
        0u32..60,
        0u32..=60,
        prop::option::of(1u32..=999_999),
        prop::option::of((prop::bool::ANY, 0u32..24, 0u32..60)),
    )
        .prop_map(|(y, mo, d, h, mi, s, frac, offset)| {
            let frac = frac.map(|f| format!(".{f}")).unwrap_or_default();
            let offset = match offset {
                None => "Z".to_owned(),
                Some((plus, oh, om)) => format!("{}{oh:02}:{om:02}", if plus { '+' } else { '-' }),
            };
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}{offset}")
        })
}

fn package() -> impl Strategy<Value = ConceptPackage> {
    (
        tensors(),
        ("[a-z0-9_-]{1,64}", identifier(), text(60)),
        (
            prop::sample::select(Category::ALL.to_vec()),
            "[A-Za-z0-9._/-]{1,60}",
            1u64..=1 << 24,
        ),
        (sha(), sha(), sha(), "[A-Za-z0-9._/-]{1,40}"),
        prop::option::of(provenance()),
        prop::collection::vec(text(100), 0..4),
        prop::collection::vec(("[a-z0-9_-]{1,20}", identifier()), 0..3),
        (text(30), date_time(), ext()),
    )
        .prop_map(
            |(
                t,
                (name, identifier, display_name),
                (category, architecture, vocab_size),
                (ts, es, ls, prompt_template),
                provenance,
                user_facts,
                relations,
                (license, created, ext),
            )| {
                let manifest = Manifest {
                    name,
                    identifier,
                    display_name,
                    category,
                    k: t.k() as u32,
                    d: t.d() as u32,
                    dtype: t.dtype(),
                    base_model: ModelFingerprint {
                        architecture,
                        hidden_size: t.d() as u64,
                        vocab_size,
                        tokenizer_sha256: ts,
                        embed_sha256: es,
                        lm_head_sha256: ls,
                    },
                    prompt_template,
                    provenance,
                    user_facts,
                    relations: relations
                        .into_iter()
                        .map(|(relation, target)| Relation { relation, target })
                        .collect(),
                    license,
                    created,
                    body_sha256: String::new(),
                    ext,
                };
                ConceptPackage::new(manifest, t).expect("generated package is valid")
            },
        )
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// One way to break a valid file
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    /// Overwrite 4 or 8 bytes with a little-endian length-like number
    SetLength(usize, u64, bool),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        (any::<usize>(), 1usize..32).prop_map(|(i, n)| Mutation::Remove(i, n)),
        (
            any::<usize>(),
            prop_oneof![
                0u64..4096,
                Just(u64::MAX),
                Just(u32::MAX as u64),
                any::<u64>()
            ],
            any::<bool>()
        )
            .prop_map(|(i, n, wide)| Mutation::SetLength(i, n, wide)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let at = |i: usize, len: usize| i % len;
    match m {
        Mutation::FlipBit(i, b) => {
            let i = at(*i, bytes.len());
            bytes[i] ^= 1 << b;
        }
        Mutation::SetByte(i, v) => {
            let i = at(*i, bytes.len());
            bytes[i] = *v;
        }
        Mutation::Truncate(n) => bytes.truncate(at(*n, bytes.len())),
        Mutation::Insert(i, v) => {
            let i = at(*i, bytes.len() + 1);
            bytes.splice(i..i, v.iter().copied());
        }
        Mutation::Remove(i, n) => {
            let i = at(*i, bytes.len());
            let end = (i + n).min(bytes.len());
            bytes.drain(i..end);
        }
        Mutation::SetLength(i, n, wide) => {
            let le = n.to_le_bytes();
            let width = if *wide { 8 } else { 4 };
            if bytes.len() >= width {
                let i = at(*i, bytes.len() - width + 1);
                bytes[i..i + width].copy_from_slice(&le[..width]);
            }
        }
    }
}

/// Mutated input is either rejected or a package that itself round-trips
fn never_panics(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(p) = ConceptPackage::parse(bytes) {
        let again =
            ConceptPackage::parse(&p.to_bytes()).expect("a parsed package rewrites validly");
        prop_assert_eq!(again, p);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn valid_packages_round_trip_bit_exactly(p in package()) {
        let bytes = p.to_bytes();
        let back = ConceptPackage::parse(&bytes).expect("written package parses");
        prop_assert_eq!(bits(back.tensors().identifier()), bits(p.tensors().identifier()));
        prop_assert_eq!(bits(back.tensors().latents()), bits(p.tensors().latents()));
        prop_assert_eq!(bits(back.tensors().head()), bits(p.tensors().head()));
        prop_assert_eq!(back.to_bytes(), bytes);
        prop_assert_eq!(&back, &p);
        let text = p.manifest().to_toml_string();
        prop_assert!(text.len() <= MAX_MANIFEST_LEN as usize);
        prop_assert_eq!(&Manifest::from_toml_str(&text).expect("manifest parses"), p.manifest());
    }

    #[test]
    fn tensors_round_trip_through_safetensors(t in tensors()) {
        let back = ConceptTensors::from_safetensors_bytes(&t.to_safetensors_bytes()).expect("parses");
        prop_assert_eq!(back.to_safetensors_bytes(), t.to_safetensors_bytes());
        prop_assert_eq!(bits(back.latents()), bits(t.latents()));
        for i in 0..t.k() {
            prop_assert_eq!(bits(back.latent_row(i)), bits(&t.latents()[i * t.d()..(i + 1) * t.d()]));
        }
    }

    #[test]
    fn mutated_packages_never_panic(
        p in package(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let mut bytes = p.to_bytes();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        never_panics(&bytes)?;
    }

    #[test]
    fn mutated_golden_and_corpus_files_never_panic(
        which in 0usize..64,
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let cases = corpus::cases();
        let mut bytes = match cases.get(which) {
            Some(c) => c.bytes.clone(),
            None => corpus::golden_package().to_bytes(),
        };
        for m in &mutations {
            apply(&mut bytes, m);
        }
        never_panics(&bytes)?;
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_preamble_never_panic(
        minor in any::<u16>(),
        rest in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut bytes = concept_format::MAGIC.to_vec();
        bytes.extend_from_slice(&1u16.to_le_bytes());
        bytes.extend_from_slice(&minor.to_le_bytes());
        bytes.extend_from_slice(&rest);
        never_panics(&bytes)?;
        let _ = ConceptTensors::from_safetensors_bytes(&rest);
    }

    #[test]
    fn edited_manifest_text_never_panics(at in any::<usize>(), insert in "\\PC{0,40}") {
        let mut text = corpus::golden_package().manifest().to_toml_string();
        let mut at = at % (text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.insert_str(at, &insert);
        if let Ok(m) = Manifest::from_toml_str(&text) {
            prop_assert_eq!(Manifest::from_toml_str(&m.to_toml_string()).expect("rewrite parses"), m);
        }
    }
}
