//! The pretraining corpus as tensor files, for training the toy model in another process
//! (the PyTorch trainer in `tools/toy_gpu/`, which a lent GPU runs in minutes where this
//! machine's two cores need hours) and importing the weights back with
//! [`Trainer::load_weights`].
//!
//! Everything the other trainer needs comes from here, so both trainers see the same
//! world: samples drawn by the same generators and tokenized by [`Trainer::sequence`]
//! (image tokens expanded, answer start marked), the gate's items from
//! [`crate::eval::gate_items`], the seeded initial weights under their hub-layout names,
//! and reference outputs of this runtime's forward on the initial weights, against which
//! the other implementation checks itself before it trains.
//!
//! Files written to the corpus directory (all tensors little-endian; images are raw RGB
//! bytes `[N, px, px, 3]`, to be normalised with `preprocessor_config.json`):
//! - `stage0.safetensors`: `images` u8, `labels` i64 `[N, 6]` ([`scene_labels`]).
//! - `stage1.safetensors`: `ids` i64 `[N, T]` (padded with `<pad>`), `lens`, `answer_start`,
//!   `image_start` (-1: no image), `image_index` (-1: no image), `task` i64 `[N]`;
//!   `images` u8 `[M, px, px, 3]` and their `labels` i64 `[M, 6]`.
//! - `gate.safetensors`: prompts ending in `ASSISTANT:` as `ids`/`lens`/`image_start`,
//!   `images`, `kind` i64 (0 positive, 1 look-alike, 2 other subject, 3 crowded
//!   positive, 4 crowded look-alike: [`GateKind`]).
//! - `init.safetensors`: the run's initial weights (model and stage-0 heads).
//! - `reference.safetensors`: `pixels` of the first stage-0 images as this runtime
//!   preprocesses them, `head_logits` `[2, R, C]` on them, and `lm_logits` `[R, T, V]`
//!   of the first stage-1 sequences (`ids` row-for-row), all under the initial weights.
//! - `corpus.json`: counts, token ids, head sizes and the run configuration.
//! - `config.json`, `preprocessor_config.json`, `tokenizer.json`: the model folder.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use concepts_runtime::Kernels;
use image::RgbImage;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use toy_world::{ImageSize, TaskKind, TaskMix};

use crate::data::{encode, prompt_text, Batch, Sequence};
use crate::error::{io_err, PretrainError, Result};
use crate::eval::{gate_items, task_name};
use crate::heads::{head_classes, scene_labels, Labels, HEADS, HEAD_NAMES};
use crate::model::{config_json, fnv1a};
use crate::train::{preprocessor_json, save_tensors, write_synced, TrainConfig, Trainer};

/// Version of the corpus layout; the PyTorch trainer refuses others.
pub const CORPUS_VERSION: u32 = 1;

/// How much to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorpusSize {
    /// Stage-0 scenes.
    pub stage0: usize,
    /// Stage-1 samples (the balanced task mix).
    pub stage1: usize,
    /// Worker threads generating samples.
    pub threads: usize,
}

/// `corpus.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CorpusMeta {
    pub version: u32,
    pub stage0: usize,
    pub stage1: usize,
    pub stage1_images: usize,
    pub gate: usize,
    pub image_size: usize,
    pub image_seq_len: usize,
    pub vocab_size: usize,
    pub pad_id: u32,
    pub yes_id: u32,
    pub no_id: u32,
    /// Stage-0 heads in order, with their class counts.
    pub heads: Vec<(String, usize)>,
    /// Task names by the index used in `stage1.safetensors`' `task`.
    pub tasks: Vec<String>,
    /// The feature layer index into `hidden_states` (0 = embeddings).
    pub vision_feature_layer: usize,
    pub train: TrainConfig,
}

/// A tokenized stage-1 sample with its image and the image's stage-0 labels.
type Stage1Sample = (Sequence, Option<RgbImage>, Option<Labels>);

/// Rows of the reference outputs.
const REFERENCE_ROWS: usize = 4;

