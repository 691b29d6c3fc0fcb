//! Evaluation during pretraining: generic accuracy per task, the stage-0 probe, and the
//! recognition gate.
//!
//! Generic tasks are scored by greedy decoding and exact match of the answer tokens. The
//! gate is the description-prompt baseline on held-out subjects: "{Name} is {true
//! description}. Can you see if {Name} is in this photo? Answer with a single word or
//! phrase." over photos of the subject (positives) and of other subjects and of look-alikes
//! (negatives), decided by p(Yes) > p(No) as the runtime's recognizer does; the score is
//! `(positive accuracy + negative accuracy) / 2`. Every eval set is a fixed function of
//! its own seed, so numbers are comparable across steps.

use std::collections::BTreeMap;

use candle_core::{IndexOp, Tensor, D};
use concepts_runtime::{Kernels, KvCache, LlavaConfig, LlavaModel};
use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;
use toy_world::text::SHORT_ANSWER;
use toy_world::{
    choose_subjects, group_photo, lookalike, photo_of, render, Combo, ImageSize, Member, Sizing,
    Subject, TaskKind, TaskMix,
};

use crate::data::{encode, prompt_text, splice_images, SpecialIds};
use crate::error::Result;
use crate::heads::{labelled_scenes, HEAD_NAMES};
use crate::model::fnv1a;

/// Sizes of the evaluation sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalConfig {
    pub seed: u64,
    /// Samples per generic task.
    pub per_task: usize,
    /// Scenes for the stage-0 probe.
    pub probe_scenes: usize,
    /// Held-out subjects of the gate.
    pub gate_subjects: usize,
    /// Positive photos per subject; as many negatives, half of them look-alikes.
    pub gate_photos: usize,
}

impl EvalConfig {
    pub fn standard() -> EvalConfig {
        EvalConfig {
            seed: 20_251_126,
            per_task: 24,
            probe_scenes: 128,
            gate_subjects: 12,
            gate_photos: 6,
        }
    }

    pub fn tiny() -> EvalConfig {
        EvalConfig {
            seed: 1,
            per_task: 1,
            probe_scenes: 2,
            gate_subjects: 2,
            gate_photos: 1,
        }
    }
}

/// The gate metric and its parts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GateReport {
    /// `(positive + negative) / 2`.
    pub weighted: f64,
    pub positive: f64,
    pub negative: f64,
    /// Negatives showing a look-alike (one attribute differs).
    pub lookalike: f64,
    /// Negatives showing another subject.
    pub other_subject: f64,
    /// Photos of the subject beside one or two other subjects, sized like a dataset's multi
    /// photos (it is not always the largest): the share answered Yes. Not in `weighted`,
    /// which keeps its meaning across models.
    #[serde(default)]
    pub crowded_positive: f64,
    /// Photos of a look-alike of the subject beside other subjects: the share answered No.
    #[serde(default)]
    pub crowded_lookalike: f64,
}

/// One evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub step: u64,
    /// Exact-match accuracy per generic task (stage 1 only).
    pub tasks: BTreeMap<String, f64>,
    /// Mean of `tasks`.
    pub tasks_mean: Option<f64>,
    /// Stage-0 head accuracy on the pooled embedding, per head.
    pub probe: BTreeMap<String, f64>,
    pub gate: Option<GateReport>,
}

/// What evaluation reads of a training run ([`crate::Trainer`] implements it), so that this
/// module does not depend on the training loop that calls it.
pub trait Evaluable {
    /// The model with the run's current weights.
    fn model(&self) -> Result<LlavaModel>;
    fn eval_config(&self) -> EvalConfig;
    /// Steps taken so far.
    fn step(&self) -> u64;
    /// Steps of stage 0 (the vision tower alone).
    fn stage0_steps(&self) -> u64;
    /// Side of the rendered images, in pixels.
    fn image_size(&self) -> usize;
    fn tokenizer(&self) -> &Tokenizer;
    fn special(&self) -> SpecialIds;
    fn llava_config(&self) -> &LlavaConfig;
    /// Preprocessed pixels of `images` as one batch.
    fn pixel_tensor(&self, images: &[&RgbImage]) -> Result<Tensor>;
    /// The stage-0 heads' logits for a batch of pixels.
    fn probe_logits(&self, model: &LlavaModel, px: &Tensor) -> Result<Vec<Tensor>>;
}

