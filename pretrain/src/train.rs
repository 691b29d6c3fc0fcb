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
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor, Var, D};
use concepts_runtime::ops::masked_cross_entropy;
use concepts_runtime::preprocess::PreprocessConfig;
use concepts_runtime::{Kernels, LlavaConfig, LlavaModel};
use image::RgbImage;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;
use toy_world::{Colour, ImageSize, Pattern, Shape, TaskKind, TaskMix};

use crate::data::{pixels, splice_images, tokenize, Batch, Sequence, SpecialIds};
use crate::error::{io_err, PretrainError, Result};
use crate::eval::{evaluate, EvalConfig, EvalReport, Evaluable};
use crate::heads::{head_classes, scene_labels, Labels};
use crate::model::{config_json, fnv1a, Params, Part, ToySize};
use crate::optim::{learning_rate, AdamW, AdamWConfig, Moments};

/// Version of the training-state directory layout.
pub const STATE_VERSION: u32 = 1;

/// Everything that determines a run. Saved with each checkpoint; a resumed run must be
/// given the same values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub seed: u64,
    pub size: ToySize,
    pub stage0_steps: u64,
    pub stage0_batch: usize,
    pub stage0_lr: f64,
    pub stage1_steps: u64,
    pub batch: usize,
    pub lr: f64,
    pub warmup: u64,
    /// Stage-1 step from which the tower trains too (`>= stage1_steps`: never).
    pub unfreeze_tower_at: u64,
    /// The tower's learning rate relative to `lr` once unfrozen.
    pub tower_lr_scale: f64,
    /// Weight of the stage-0 classification loss while the tower trains in stage 1.
    pub aux_weight: f64,
    pub optim: AdamWConfig,
    pub eval_every: u64,
    pub eval: EvalConfig,
}

impl TrainConfig {
    /// The committed toy model's run.
    pub fn standard(seed: u64) -> TrainConfig {
        TrainConfig {
            seed,
            size: ToySize::standard(),
            stage0_steps: 1200,
            stage0_batch: 64,
            stage0_lr: 2e-3,
            stage1_steps: 16000,
            batch: 24,
            lr: 1.5e-3,
            warmup: 300,
            unfreeze_tower_at: 4000,
            tower_lr_scale: 0.3,
            aux_weight: 0.2,
            optim: AdamWConfig::standard(),
            eval_every: 500,
            eval: EvalConfig::standard(),
        }
    }

    /// A run small enough for unit tests.
    pub fn tiny(seed: u64) -> TrainConfig {
        TrainConfig {
            seed,
            size: ToySize::tiny(),
            stage0_steps: 2,
            stage0_batch: 4,
            stage0_lr: 1e-2,
            stage1_steps: 4,
            batch: 3,
            lr: 1e-2,
            warmup: 1,
            unfreeze_tower_at: 2,
            tower_lr_scale: 0.5,
            aux_weight: 0.2,
            optim: AdamWConfig::standard(),
            eval_every: 1000,
            eval: EvalConfig::tiny(),
        }
    }