/// Writes the corpus of `trainer`'s run (its seed, its sizes, its initial weights: call
/// this on a fresh [`Trainer::new`]) to `dir`.
pub fn write_corpus(trainer: &Trainer, size: CorpusSize, dir: &Path) -> Result<CorpusMeta> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let cfg = trainer.config();
    let px = cfg.size.image_size;
    let render_size = ImageSize::new(px as u32).unwrap_or(ImageSize::DEFAULT);
    let threads = size.threads.max(1);

    // Stage 0: scenes and their labels.
    let stage0 = generate(size.stage0, threads, |i| {
        let mut rng = sample_rng(cfg.seed, b"corpus-stage0", i);
        let s = toy_world::sample(&mut rng, &TaskMix::only(TaskKind::Caption), render_size);
        let labels = s
            .scene
            .as_ref()
            .map(scene_labels)
            .expect("captions have a scene");
        Ok((s.image.expect("captions have an image"), labels))
    })?;
    let (images0, labels0): (Vec<RgbImage>, Vec<Labels>) = stage0.into_iter().unzip();
    check_size(&images0, trainer)?;
    let mut tensors = BTreeMap::new();
    tensors.insert("images".to_string(), image_tensor(&images0, px)?);
    tensors.insert("labels".to_string(), label_tensor(&labels0)?);
    save_tensors(&tensors, &dir.join("stage0.safetensors"))?;

    // Stage 1: tokenized samples of the balanced mix.
    let stage1 = generate(size.stage1, threads, |i| {
        let mut rng = sample_rng(cfg.seed, b"corpus-stage1", i);
        let s = toy_world::sample(&mut rng, &TaskMix::balanced(), render_size);
        let seq = trainer.sequence(&s)?;
        let labels = s.scene.as_ref().map(scene_labels);
        Ok((seq, s.image, labels))
    })?;
    let seqs: Vec<&Sequence> = stage1.iter().map(|(s, _, _)| s).collect();
    let mut images1 = Vec::new();
    let mut labels1 = Vec::new();
    let mut image_index = Vec::with_capacity(stage1.len());
    for (_, image, labels) in &stage1 {
        match (image, labels) {
            (Some(img), Some(l)) => {
                image_index.push(images1.len() as i64);
                images1.push(img.clone());
                labels1.push(*l);
            }
            _ => image_index.push(-1),
        }
    }
    let tasks: Vec<i64> = seqs
        .iter()
        .map(|s| TaskKind::ALL.iter().position(|&k| k == s.task).unwrap_or(0) as i64)
        .collect();
    let mut tensors = sequence_tensors(&seqs, trainer.special().pad)?;
    let n1 = seqs.len();
    tensors.insert(
        "answer_start".to_string(),
        vec_i64(seqs.iter().map(|s| s.answer_start as i64).collect())?,
    );
    tensors.insert("image_index".to_string(), vec_i64(image_index)?);
    tensors.insert("task".to_string(), vec_i64(tasks)?);
    tensors.insert("images".to_string(), image_tensor(&images1, px)?);
    tensors.insert("labels".to_string(), label_tensor(&labels1)?);
    save_tensors(&tensors, &dir.join("stage1.safetensors"))?;

    // The gate, as prompts.
    let items = gate_items(&cfg.eval, render_size)?;
    let mut gate_seqs = Vec::with_capacity(items.len());
    for item in &items {
        let text = prompt_text(&item.question, true);
        let ids = encode(trainer.tokenizer(), trainer.special(), &text, true)?;
        let (ids, spans) = concepts_runtime::prompt::expand_image_tokens(
            &ids,
            trainer.special().image,
            trainer.llava_config().image_seq_len(),
        );
        gate_seqs.push(Sequence {
            task: TaskKind::NameRecognition,
            answer_start: ids.len(),
            ids,
            image_span: spans.into_iter().next(),
        });
    }
    let refs: Vec<&Sequence> = gate_seqs.iter().collect();
    let mut tensors = sequence_tensors(&refs, trainer.special().pad)?;
    let gate_images: Vec<RgbImage> = items.iter().map(|i| i.image.clone()).collect();
    tensors.insert("images".to_string(), image_tensor(&gate_images, px)?);
    tensors.insert(
        "kind".to_string(),
        vec_i64(items.iter().map(|i| i.kind.index() as i64).collect())?,
    );
    save_tensors(&tensors, &dir.join("gate.safetensors"))?;

    save_tensors(&trainer.weights()?, &dir.join("init.safetensors"))?;
    write_reference(trainer, &images0, &stage1, dir)?;

    let enc = |w: &str| -> Result<u32> {
        Ok(encode(trainer.tokenizer(), trainer.special(), w, false)?[0])
    };
    let meta = CorpusMeta {
        version: CORPUS_VERSION,
        stage0: images0.len(),
        stage1: n1,
        stage1_images: images1.len(),
        gate: items.len(),
        image_size: px,
        image_seq_len: trainer.llava_config().image_seq_len(),
        vocab_size: trainer.llava_config().text.vocab_size,
        pad_id: trainer.special().pad,
        yes_id: enc("Yes")?,
        no_id: enc("No")?,
        heads: HEAD_NAMES
            .iter()
            .zip(head_classes())
            .map(|(n, c)| (n.to_string(), c))
            .collect(),
        tasks: TaskKind::ALL.iter().map(|&k| task_name(k)).collect(),
        vision_feature_layer: trainer.llava_config().vision_feature_layer,
        train: cfg.clone(),
    };
    let json = |v: &serde_json::Value, name: &str| -> Result<()> {
        let path = dir.join(name);
        let text = serde_json::to_string_pretty(v).map_err(|source| PretrainError::Json {
            path: path.clone(),
            source,
        })?;
        write_synced(&path, format!("{text}\n").as_bytes())
    };
    json(&config_json(trainer.llava_config()), "config.json")?;
    json(&preprocessor_json(px), "preprocessor_config.json")?;
    toy_world::write_tokenizer(&dir.join("tokenizer.json"))?;
    json(
        &serde_json::to_value(&meta).map_err(|source| PretrainError::Json {
            path: dir.join("corpus.json"),
            source,
        })?,
        "corpus.json",
    )?;
    Ok(meta)
}

