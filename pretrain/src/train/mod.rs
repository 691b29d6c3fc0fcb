//! The two-stage pretraining loop, its checkpoints and its export.
//!
//! Stage 0 trains the vision tower alone on attribute classification of the largest object
//! (shape, colour, pattern, secondary colour) and the object count, with linear heads on
//! CLIP's pooled embedding and on the mean of the projector's input tokens: the stand-in for
//! CLIP pretraining, which also makes the pooled embedding useful to the negative miner.
//! Stage 1 trains projector and decoder on the generic tasks with the language loss; the
//! tower is frozen at first and later trained at a lower rate, still with the stage-0 loss
//! as an auxiliary term so the pooled embedding keeps its meaning.
//!
//! Every step's data is a pure function of `(seed, step)`, so a run resumed from a
//! checkpoint (weights, AdamW moments, step) continues exactly as an uninterrupted one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor, Var, D};
use concepts_runtime::ops::masked_cross_entropy;
use concepts_runtime::preprocess::PreprocessConfig;
use concepts_runtime::{Kernels, LlavaConfig, LlavaModel};
use image::RgbImage;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokenizers::Tokenizer;
use toy_world::{ImageSize, TaskMix};

use crate::data::{pixels, splice_images, tokenize, Batch, Sequence, SpecialIds};
use crate::error::{PretrainError, Result};
use crate::eval::{evaluate, EvalConfig, EvalReport, Evaluable};
use crate::heads::{head_classes, labelled_scenes, scene_labels, Labels};
use crate::model::{fnv1a, Params, Part};
use crate::optim::{learning_rate, AdamW};

mod checkpoint;
mod config;
mod export;

use checkpoint::append_jsonl;
pub use checkpoint::STATE_VERSION;
pub(crate) use checkpoint::{save_tensors, write_synced};
pub use config::TrainConfig;
pub(crate) use export::preprocessor_json;
pub use export::recognition_templates_json;

/// What happened in one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// The step just taken (0-based).
    pub step: u64,
    pub stage: u8,
    pub loss: f32,
    pub lr: f64,
    pub grad_norm: f32,
    pub seconds: f64,
}

/// Progress events of [`Trainer::run`].
#[derive(Debug, Clone)]
pub enum Event {
    Step(StepReport),
    Eval(Box<EvalReport>),
    Saved { step: u64, dir: PathBuf },
    Exported { step: u64, dir: PathBuf },
}

/// Where a run keeps its files: `out` gets the llava-hf export and `eval.jsonl`,
/// `out/train-state` the resumable state.
#[derive(Debug, Clone)]
pub struct RunPaths {
    pub out: PathBuf,
}

impl RunPaths {
    pub fn state(&self) -> PathBuf {
        self.out.join("train-state")
    }
    pub fn eval_log(&self) -> PathBuf {
        self.out.join("eval.jsonl")
    }
}

/// A pretraining run in memory.
pub struct Trainer {
    cfg: TrainConfig,
    llava: LlavaConfig,
    tokenizer: Tokenizer,
    special: SpecialIds,
    preprocess: PreprocessConfig,
    params: Params,
    heads: Vec<(String, Var)>,
    opt: AdamW,
    step: u64,
}

impl Trainer {
    /// A fresh run at step 0.
    pub fn new(cfg: TrainConfig, device: &Device) -> Result<Trainer> {
        cfg.validate()?;
        let tokenizer = toy_world::build_tokenizer();
        let special = SpecialIds::of(&tokenizer)?;
        let llava = cfg
            .size
            .llava_config(tokenizer.get_vocab_size(true), special)?;
        let params = Params::init(&llava, cfg.seed, device)?;
        let heads = init_heads(cfg.size.vision_hidden, cfg.seed, device)?;
        Ok(Trainer {
            preprocess: PreprocessConfig::square(cfg.size.image_size as u32),
            cfg,
            llava,
            tokenizer,
            special,
            params,
            heads,
            opt: AdamW::new(),
            step: 0,
        })
    }

    /// Every weight (model and stage-0 heads) by name, as [`Trainer::load_weights`] reads them.
    pub fn weights(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut weights = self.params.tensors()?;
        for (name, var) in &self.heads {
            // A copy: an optimizer step or a load updates the `Var`s' storage in place.
            weights.insert(name.clone(), var.as_tensor().detach().copy()?);
        }
        Ok(weights)
    }

