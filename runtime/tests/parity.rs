//! Parity with transformers on the committed LLaVA-1.5-shaped fixture
//! (`tests/fixtures/parity`, made by `tools/parity/make_fixture.py`).
//!
//! Each test compares one stage against tensors transformers computed: image preprocessing
//! (PIL backend), tokenization around concept markers, vision features, decoder logits,
//! greedy generation, and the personalised (concept) forward.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use concepts_runtime::generate::{GenerateConfig, Sampling};
use concepts_runtime::preprocess::{
    preprocess, preprocess_file, PixelValues, PreprocessConfig, OPENAI_CLIP_STD,
};
use concepts_runtime::prompt::{load_tokenizer, ConceptMarkers, Conversation, MarkerId, TextCodec};
use concepts_runtime::session::{Engine, PromptInput};
use concepts_runtime::testing::max_abs_diff;
use concepts_runtime::{ConceptWeights, Kernels};
use image::RgbImage;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity")
}

fn reference() -> (Value, HashMap<String, Tensor>) {
    let dir = fixture();
    let json = std::fs::read_to_string(dir.join("reference.json")).expect("reference.json");
    let tensors = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
        .expect("reference.safetensors");
    (
        serde_json::from_str(&json).expect("reference json"),
        tensors,
    )
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| u32::try_from(x.as_u64().expect("id")).expect("u32 id"))
        .collect()
}

/// Compares `actual` with the reference tensor `name` and prints the difference.
fn check_close(name: &str, actual: &Tensor, reference: &HashMap<String, Tensor>, tol: f64) {
    let expected = reference
        .get(name)
        .unwrap_or_else(|| panic!("no reference `{name}`"));
    let diff = max_abs_diff(actual, expected);
    println!("{name}: max abs diff {diff:e} (tolerance {tol:e})");
    assert!(diff <= tol, "{name}: max abs diff {diff} > {tol}");
}

fn concept_markers(reference: &Value) -> (ConceptMarkers, Vec<MarkerId>) {
    let identifier = reference["concept"]["identifier"]
        .as_str()
        .expect("identifier");
    let k = reference["concept"]["k"].as_u64().expect("k") as usize;
    let markers = ConceptMarkers::new(identifier, k).expect("markers");
    let base = reference["model_vocab_size"].as_u64().expect("vocab") as u32;
    let ids = markers
        .all()
        .zip(base..)
        .map(|(m, id)| MarkerId {
            marker: m.to_string(),
            id,
        })
        .collect();
    (markers, ids)
}

fn pixels(px: &PixelValues) -> Tensor {
    px.to_tensor(&Device::Cpu)
        .expect("tensor")
        .squeeze(0)
        .expect("squeeze")
}

fn image_path(json: &Value, key: &str) -> PathBuf {
    fixture().join(json["images"][key].as_str().expect("image path"))
}

#[test]
fn preprocessing_png_file_matches_clip_image_processor() {
    let (json, tensors) = reference();
    let config = PreprocessConfig::from_model_dir(&fixture().join("model"), 336).expect("config");
    assert_eq!(config, PreprocessConfig::llava_1_5());
    let px = preprocess_file(&image_path(&json, "logo"), &config).expect("preprocess");
    check_close("pixel_values.logo", &pixels(&px), &tensors, 1e-5);
}

/// On the pixels libjpeg-turbo decoded, resize, crop, rescale and normalise are exact,
/// with and without pad-to-square.
#[test]
fn preprocessing_libjpeg_decoded_pixels_matches_clip_image_processor() {
    let (_, tensors) = reference();
    let decoded = &tensors["decoded.photo"];
    let (h, w, _) = decoded.dims3().expect("hwc");
    let raw = decoded
        .flatten_all()
        .expect("flat")
        .to_vec1::<u8>()
        .expect("u8");
    let img = RgbImage::from_raw(w as u32, h as u32, raw).expect("rgb");
    let config = PreprocessConfig::llava_1_5();
    let px = preprocess(&img, &config).expect("preprocess");
    check_close("pixel_values.photo", &pixels(&px), &tensors, 1e-5);
    let px = preprocess(&img, &config.with_pad_to_square(true)).expect("preprocess");
    check_close("pixel_values_pad.photo", &pixels(&px), &tensors, 1e-5);
}

/// FIXME: `image` decodes JPEG with zune-jpeg, whose IDCT and chroma upsampling round
/// differently from libjpeg-turbo (PIL's decoder), so a JPEG file is only close: a few
/// levels on some pixels. This pins the current size of that gap.
#[test]
fn preprocessing_jpeg_file_is_close_to_clip_image_processor() {
    let (json, tensors) = reference();
    let config = PreprocessConfig::llava_1_5();
    let px = preprocess_file(&image_path(&json, "photo"), &config).expect("preprocess");
    let diff = max_abs_diff(&pixels(&px), &tensors["pixel_values.photo"]);
    println!("pixel_values.photo from the jpeg file: max abs diff {diff:e}");
    // 8 levels of 255 in the channel with the smallest std.
    let bound = 8.0 / 255.0 / OPENAI_CLIP_STD[1];
    assert!(
        diff > 0.0 && diff < bound,
        "jpeg gap {diff} (bound {bound})"
    );
}