/// Reference outputs of the runtime's forward under the current (initial) weights.
fn write_reference(
    trainer: &Trainer,
    images0: &[RgbImage],
    stage1: &[Stage1Sample],
    dir: &Path,
) -> Result<()> {
    let model = trainer.model()?;
    let r0 = REFERENCE_ROWS.min(images0.len());
    let imgs: Vec<&RgbImage> = images0[..r0].iter().collect();
    let px = trainer.pixel_tensor(&imgs)?;
    let heads = trainer.probe_logits(&model, &px)?;
    let mut tensors = BTreeMap::new();
    tensors.insert("pixels".to_string(), px);
    tensors.insert("head_logits".to_string(), Tensor::stack(&heads, 0)?);
    let r1 = REFERENCE_ROWS.min(stage1.len());
    if r1 > 0 {
        let seqs: Vec<Sequence> = stage1[..r1].iter().map(|(s, _, _)| s.clone()).collect();
        let batch = Batch::new(&seqs, trainer.special().pad);
        let imgs: Vec<&RgbImage> = stage1[..r1]
            .iter()
            .filter_map(|(_, i, _)| i.as_ref())
            .collect();
        let features = if imgs.is_empty() {
            None
        } else {
            Some(model.image_features(&trainer.pixel_tensor(&imgs)?, Kernels::Fast)?)
        };
        let ids = Tensor::from_vec(batch.ids.clone(), (batch.batch, batch.len), model.device())?;
        let embeds = model.embed_tokens(&ids)?;
        let embeds = crate::data::splice_images(&embeds, &batch.image_spans, features.as_ref())?;
        let hidden = model.forward_embeds(&embeds, None, Kernels::Fast)?;
        tensors.insert("lm_logits".to_string(), model.base_logits(&hidden)?);
    }
    save_tensors(&tensors, &dir.join("reference.safetensors"))
}

fn check_size(images: &[RgbImage], trainer: &Trainer) -> Result<()> {
    let px = trainer.config().size.image_size as u32;
    match images.first() {
        Some(img) if img.width() != px || img.height() != px => Err(PretrainError::Config(
            format!(
                "the corpus renders {}x{} images for a {px} px model; only sizes toy-world renders natively can be exported",
                img.width(),
                img.height()
            ),
        )),
        _ => Ok(()),
    }
}

/// The RNG of sample `i` of a corpus part: every sample is a pure function of the seed and
/// its index, whatever the thread count.
fn sample_rng(seed: u64, part: &[u8], i: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ fnv1a(part) ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// `f(0..n)` on `threads` threads, in index order.
fn generate<T: Send>(
    n: usize,
    threads: usize,
    f: impl Fn(usize) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let chunk = n.div_ceil(threads).max(1);
    let parts: Vec<Result<Vec<T>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|start| {
                let f = &f;
                scope.spawn(move || (start..(start + chunk).min(n)).map(f).collect())
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("corpus worker panicked"))
            .collect()
    });
    let mut out = Vec::with_capacity(n);
    for part in parts {
        out.extend(part?);
    }
    Ok(out)
}

fn image_tensor(images: &[RgbImage], px: usize) -> Result<Tensor> {
    let mut data = Vec::with_capacity(images.len() * px * px * 3);
    for img in images {
        data.extend_from_slice(img.as_raw());
    }
    Ok(Tensor::from_vec(
        data,
        (images.len(), px, px, 3),
        &Device::Cpu,
    )?)
}

fn label_tensor(labels: &[Labels]) -> Result<Tensor> {
    let data: Vec<i64> = labels.iter().flatten().map(|&x| i64::from(x)).collect();
    Ok(Tensor::from_vec(data, (labels.len(), HEADS), &Device::Cpu)?)
}

fn vec_i64(v: Vec<i64>) -> Result<Tensor> {
    let n = v.len();
    Ok(Tensor::from_vec(v, n, &Device::Cpu)?)
}

/// `ids` `[N, T]` padded with `pad`, `lens` and `image_start` (-1: no image).
fn sequence_tensors(seqs: &[&Sequence], pad: u32) -> Result<BTreeMap<String, Tensor>> {
    let t = seqs.iter().map(|s| s.ids.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(seqs.len() * t);
    for s in seqs {
        ids.extend(s.ids.iter().map(|&x| i64::from(x)));
        ids.extend(std::iter::repeat_n(i64::from(pad), t - s.ids.len()));
    }
    let mut out = BTreeMap::new();
    out.insert(
        "ids".to_string(),
        Tensor::from_vec(ids, (seqs.len(), t), &Device::Cpu)?,
    );
    out.insert(
        "lens".to_string(),
        vec_i64(seqs.iter().map(|s| s.ids.len() as i64).collect())?,
    );
    out.insert(
        "image_start".to_string(),
        vec_i64(
            seqs.iter()
                .map(|s| s.image_span.as_ref().map_or(-1, |r| r.start as i64))
                .collect(),
        )?,
    );
    Ok(out)
}