    /// Marks the weights as those after `step` steps (for weights trained elsewhere).
    pub fn set_step(&mut self, step: u64) {
        self.step = step;
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }
    pub fn llava_config(&self) -> &LlavaConfig {
        &self.llava
    }
    pub fn params(&self) -> &Params {
        &self.params
    }
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    pub fn special(&self) -> SpecialIds {
        self.special
    }
    pub fn preprocess_config(&self) -> &PreprocessConfig {
        &self.preprocess
    }
    /// Steps taken so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The current weights as a model (for evaluation).
    pub fn model(&self) -> Result<LlavaModel> {
        self.params.model()
    }

    fn image_size(&self) -> ImageSize {
        // Tests use 16 px models and render at the smallest toy-world size, then resize.
        ImageSize::new(self.cfg.size.image_size as u32).unwrap_or(ImageSize::DEFAULT)
    }

    fn step_rng(&self, step: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(
            self.cfg.seed ^ fnv1a(b"step") ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        )
    }

    /// Preprocessed pixels `[N, 3, px, px]` of `images`.
    pub fn pixel_tensor(&self, images: &[&RgbImage]) -> Result<Tensor> {
        let px = self.cfg.size.image_size;
        let mut data = Vec::with_capacity(images.len() * 3 * px * px);
        for img in images {
            data.extend(pixels(img, &self.preprocess)?);
        }
        Ok(Tensor::from_vec(
            data,
            (images.len(), 3, px, px),
            &self.params.device(),
        )?)
    }

    /// Tokenizes a sample with this model's image length.
    pub fn sequence(&self, sample: &toy_world::Sample) -> Result<Sequence> {
        tokenize(
            &self.tokenizer,
            self.special,
            self.llava.image_seq_len(),
            sample,
        )
    }

    /// The loss of `step`'s batch under the current weights, with gradients recorded.
    fn loss(&self, step: u64, model: &LlavaModel) -> Result<Tensor> {
        let mut rng = self.step_rng(step);
        if step < self.cfg.stage0_steps {
            let (images, labels) =
                labelled_scenes(&mut rng, self.cfg.stage0_batch, self.image_size());
            let px = self.pixel_tensor(&images.iter().collect::<Vec<_>>())?;
            let states = model.vision_hidden_states(&px, Kernels::Differentiable)?;
            return self.head_loss(model, &states, &labels);
        }
        let mix = TaskMix::balanced();
        let samples: Vec<toy_world::Sample> = (0..self.cfg.batch)
            .map(|_| toy_world::sample(&mut rng, &mix, self.image_size()))
            .collect();
        let seqs = samples
            .iter()
            .map(|s| self.sequence(s))
            .collect::<Result<Vec<_>>>()?;
        let batch = Batch::new(&seqs, self.special.pad);
        let images: Vec<&RgbImage> = samples.iter().filter_map(|s| s.image.as_ref()).collect();
        let mut aux = None;
        let features = if images.is_empty() {
            None
        } else {
            let px = self.pixel_tensor(&images)?;
            if self.tower_trains(step) {
                let labels: Vec<Labels> = samples
                    .iter()
                    .filter_map(|s| s.scene.as_ref().map(scene_labels))
                    .collect();
                let states = model.vision_hidden_states(&px, Kernels::Differentiable)?;
                aux = Some(self.head_loss(model, &states, &labels)?);
                let hidden = &states[self.llava.vision_feature_layer];
                Some(model.project_vision_state(hidden, Kernels::Differentiable)?)
            } else {
                let hidden = model.vision_feature_state(&px, Kernels::Fast)?.detach();
                Some(model.project_vision_state(&hidden, Kernels::Differentiable)?)
            }
        };
        let lm = language_loss(model, &batch, features.as_ref())?;
        Ok(match aux {
            Some(aux) => (lm + (aux * self.cfg.aux_weight)?)?,
            None => lm,
        })
    }

    /// Stage-0 cross-entropy of both head sets, averaged over heads.
    fn head_loss(
        &self,
        model: &LlavaModel,
        states: &[Tensor],
        labels: &[Labels],
    ) -> Result<Tensor> {
        let logits = self.head_logits(model, states)?;
        let mut total: Option<Tensor> = None;
        let mask = vec![true; labels.len()];
        for l in logits {
            let mut offset = 0;
            for (h, &n) in head_classes().iter().enumerate() {
                let targets: Vec<u32> = labels.iter().map(|x| x[h]).collect();
                let ce =
                    masked_cross_entropy(&l.narrow(1, offset, n)?.contiguous()?, &targets, &mask)?;
                total = Some(match total {
                    Some(t) => (t + ce)?,
                    None => ce,
                });
                offset += n;
            }
        }
        let total = total.expect("heads exist");
        Ok((total / (2 * head_classes().len()) as f64)?)
    }