    pub fn total_steps(&self) -> u64 {
        self.stage0_steps + self.stage1_steps
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(PretrainError::Config(m.to_string()));
        if self.batch == 0 || self.stage0_batch == 0 {
            return bad("batch sizes must be positive");
        }
        if self.warmup == 0 || self.eval_every == 0 {
            return bad("warmup and eval_every must be positive");
        }
        if !(self.lr > 0.0 && self.stage0_lr > 0.0 && self.tower_lr_scale >= 0.0) {
            return bad("learning rates must be positive");
        }
        ImageSize::new(self.size.image_size as u32)
            .map(|_| ())
            .or_else(|_| {
                if self.size.image_size == 16 {
                    Ok(())
                } else {
                    bad("image_size must be 16 (tests) or within toy-world's 48..=64 px")
                }
            })
    }
}

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

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    step: u64,
    config: TrainConfig,
    /// AdamW update count per parameter.
    adam_t: BTreeMap<String, u64>,
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

    /// Resumes from `state_dir` (see [`Trainer::save`]); `cfg` must equal the saved config.
    pub fn resume(cfg: TrainConfig, state_dir: &Path, device: &Device) -> Result<Trainer> {
        let mut t = Trainer::new(cfg, device)?;
        let dir = existing_state(state_dir).ok_or_else(|| PretrainError::State {
            path: state_dir.to_path_buf(),
            message: "no saved state".to_string(),
        })?;
        let state_path = dir.join("state.json");
        let text = std::fs::read_to_string(&state_path).map_err(io_err(&state_path))?;
        let state: StateFile =
            serde_json::from_str(&text).map_err(|source| PretrainError::Json {
                path: state_path.clone(),
                source,
            })?;
        let fail = |message: String| PretrainError::State {
            path: dir.clone(),
            message,
        };
        if state.version != STATE_VERSION {
            return Err(fail(format!(
                "layout version {}, expected {STATE_VERSION}",
                state.version
            )));
        }
        if state.config != t.cfg {
            return Err(fail(format!(
                "saved for another run configuration: {}",
                serde_json::to_string(&state.config).unwrap_or_default()
            )));
        }
        t.load_weights(&dir.join("weights.safetensors"))?;
        let moments = load_tensors(&dir.join("optimizer.safetensors"), device)?;
        let mut restored = BTreeMap::new();
        for (name, &count) in &state.adam_t {
            let get = |k: &str| {
                moments
                    .get(&format!("{k}.{name}"))
                    .cloned()
                    .ok_or_else(|| fail(format!("moment `{k}.{name}` missing")))
            };
            restored.insert(
                name.clone(),
                Moments {
                    m: get("m")?,
                    v: get("v")?,
                    t: count,
                },
            );
        }
        t.opt = AdamW::from_moments(restored);
        t.step = state.step;
        Ok(t)
    }

    /// Replaces the model and stage-0 head weights with those in the safetensors file at
    /// `path` (hub-layout names plus `head.*`, as [`Trainer::save`] and the accelerated
    /// trainer write them). Every weight must be present with its shape; extra tensors
    /// are an error too, so a file for another model cannot half-load.
    pub fn load_weights(&mut self, path: &Path) -> Result<()> {
        let device = self.params.device();
        let weights = load_tensors(path, &device)?;
        let fail = |message: String| PretrainError::State {
            path: path.to_path_buf(),
            message,
        };
        let checked = |name: &str, var: &Var| -> Result<Tensor> {
            let w = weights
                .get(name)
                .ok_or_else(|| fail(format!("weight `{name}` missing")))?;
            if w.dims() != var.dims() {
                return Err(fail(format!(
                    "weight `{name}` has shape {:?}, expected {:?}",
                    w.dims(),
                    var.dims()
                )));
            }
            Ok(w.clone())
        };
        let mut model = BTreeMap::new();
        for (name, var) in self.params.named() {
            let w = checked(&name, &var)?;
            model.insert(name, w);
        }
        for (name, var) in &self.heads {
            checked(name, var)?;
        }
        let known = model.len() + self.heads.len();
        if weights.len() != known {
            let extra: Vec<&String> = weights
                .keys()
                .filter(|k| !model.contains_key(*k) && !self.heads.iter().any(|(h, _)| h == *k))
                .take(3)
                .collect();
            return Err(fail(format!("unexpected weights {extra:?}")));
        }
        self.params = Params::from_tensors(&self.llava, model)?;
        for (name, var) in &self.heads {
            var.set(&weights[name].to_dtype(DType::F32)?)?;
        }
        Ok(())
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

    /// Resumes from `state_dir` if it holds a state, else starts fresh.
    pub fn resume_or_new(cfg: TrainConfig, state_dir: &Path, device: &Device) -> Result<Trainer> {
        if existing_state(state_dir).is_some() {
            Trainer::resume(cfg, state_dir, device)
        } else {
            Trainer::new(cfg, device)
        }
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
            let mix = TaskMix::only(TaskKind::Caption);
            let samples: Vec<toy_world::Sample> = (0..self.cfg.stage0_batch)
                .map(|_| toy_world::sample(&mut rng, &mix, self.image_size()))
                .collect();
            let images: Vec<&RgbImage> = samples.iter().filter_map(|s| s.image.as_ref()).collect();
            let labels: Vec<Labels> = samples
                .iter()
                .filter_map(|s| s.scene.as_ref().map(scene_labels))
                .collect();
            let px = self.pixel_tensor(&images)?;
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

    /// Writes the resumable state to `dir` atomically: a sibling `*.tmp` directory is filled
    /// and fsynced, then swapped in by renames.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let tmp = sibling(dir, "tmp");
        let old = sibling(dir, "old");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        save_tensors(&self.weights()?, &tmp.join("weights.safetensors"))?;
        let mut moments = BTreeMap::new();
        let mut adam_t = BTreeMap::new();
        for (name, m) in self.opt.moments() {
            moments.insert(format!("m.{name}"), m.m.clone());
            moments.insert(format!("v.{name}"), m.v.clone());
            adam_t.insert(name.clone(), m.t);
        }
        save_tensors(&moments, &tmp.join("optimizer.safetensors"))?;
        let state = StateFile {
            version: STATE_VERSION,
            step: self.step,
            config: self.cfg.clone(),
            adam_t,
        };
        let json = serde_json::to_string_pretty(&state).map_err(|source| PretrainError::Json {
            path: tmp.join("state.json"),
            source,
        })?;
        write_synced(&tmp.join("state.json"), json.as_bytes())?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
        }
        if dir.exists() {
            std::fs::rename(dir, &old).map_err(io_err(dir))?;
        }
        std::fs::rename(&tmp, dir).map_err(io_err(dir))?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
        }
        Ok(())
    }

    /// Writes the model in the llava-hf layout to `dir`: `config.json`, `model.safetensors`
    /// (hub-layout names, f32), `tokenizer.json`, `preprocessor_config.json`. Each file is
    /// replaced atomically.
    pub fn export(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let json = |v: &serde_json::Value, path: &Path| -> Result<()> {
            let text = serde_json::to_string_pretty(v).map_err(|source| PretrainError::Json {
                path: path.to_path_buf(),
                source,
            })?;
            write_synced(path, format!("{text}\n").as_bytes())
        };
        json(&config_json(&self.llava), &dir.join("config.json"))?;
        json(
            &preprocessor_json(self.cfg.size.image_size),
            &dir.join("preprocessor_config.json"),
        )?;
        json(
            &recognition_templates_json(),
            &dir.join("concepts_templates.json"),
        )?;
        let tok = dir.join("tokenizer.json");
        let tmp = tok.with_extension("json.tmp");
        toy_world::write_tokenizer(&tmp)?;
        std::fs::rename(&tmp, &tok).map_err(io_err(&tok))?;
        save_tensors(&self.params.tensors()?, &dir.join("model.safetensors"))
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
            if self.step % self.cfg.eval_every == 0 || done || self.step == self.cfg.stage0_steps {
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

/// The toy model's own recognition phrasing for concept training (`concepts_templates.json`,
/// read by the trainer in place of Yo'LLaVA's templates): the questions it was pretrained
/// on, with `<sks>` for the name, and their one-word answers; and the attribute questions
/// of the conversation data in its phrasing.
pub fn recognition_templates_json() -> serde_json::Value {
    use toy_world::text::SHORT_ANSWER;
    let questions = [
        "Can you see if <sks> is in this photo?",
        "Is <sks> in this photo?",
        "Can you see <sks> in this photo?",
        "Is <sks> in this image?",
        "Can you see if <sks> is in this image?",
    ];
    let colours: Vec<&str> = Colour::ALL.iter().map(|c| c.name()).collect();
    let shapes: Vec<&str> = Shape::ALL.iter().map(|c| c.name()).collect();
    let patterns: Vec<&str> = Pattern::ALL.iter().map(|c| c.name()).collect();
    let pairs = |answer: &str| -> Vec<(String, String)> {
        questions
            .iter()
            .map(|q| (format!("{q} {SHORT_ANSWER}"), answer.to_string()))
            .collect()
    };
    serde_json::json!({
        "id": "toy-world-recognition-v1",
        "positive": pairs("Yes"),
        "negative": pairs("No"),
        // Asked about each training photo (where the subject is the main object), trained
        // with the subject named; each answer also becomes an A/B question against another
        // option, in the pretraining's choice layout.
        "subject_questions": [
            {"ask": "What colour is the object?", "train": "What colour is this subject?", "options": colours},
            {"ask": "What shape is the object?", "train": "What shape is this subject?", "options": shapes},
            {"ask": "What pattern does the object have?", "train": "What pattern does this subject have?", "options": patterns},
            {"ask": "What colour is the border of the object?", "train": "What colour is the border of this subject?", "options": colours},
            {"ask": "What colour are the stripes on the object?", "train": "What colour are the stripes on this subject?", "options": colours},
            {"ask": "What colour are the dots on the object?", "train": "What colour are the dots on this subject?", "options": colours},
            {"ask": "What colour are the checks on the object?", "train": "What colour are the checks on this subject?", "options": colours},
        ],
        "choice_format": format!("{{question}}\nA: {{a}}\nB: {{b}}\n{}", toy_world::text::CHOICE_ANSWER),
    })
}

pub(crate) fn preprocessor_json(size: usize) -> serde_json::Value {
    serde_json::json!({
        "crop_size": {"height": size, "width": size},
        "do_center_crop": true,
        "do_convert_rgb": true,
        "do_normalize": true,
        "do_rescale": true,
        "do_resize": true,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "CLIPImageProcessor",
        "processor_class": "LlavaProcessor",
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": size},
    })
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    dir.with_file_name(name)
}

/// The directory holding the latest complete state: `dir`, or `dir.old` if a save was cut
/// off between its renames.
fn existing_state(dir: &Path) -> Option<PathBuf> {
    [dir.to_path_buf(), sibling(dir, "old")]
        .into_iter()
        .find(|d| d.join("state.json").is_file())
}

pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = sibling(path, "tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

pub(crate) fn save_tensors(tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), None)
        .map_err(|e| PretrainError::State {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    write_synced(path, &bytes)
}

fn load_tensors(path: &Path, device: &Device) -> Result<BTreeMap<String, Tensor>> {
    let map = candle_core::safetensors::load(path, device).map_err(|e| PretrainError::State {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(map.into_iter().collect())
}

fn append_jsonl(path: &Path, report: &EvalReport) -> Result<()> {
    use std::io::Write;
    let line = serde_json::to_string(report).map_err(|source| PretrainError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err(path))?;
    writeln!(f, "{line}").map_err(io_err(path))
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