/// Evaluates `trainer`'s current weights.
pub(crate) fn evaluate(trainer: &dyn Evaluable) -> Result<EvalReport> {
    let model = trainer.model()?;
    let cfg = trainer.eval_config();
    let probe = probe(trainer, &model, &cfg)?;
    let mut report = EvalReport {
        step: trainer.step(),
        tasks: BTreeMap::new(),
        tasks_mean: None,
        probe,
        gate: None,
    };
    if trainer.step() <= trainer.stage0_steps() {
        return Ok(report);
    }
    let size = render_size(trainer);
    for kind in TaskKind::ALL {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ fnv1a(format!("{kind:?}").as_bytes()));
        let mut right = 0;
        for _ in 0..cfg.per_task {
            let s = toy_world::sample(&mut rng, &TaskMix::only(kind), size);
            let want = encode(trainer.tokenizer(), trainer.special(), &s.answer, false)?;
            let got = greedy(
                trainer,
                &model,
                &s.question,
                s.image.as_ref(),
                want.len() + 2,
            )?;
            right += usize::from(got == want);
        }
        report
            .tasks
            .insert(task_name(kind), right as f64 / cfg.per_task.max(1) as f64);
    }
    report.tasks_mean = Some(report.tasks.values().sum::<f64>() / report.tasks.len().max(1) as f64);
    report.gate = Some(gate(trainer, &model, &cfg)?);
    Ok(report)
}

fn render_size(trainer: &dyn Evaluable) -> ImageSize {
    ImageSize::new(trainer.image_size() as u32).unwrap_or(ImageSize::DEFAULT)
}

/// The snake-case name of a task kind, as in toy-world's serde form.
pub fn task_name(kind: TaskKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{kind:?}"))
}

fn probe(
    trainer: &dyn Evaluable,
    model: &LlavaModel,
    cfg: &EvalConfig,
) -> Result<BTreeMap<String, f64>> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ fnv1a(b"probe"));
    let (images, labels) = labelled_scenes(&mut rng, cfg.probe_scenes, render_size(trainer));
    let px = trainer.pixel_tensor(&images.iter().collect::<Vec<_>>())?;
    let logits = &trainer.probe_logits(model, &px)?[0];
    let classes = [
        toy_world::Shape::ALL.len(),
        toy_world::Colour::ALL.len(),
        toy_world::Pattern::ALL.len(),
        toy_world::Colour::ALL.len() + 1,
        3,
    ];
    let mut out = BTreeMap::new();
    let mut offset = 0;
    for (h, &n) in classes.iter().enumerate() {
        let pred = logits
            .narrow(1, offset, n)?
            .argmax(D::Minus1)?
            .to_vec1::<u32>()?;
        let right = pred
            .iter()
            .zip(&labels)
            .filter(|(p, l)| **p == l[h])
            .count();
        out.insert(
            HEAD_NAMES[h].to_string(),
            right as f64 / labels.len().max(1) as f64,
        );
        offset += n;
    }
    Ok(out)
}

/// Prompt embeddings `[1, T, d]` of `question` (with `image` spliced in if given).
fn prompt_embeds(
    trainer: &dyn Evaluable,
    model: &LlavaModel,
    question: &str,
    image: Option<&RgbImage>,
) -> Result<Tensor> {
    let text = prompt_text(question, image.is_some());
    let ids = encode(trainer.tokenizer(), trainer.special(), &text, true)?;
    let (ids, spans) = concepts_runtime::prompt::expand_image_tokens(
        &ids,
        trainer.special().image,
        trainer.llava_config().image_seq_len(),
    );
    let n = ids.len();
    let ids = Tensor::from_vec(ids, (1, n), model.device())?;
    let embeds = model.embed_tokens(&ids)?;
    let features = match image {
        Some(img) => Some(model.image_features(&trainer.pixel_tensor(&[img])?, Kernels::Fast)?),
        None => None,
    };
    splice_images(&embeds, &[spans.into_iter().next()], features.as_ref())
}