    /// Head logits `[N, Σ classes]` on the pooled embedding and on the mean feature token.
    pub(crate) fn head_logits(&self, model: &LlavaModel, states: &[Tensor]) -> Result<Vec<Tensor>> {
        let last = states.last().expect("the tower has hidden states");
        let pooled = model.pool_vision_state(last, Kernels::Differentiable)?;
        let feat = &states[self.llava.vision_feature_layer];
        let n = feat.dim(1)?;
        let mean = feat.narrow(1, 1, n - 1)?.mean(1)?;
        let head = |x: &Tensor, i: usize| -> Result<Tensor> {
            let w = self.heads[2 * i + 1].1.as_tensor();
            let b = self.heads[2 * i].1.as_tensor();
            Ok(x.matmul(&w.t()?)?.broadcast_add(b)?)
        };
        Ok(vec![head(&pooled, 0)?, head(&mean, 1)?])
    }

    /// Stage-0 head logits for pixel values, without gradients.
    pub fn probe_logits(&self, model: &LlavaModel, px: &Tensor) -> Result<Vec<Tensor>> {
        let states = model.vision_hidden_states(px, Kernels::Fast)?;
        self.head_logits(model, &states)
    }

    fn tower_trains(&self, step: u64) -> bool {
        step < self.cfg.stage0_steps || step - self.cfg.stage0_steps >= self.cfg.unfreeze_tower_at
    }

    fn lr_at(&self, step: u64) -> f64 {
        if step < self.cfg.stage0_steps {
            learning_rate(
                step,
                self.cfg.stage0_steps,
                100.min(self.cfg.stage0_steps).max(1),
                self.cfg.stage0_lr,
                0.1,
            )
        } else {
            learning_rate(
                step - self.cfg.stage0_steps,
                self.cfg.stage1_steps,
                self.cfg.warmup,
                self.cfg.lr,
                0.1,
            )
        }
    }

    /// The loss of the next step's batch under the current weights, without a step.
    pub fn next_loss(&self) -> Result<f32> {
        self.loss_of_step(self.step)
    }

    /// The loss of `step`'s batch (and stage) under the current weights, without a step.
    pub fn loss_of_step(&self, step: u64) -> Result<f32> {
        let model = self.params.model()?;
        Ok(self.loss(step, &model)?.to_scalar::<f32>()?)
    }

