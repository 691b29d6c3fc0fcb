//! Training changes the concept's parameters and nothing else: every base tensor is
//! bit-identical afterwards, and the loss covers the answer tokens only.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use concepts_plugin_api::{SampleKind, SampleRef, TrainParams, Turn};
use concepts_runtime::preprocess::PreprocessConfig;
use concepts_runtime::session::Engine;
use concepts_runtime::testing::{randn, RandomWeights};
use concepts_runtime::{ConceptWeights, Kernels, LlavaConfig, LlavaModel};
use concepts_trainer::engine::{EngineObserver, EpochEvent};
use concepts_trainer::images::{self, LoadedImage};
use concepts_trainer::{AdamW, Dataset, EngineConfig, Init, PluginSet, TrainingEngine};

struct Quiet;

impl EngineObserver for Quiet {
    fn epoch(&mut self, _event: EpochEvent<'_>) -> concepts_trainer::Result<()> {
        Ok(())
    }
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// Outputs that depend on every base tensor: image features and the pooled embedding (vision
/// tower and projector), decoder hidden states and logits (decoder, norms, head).
fn fingerprint_outputs(model: &LlavaModel) -> Vec<Vec<u32>> {
    let v = &model.config().vision;
    let px = randn(
        &[2, 3, v.image_size, v.image_size],
        1,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let embeds = randn(
        &[1, 9, model.config().text.hidden_size],
        2,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let hidden = model.forward_embeds(&embeds, None, Kernels::Fast).unwrap();
    vec![
        bits(&model.image_features(&px, Kernels::Fast).unwrap()),
        bits(&model.pooled_image_embedding(&px).unwrap()),
        bits(&hidden),
        bits(&model.base_logits(&hidden).unwrap()),
        bits(&model.embed_weight().to_tensor().unwrap()),
        bits(&model.lm_head_weight().to_tensor().unwrap()),
    ]
}

fn photos() -> Vec<LoadedImage> {
    let w = common::world(3, 1, 0);
    let mut out: Vec<LoadedImage> = images::list_images(&w.photos, false)
        .unwrap()
        .iter()
        .map(|p| images::load_checked(p, &PreprocessConfig::square(48), 8).unwrap())
        .collect();
    out.extend(
        images::list_images(&w.pool, true)
            .unwrap()
            .iter()
            .map(|p| images::load_checked(p, &PreprocessConfig::square(48), 8).unwrap()),
    );
    out
}

#[test]
fn base_tensors_are_bit_identical_after_training() {
    let cfg = LlavaConfig::from_json_str(&common::config_json()).unwrap();
    let weights = RandomWeights::new(9);
    LlavaModel::from_varbuilder(cfg.clone(), weights.varbuilder(DType::F32, &Device::Cpu)).unwrap();
    let tensors: HashMap<String, Tensor> = weights
        .recorded()
        .into_iter()
        .map(|(n, t)| (n, t.to_dtype(DType::F32).unwrap()))
        .collect();
    let before: HashMap<String, Vec<u32>> =
        tensors.iter().map(|(n, t)| (n.clone(), bits(t))).collect();
    let model = LlavaModel::from_varbuilder(
        cfg,
        VarBuilder::from_tensors(tensors.clone(), DType::F32, &Device::Cpu),
    )
    .unwrap();
    let outputs_before = fingerprint_outputs(&model);

    let mut session = Engine::from_parts(
        model,
        toy_world::build_tokenizer(),
        Path::new("toy-tokenizer.json"),
        PreprocessConfig::square(28),
    )
    .unwrap();
    let d = 16;
    let zeros = Tensor::zeros(d, DType::F32, &Device::Cpu).unwrap();
    session
        .activate(
            "bo",
            "<bo>",
            ConceptWeights::new(
                zeros.clone(),
                Tensor::zeros((2, d), DType::F32, &Device::Cpu).unwrap(),
                zeros,
            )
            .unwrap(),
        )
        .unwrap();
    let mut images = photos();
    let negative = images.pop().unwrap();
    let answer = "<bo> is a red star with blue dots.";
    let data = Dataset {
        positives: images,
        hard_negatives: vec![negative],
        easy_negatives: Vec::new(),
        crowded_views: 0,
        conversations: vec![Turn {
            question: "What does <bo> look like?".into(),
            answer: answer.into(),
        }],
    };
    let cancel = AtomicBool::new(false);
    let mut quiet = Quiet;
    let engine_cfg = EngineConfig {
        k: 2,
        init: Init::Random,
        seed: 1,
        adamw: AdamW::REFERENCE,
        templates: concepts_trainer::templates::TemplateSet::yollava(),
        prefix: concepts_trainer::PrefixReuse::default(),
    };
    let mut engine =
        TrainingEngine::new(&session, "bo", &data, engine_cfg, None, &cancel, &mut quiet).unwrap();

    // The loss covers exactly the answer and its end-of-sequence token.
    let conv = SampleRef {
        kind: SampleKind::Conversation,
        index: 0,
        template: 0,
    };
    let (ids, targets) = engine.sample_tokens(&conv).unwrap();
    let answer_ids = session
        .codec()
        .encode(&format!(" {answer}</s>"), false)
        .unwrap();
    let target_ids: Vec<u32> = targets.iter().map(|&p| ids[p]).collect();
    assert_eq!(target_ids, answer_ids);
    assert_eq!(*targets.last().unwrap(), ids.len() - 1);
    let identifier = session.concepts().identifier_id("bo").unwrap();
    assert!(
        target_ids.contains(&identifier),
        "answers train the identifier's head column"
    );

    let initial = engine.params().clone();
    let mut stages = PluginSet::builtin();
    let summary = stages
        .trainer
        .train(
            &mut engine,
            TrainParams {
                epochs: Some(2),
                learning_rate: Some(1e-2),
                batch_size: Some(2),
                seed: 3,
            },
        )
        .unwrap();
    assert!(summary.epochs_run >= 1);
    let after = engine.params().clone();
    assert_ne!(
        bits(&initial.rows),
        bits(&after.rows),
        "the concept rows trained"
    );
    assert_ne!(
        bits(&initial.head),
        bits(&after.head),
        "the head column trained"
    );
    drop(engine);

    for (name, t) in &tensors {
        assert_eq!(bits(t), before[name], "base tensor `{name}` changed");
    }
    assert_eq!(
        fingerprint_outputs(session.model()),
        outputs_before,
        "the base model computes differently"
    );
}