/// The fixture's tokenizer with the reference's concept markers, and those markers.
fn fixture_codec(json: &Value) -> (TextCodec, Vec<MarkerId>) {
    let path = fixture().join("model/tokenizer.json");
    let tokenizer = load_tokenizer(&path).expect("tokenizer");
    let (_, marker_ids) = concept_markers(json);
    let codec = TextCodec::new(&tokenizer, &path, &marker_ids).expect("codec");
    (codec, marker_ids)
}

/// Streamed deltas (each id decoded in a small window, markers appended undecoded) add up to
/// the one-shot decode of the answer so far after every token but an incomplete character,
/// over random answers mixing words, byte-fallback pieces and concept markers.
#[test]
fn streamed_text_adds_up_to_the_one_shot_decode() {
    use concepts_runtime::generate::TextStream;
    use rand::{Rng, SeedableRng};
    let (json, _) = reference();
    let (codec, marker_ids) = fixture_codec(&json);
    let vocab = json["model_vocab_size"].as_u64().expect("vocab") as u32;
    let all = vocab + marker_ids.len() as u32;
    // Markers take the stream's no-decode path with this (Llama) tokenizer.
    assert!(marker_ids
        .iter()
        .all(|m| codec.verbatim_marker(m.id) == Some(m.marker.as_str())));
    // A multi-byte character in byte-fallback pieces, so some steps hold text back.
    let bytes: Vec<u32> = "é😀"
        .bytes()
        .filter_map(|b| codec.token_id(&format!("<0x{b:02X}>")))
        .collect();
    assert_eq!(
        bytes.len(),
        6,
        "the fixture tokenizer has byte-fallback tokens"
    );
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut held_back = 0;
    for _ in 0..300 {
        let n = rng.random_range(1..40);
        let mut ids = Vec::new();
        while ids.len() < n {
            match rng.random_range(0..10) {
                0 => ids.extend_from_slice(&bytes[..2]),
                1 => ids.extend_from_slice(&bytes[2..]),
                _ => ids.push(rng.random_range(3..all)),
            }
        }
        let mut stream = TextStream::new();
        let mut text = String::new();
        for (i, &id) in ids.iter().enumerate() {
            match stream.push(&codec, id).expect("push") {
                Some(delta) => {
                    assert!(!delta.ends_with('\u{FFFD}'), "{delta:?}");
                    text.push_str(&delta);
                }
                None => held_back += 1,
            }
            // Nothing is held back longer than an incomplete character.
            let so_far = codec.decode(&ids[..=i]).expect("decode");
            if !so_far.ends_with('\u{FFFD}') {
                assert_eq!(text, so_far, "after {:?}", &ids[..=i]);
            }
        }
        let (rest, full) = stream.finish(&codec).expect("finish");
        text.push_str(rest.as_deref().unwrap_or_default());
        assert_eq!(full, codec.decode(&ids).expect("decode"));
        assert_eq!(text, full, "ids {ids:?}");
    }
    assert!(held_back > 0);
}

#[test]
fn tokenization_around_markers_matches_transformers_added_tokens() {
    let (json, _) = reference();
    let (codec, _) = fixture_codec(&json);
    let cases = json["tokenization"].as_array().expect("cases");
    assert!(!cases.is_empty());
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let special = case["add_special_tokens"].as_bool().expect("flag");
        let got = codec.encode(text, special).expect("encode");
        assert_eq!(
            got,
            ids(&case["ids_add_tokens"]),
            "add_tokens spelling of {text:?}"
        );
        assert_eq!(
            got,
            ids(&case["ids_add_special_tokens"]),
            "special spelling of {text:?}"
        );
    }
    let render = &json["render"];
    assert_eq!(
        codec.decode(&ids(&render["ids"])).expect("decode"),
        render["text"].as_str().expect("text")
    );
}

#[test]
fn template_reproduces_the_reference_prompts() {
    let (json, _) = reference();
    let (markers, _) = concept_markers(&json);
    let conv = Conversation::new(vec![markers]);
    for (key, image) in [("concept_text", false), ("concept_image", true)] {
        let question = json[key]["question"].as_str().expect("question");
        assert_eq!(
            conv.prompt(question, image),
            json[key]["prompt"].as_str().expect("prompt")
        );
    }
}

fn engine() -> Engine {
    Engine::load(&fixture().join("model"), &Device::Cpu, DType::F32).expect("load fixture model")
}

fn reference_pixels(tensors: &HashMap<String, Tensor>, key: &str) -> Tensor {
    tensors[&format!("pixel_values.{key}")]
        .unsqueeze(0)
        .expect("batch")
}

#[test]
fn vision_tower_and_projector_match_transformers() {
    let (_, tensors) = reference();
    let engine = engine();
    let model = engine.model();
    let layer = model.config().vision_feature_layer;
    for key in ["photo", "logo"] {
        let px = reference_pixels(&tensors, key);
        let hidden = model
            .vision_hidden_states(&px, Kernels::Fast)
            .expect("vision");
        let selected = hidden[layer].squeeze(0).expect("squeeze");
        check_close(&format!("vision_hidden.{key}"), &selected, &tensors, 1e-4);
        let features = model.image_features(&px, Kernels::Fast).expect("features");
        let features = features.squeeze(0).expect("squeeze");
        check_close(&format!("image_features.{key}"), &features, &tensors, 1e-4);
    }
}