/// Greedy answer tokens (without `</s>`), at most `max_new`.
fn greedy(
    trainer: &dyn Evaluable,
    model: &LlavaModel,
    question: &str,
    image: Option<&RgbImage>,
    max_new: usize,
) -> Result<Vec<u32>> {
    let embeds = prompt_embeds(trainer, model, question, image)?;
    let t = embeds.dim(1)?;
    let mut cache = KvCache::new(model.config());
    let mut hidden = model.forward_embeds(&embeds, Some(&mut cache), Kernels::Fast)?;
    let mut last = hidden.i((0, t - 1..t))?;
    let mut out = Vec::new();
    let eos = trainer.special().eos;
    for _ in 0..max_new {
        let id = model
            .base_logits(&last)?
            .argmax(D::Minus1)?
            .flatten_all()?
            .to_vec1::<u32>()?[0];
        if id == eos {
            break;
        }
        out.push(id);
        let next = model.embed_tokens(&Tensor::new(&[[id]], model.device())?)?;
        hidden = model.forward_embeds(&next, Some(&mut cache), Kernels::Fast)?;
        last = hidden.i((0, 0..1))?;
    }
    Ok(out)
}

/// Whether p(Yes) > p(No) as the first answer token.
fn says_yes(
    trainer: &dyn Evaluable,
    model: &LlavaModel,
    question: &str,
    image: &RgbImage,
) -> Result<bool> {
    let yes = encode(trainer.tokenizer(), trainer.special(), "Yes", false)?[0];
    let no = encode(trainer.tokenizer(), trainer.special(), "No", false)?[0];
    let embeds = prompt_embeds(trainer, model, question, Some(image))?;
    let t = embeds.dim(1)?;
    let hidden = model.forward_embeds(&embeds, None, Kernels::Fast)?;
    let logits = model
        .base_logits(&hidden.i((0, t - 1))?)?
        .to_vec1::<f32>()?;
    Ok(logits[yes as usize] > logits[no as usize])
}

/// The recognition question of the gate for `name` with its true description.
pub fn gate_question(name: &str, description: &str) -> String {
    format!("{name} is {description}. Can you see if {name} is in this photo? {SHORT_ANSWER}")
}

/// Which kind of photo a gate item shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateKind {
    /// The subject itself: the right answer is Yes.
    Positive,
    /// A look-alike differing in one attribute: No.
    Lookalike,
    /// Another held-out subject: No.
    OtherSubject,
    /// The subject beside one or two other subjects: Yes.
    CrowdedPositive,
    /// A look-alike of the subject beside one or two other subjects: No.
    CrowdedLookalike,
}

impl GateKind {
    /// The index the corpus stores (`gate.safetensors`' `kind`).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether the right answer is Yes.
    pub fn is_positive(self) -> bool {
        matches!(self, GateKind::Positive | GateKind::CrowdedPositive)
    }
}

/// One gate question: the prompt's question (with the subject's true description), the
/// photo, and what it shows.
#[derive(Debug, Clone)]
pub struct GateItem {
    pub question: String,
    pub image: RgbImage,
    pub kind: GateKind,
}