    /// Takes one optimizer step.
    pub fn train_step(&mut self) -> Result<StepReport> {
        let start = Instant::now();
        let step = self.step;
        let model = self.params.model()?;
        let loss = self.loss(step, &model)?;
        let value = loss.to_scalar::<f32>()?;
        if !value.is_finite() {
            return Err(PretrainError::NonFinite { step, loss: value });
        }
        let grads = loss.backward()?;
        let lr = self.lr_at(step);
        let stage0 = step < self.cfg.stage0_steps;
        let tower = self.tower_trains(step);
        let mut trainable: Vec<(String, Var, f64)> = Vec::new();
        for (name, var) in self.params.named() {
            let part_lr = match Part::of(&name) {
                Part::Vision if stage0 => Some(lr),
                Part::Vision if tower => Some(lr * self.cfg.tower_lr_scale),
                Part::Vision => None,
                _ if stage0 => None,
                _ => Some(lr),
            };
            if let Some(l) = part_lr {
                trainable.push((name, var, l));
            }
        }
        if tower {
            for (name, var) in &self.heads {
                let l = if stage0 {
                    lr
                } else {
                    lr * self.cfg.tower_lr_scale
                };
                trainable.push((name.clone(), var.clone(), l));
            }
        }
        let stats = self.opt.step(&trainable, &grads, &self.cfg.optim)?;
        self.step += 1;
        Ok(StepReport {
            step,
            stage: if stage0 { 0 } else { 1 },
            loss: value,
            lr,
            grad_norm: stats.grad_norm,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// Evaluates the current weights.
    pub fn evaluate(&self) -> Result<EvalReport> {
        evaluate(self)
    }

    /// Trains until the schedule ends or `stop` is set, evaluating and exporting every
    /// `eval_every` steps and saving the state at least every `checkpoint_every`. Always
    /// saves before returning.
    pub fn run(
        &mut self,
        paths: &RunPaths,
        checkpoint_every: Duration,
        stop: &AtomicBool,
        mut on_event: impl FnMut(Event),
    ) -> Result<()> {
        let total = self.cfg.total_steps();
        let mut last_save = Instant::now();
        while self.step < total && !stop.load(Ordering::SeqCst) {
            let report = self.train_step()?;
            on_event(Event::Step(report));
            let done = self.step == total;
            if self.step.is_multiple_of(self.cfg.eval_every)
                || done
                || self.step == self.cfg.stage0_steps
            {
                let eval = self.evaluate()?;
                append_jsonl(&paths.eval_log(), &eval)?;
                on_event(Event::Eval(Box::new(eval)));
                self.export(&paths.out)?;
                on_event(Event::Exported {
                    step: self.step,
                    dir: paths.out.clone(),
                });
                self.save(&paths.state())?;
                last_save = Instant::now();
                on_event(Event::Saved {
                    step: self.step,
                    dir: paths.state(),
                });
            } else if last_save.elapsed() >= checkpoint_every {
                self.save(&paths.state())?;
                last_save = Instant::now();
                on_event(Event::Saved {
                    step: self.step,
                    dir: paths.state(),
                });
            }
        }
        self.save(&paths.state())?;
        on_event(Event::Saved {
            step: self.step,
            dir: paths.state(),
        });
        Ok(())
    }
}

/// Cross-entropy of the answer tokens of `batch`, image features spliced in.
fn language_loss(model: &LlavaModel, batch: &Batch, features: Option<&Tensor>) -> Result<Tensor> {
    let device = model.device();
    let ids = Tensor::from_vec(batch.ids.clone(), (batch.batch, batch.len), device)?;
    let embeds = model.embed_tokens(&ids)?;
    let embeds = splice_images(&embeds, &batch.image_spans, features)?;
    let hidden = model.forward_embeds(&embeds, None, Kernels::Differentiable)?;
    let d = hidden.dim(D::Minus1)?;
    let rows = Tensor::from_vec(batch.target_rows.clone(), batch.target_rows.len(), device)?;
    let picked = hidden
        .reshape((batch.batch * batch.len, d))?
        .index_select(&rows, 0)?;
    let logits = model.base_logits(&picked)?;
    let mask = vec![true; batch.targets.len()];
    Ok(masked_cross_entropy(&logits, &batch.targets, &mask)?)
}

/// Stage-0 heads: `head.{pooled,mean}.{bias,weight}`, sorted by name.
fn init_heads(dv: usize, seed: u64, device: &Device) -> Result<Vec<(String, Var)>> {
    let n: usize = head_classes().iter().sum();
    let mut out = Vec::new();
    for which in ["pooled", "mean"] {
        let name = format!("head.{which}.weight");
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ fnv1a(name.as_bytes()));
        let std = 1.0 / (dv as f64).sqrt();
        let w: Vec<f32> = (0..n * dv)
            .map(|_| (std * crate::model::normal(&mut rng)) as f32)
            .collect();
        out.push((
            format!("head.{which}.bias"),
            Var::from_tensor(&Tensor::zeros(n, DType::F32, device)?)?,
        ));
        out.push((
            name,
            Var::from_tensor(&Tensor::from_vec(w, (n, dv), device)?)?,
        ));
    }
    Ok(out)
}

impl Evaluable for Trainer {
    fn model(&self) -> Result<LlavaModel> {
        Trainer::model(self)
    }

    fn eval_config(&self) -> EvalConfig {
        self.config().eval
    }

    fn step(&self) -> u64 {
        Trainer::step(self)
    }

    fn stage0_steps(&self) -> u64 {
        self.config().stage0_steps
    }

    fn image_size(&self) -> usize {
        self.config().size.image_size
    }

    fn tokenizer(&self) -> &Tokenizer {
        Trainer::tokenizer(self)
    }

    fn special(&self) -> SpecialIds {
        Trainer::special(self)
    }

    fn llava_config(&self) -> &LlavaConfig {
        Trainer::llava_config(self)
    }

    fn pixel_tensor(&self, images: &[&RgbImage]) -> Result<Tensor> {
        Trainer::pixel_tensor(self, images)
    }

    fn probe_logits(&self, model: &LlavaModel, px: &Tensor) -> Result<Vec<Tensor>> {
        Trainer::probe_logits(self, model, px)
    }
}