fn greedy(max_tokens: usize, engine: &Engine) -> GenerateConfig {
    GenerateConfig {
        max_tokens,
        sampling: Sampling::Greedy,
        stop_ids: engine.stop_ids(),
        prompt_logits: true,
    }
}

#[test]
fn raw_prompt_logits_and_greedy_ids_match_transformers() {
    let (json, tensors) = reference();
    let engine = engine();
    let raw = &json["raw"];
    let image = raw["image"].as_str().expect("image key");
    let px = preprocess_file(&image_path(&json, image), engine.preprocess_config()).expect("image");
    let prompt = PromptInput {
        text: raw["prompt"].as_str().expect("prompt").to_string(),
        images: vec![px],
    };
    let expected_ids = ids(&raw["generated_ids"]);
    let mut streamed = String::new();
    let out = engine
        .generate(&prompt, &greedy(expected_ids.len(), &engine), &mut |t| {
            streamed.push_str(t)
        })
        .expect("generate");
    assert_eq!(out.prompt_ids, ids(&raw["input_ids"]));
    let logits = out.prompt_logits.as_ref().expect("prompt logits");
    check_close("raw.logits", logits, &tensors, 1e-4);
    assert_eq!(out.generated_ids, expected_ids);
    assert_eq!(out.text, raw["generated_text"].as_str().expect("text"));
    assert_eq!(streamed, out.text);
}

fn activate_fixture_concept(engine: &mut Engine, json: &Value, tensors: &HashMap<String, Tensor>) {
    let weights = ConceptWeights::new(
        tensors["concept.identifier"].clone(),
        tensors["concept.latents"].clone(),
        tensors["concept.head"].clone(),
    )
    .expect("weights");
    let identifier = json["concept"]["identifier"].as_str().expect("identifier");
    engine
        .activate("bo", identifier, weights)
        .expect("activate");
}

#[test]
fn personalised_text_prompt_matches_transformers_with_added_tokens() {
    let (json, tensors) = reference();
    let mut engine = engine();
    activate_fixture_concept(&mut engine, &json, &tensors);
    let case = &json["concept_text"];
    let prompt = engine.chat_prompt(case["question"].as_str().expect("question"), None);
    assert_eq!(prompt.text, case["prompt"].as_str().expect("prompt"));
    let out = engine
        .generate(&prompt, &greedy(0, &engine), &mut |_| {})
        .expect("forward");
    assert_eq!(out.prompt_ids, ids(&case["input_ids"]));
    let logits = out.prompt_logits.as_ref().expect("logits");
    assert_eq!(
        logits.dim(1).expect("cols"),
        json["model_vocab_size"].as_u64().expect("v") as usize + 1
    );
    check_close("concept_text.logits", logits, &tensors, 1e-4);
}

#[test]
fn recognition_reads_yes_and_no_like_transformers() {
    let (json, tensors) = reference();
    let mut engine = engine();
    activate_fixture_concept(&mut engine, &json, &tensors);
    let case = &json["concept_image"];
    let image = case["image"].as_str().expect("image key");
    let px = preprocess_file(&image_path(&json, image), engine.preprocess_config()).expect("image");
    let prompt = engine.chat_prompt(case["question"].as_str().expect("question"), Some(px));
    assert_eq!(prompt.text, case["prompt"].as_str().expect("prompt"));
    let out = engine
        .generate(&prompt, &greedy(0, &engine), &mut |_| {})
        .expect("forward");
    assert_eq!(out.prompt_ids, ids(&case["input_ids"]));
    let logits = out.prompt_logits.as_ref().expect("logits");
    let last = logits
        .get(logits.dim(0).expect("rows") - 1)
        .expect("last row");
    check_close("concept_image.last_logits", &last, &tensors, 1e-4);

    let r = engine.recognize(&prompt).expect("recognize");
    assert_eq!(
        (r.yes_id, r.no_id),
        (
            case["yes_id"].as_u64().expect("yes") as u32,
            case["no_id"].as_u64().expect("no") as u32
        )
    );
    let (p_yes, p_no) = (
        case["p_yes"].as_f64().expect("p_yes"),
        case["p_no"].as_f64().expect("p_no"),
    );
    println!(
        "p_yes {} (ref {p_yes}), p_no {} (ref {p_no})",
        r.p_yes, r.p_no
    );
    assert!(
        (r.p_yes - p_yes).abs() <= 1e-4 * p_yes.max(1e-6),
        "p_yes {} vs {p_yes}",
        r.p_yes
    );
    assert!(
        (r.p_no - p_no).abs() <= 1e-4 * p_no.max(1e-6),
        "p_no {} vs {p_no}",
        r.p_no
    );
    assert_eq!(r.is_yes(), p_yes > p_no);
}