/// The gate's items, a fixed function of `cfg` (the CPU evaluation and the accelerated
/// trainer's corpus use the same list).
pub fn gate_items(cfg: &EvalConfig, size: ImageSize) -> Result<Vec<GateItem>> {
    let subjects = choose_subjects(cfg.seed, cfg.gate_subjects)?;
    let combos: Vec<Combo> = subjects.iter().map(|s| *s.combo()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ fnv1a(b"gate"));
    let mut items = Vec::new();
    for (i, subject) in subjects.iter().enumerate() {
        let name = toy_world::text::capitalise(subject.name());
        let q = gate_question(&name, &subject.description());
        let mut push = |scene: &toy_world::Scene, kind| {
            items.push(GateItem {
                question: q.clone(),
                image: render(scene, size),
                kind,
            })
        };
        for k in 0..cfg.gate_photos {
            let scene = photo_of(&mut rng, combos[i], &combos);
            push(&scene, GateKind::Positive);
            if k % 2 == 0 {
                let (l, _) = lookalike(&mut rng, &combos[i], &combos);
                let scene = photo_of(&mut rng, l, &combos);
                push(&scene, GateKind::Lookalike);
            } else {
                // With one subject, `j == i`: the photo shows the subject and counts as a
                // positive.
                let j = (i + 1 + k % (combos.len() - 1).max(1)) % combos.len();
                let scene = photo_of(&mut rng, combos[j], &combos);
                push(
                    &scene,
                    if j == i {
                        GateKind::Positive
                    } else {
                        GateKind::OtherSubject
                    },
                );
            }
        }
    }
    // Appended from a stream of their own, so the items above (and `weighted`) stay what
    // they were before these were added.
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ fnv1a(b"gate-crowded"));
    for (i, subject) in subjects.iter().enumerate() {
        if combos.len() < 2 {
            break;
        }
        let name = toy_world::text::capitalise(subject.name());
        let q = gate_question(&name, &subject.description());
        for k in 0..cfg.gate_photos {
            let others: Vec<&Subject> = (1..combos.len())
                .map(|d| &subjects[(i + d + k) % combos.len()])
                .take(if k % 2 == 0 { 1 } else { 2 })
                .collect();
            let member = |s: &Subject| Member {
                combo: *s.combo(),
                tone: s.tone(),
            };
            let sizing = if rng.random_bool(0.5) {
                Sizing::Equal
            } else {
                Sizing::Unequal
            };
            let mut members: Vec<Member> = others.iter().map(|s| member(s)).collect();
            members.push(member(subject));
            let last = members.len() - 1;
            members.swap(rng.random_range(0..=last), last);
            let scene = group_photo(&mut rng, &members, sizing, &combos);
            items.push(GateItem {
                question: q.clone(),
                image: render(&scene, size),
                kind: GateKind::CrowdedPositive,
            });
            let (look, _) = lookalike(&mut rng, &combos[i], &combos);
            let at = members
                .iter()
                .position(|m| m.combo == combos[i])
                .expect("the subject is a member");
            members[at].combo = look;
            let scene = group_photo(&mut rng, &members, sizing, &combos);
            items.push(GateItem {
                question: q.clone(),
                image: render(&scene, size),
                kind: GateKind::CrowdedLookalike,
            });
        }
    }
    Ok(items)
}

fn gate(trainer: &dyn Evaluable, model: &LlavaModel, cfg: &EvalConfig) -> Result<GateReport> {
    let items = gate_items(cfg, render_size(trainer))?;
    let mut right = [0usize; 5];
    let mut count = [0usize; 5];
    for item in &items {
        let yes = says_yes(trainer, model, &item.question, &item.image)?;
        let k = item.kind.index();
        count[k] += 1;
        right[k] += usize::from(yes == item.kind.is_positive());
    }
    let frac = |a: usize, n: usize| a as f64 / n.max(1) as f64;
    let positive = frac(right[0], count[0]);
    let negative = frac(right[1] + right[2], count[1] + count[2]);
    Ok(GateReport {
        weighted: (positive + negative) / 2.0,
        positive,
        negative,
        lookalike: frac(right[1], count[1]),
        other_subject: frac(right[2], count[2]),
        crowded_positive: frac(right[3], count[3]),
        crowded_lookalike: frac(right[4], count[4]),
    })
}
