//! Autoregressive generation over the fast kernels with a KV cache: greedy or
//! temperature / top-p sampling with a seed, streaming text deltas, and the Yo'LLaVA
//! recognition read-out p(Yes) vs p(No).
//!
//! This module works on an already embedded prompt ([`EmbeddedPrompt`]); building prompts
//! from text and images is `crate::session`'s job.

use std::ops::Range;

use candle_core::{DType, IndexOp, Tensor, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::concept_table::ConceptTable;
use crate::error::{Result, RuntimeError};
use crate::model::{BatchKvCache, KvCache, LlavaModel};
use crate::ops::{self, Kernels};
use crate::prompt::TextCodec;

/// How the next token is chosen from the logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token (the first one on ties, as `torch.argmax`).
    Greedy,
    /// Sample from `softmax(logits / temperature)` restricted to the top-p nucleus
    /// (transformers' `TopPLogitsWarper` semantics), with a seeded ChaCha20 generator.
    Sample {
        temperature: f64,
        top_p: f64,
        seed: u64,
    },
}

impl Sampling {
    /// `Greedy` for a temperature of 0, else `Sample`; checks the ranges.
    pub fn from_temperature(temperature: f64, top_p: f64, seed: u64) -> Result<Self> {
        if !(temperature >= 0.0 && temperature.is_finite()) {
            return Err(RuntimeError::InvalidInput(format!(
                "temperature {temperature} must be finite and >= 0"
            )));
        }
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(RuntimeError::InvalidInput(format!(
                "top_p {top_p} must be in (0, 1]"
            )));
        }
        Ok(if temperature == 0.0 {
            Sampling::Greedy
        } else {
            Sampling::Sample {
                temperature,
                top_p,
                seed,
            }
        })
    }
}

/// Generation settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateConfig {
    /// Most tokens to generate (the EOS token, when reached, is not counted or returned).
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// Token ids that end generation.
    pub stop_ids: Vec<u32>,
    /// Also return the logits of every prompt position.
    pub prompt_logits: bool,
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A stop token was produced.
    Eos,
    /// `max_tokens` tokens were produced.
    MaxTokens,
    /// The model's `max_position_embeddings` was reached.
    ContextFull,
    /// The caller asked to stop ([`generate_cancellable`]).
    Cancelled,
}

/// A prompt ready for the decoder: token ids (image positions hold the image token id) and
/// their embeddings `[T, d]`, image features already in place.
#[derive(Debug, Clone)]
pub struct EmbeddedPrompt {
    pub ids: Vec<u32>,
    pub embeds: Tensor,
}

/// The result of [`generate`].
#[derive(Debug, Clone)]
pub struct Generation {
    /// The prompt's token ids, image tokens expanded.
    pub prompt_ids: Vec<u32>,
    /// Generated ids, without the stop token.
    pub generated_ids: Vec<u32>,
    /// Text of `generated_ids`, concept ids rendered as their markers.
    pub text: String,
    pub stop: StopReason,
    /// `[T, V + n]` f32 logits of every prompt position, when asked for.
    pub prompt_logits: Option<Tensor>,
}

impl Generation {
    /// The prompt logits as row-major `f32` values with their `[T, V + n]` shape, when they
    /// were asked for.
    pub fn prompt_logits_f32(&self) -> Result<Option<(Vec<f32>, [usize; 2])>> {
        let Some(logits) = &self.prompt_logits else {
            return Ok(None);
        };
        let (t, v) = logits.dims2()?;
        Ok(Some((logits.flatten_all()?.to_vec1::<f32>()?, [t, v])))
    }
}

/// Chooses tokens from logits.
#[derive(Debug, Clone)]
pub struct Sampler {
    sampling: Sampling,
    rng: ChaCha20Rng,
}

impl Sampler {
    pub fn new(sampling: Sampling) -> Self {
        let seed = match sampling {
            Sampling::Sample { seed, .. } => seed,
            Sampling::Greedy => 0,
        };
        Sampler {
            sampling,
            rng: ChaCha20Rng::seed_from_u64(seed),
        }
    }

    /// The next token for one position's logits.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(RuntimeError::InvalidInput("empty logits".to_string()));
        }
        let (temperature, top_p) = match self.sampling {
            Sampling::Greedy => return Ok(argmax(logits)),
            Sampling::Sample {
                temperature, top_p, ..
            } => (temperature, top_p),
        };
        let scaled: Vec<f64> = logits.iter().map(|&l| f64::from(l) / temperature).collect();
        let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut probs: Vec<(usize, f64)> = scaled
            .iter()
            .enumerate()
            .map(|(i, &l)| (i, (l - max).exp()))
            .collect();
        let total: f64 = probs.iter().map(|p| p.1).sum();
        // Most likely first; the sort is stable so ties keep id order.
        probs.sort_by(|a, b| b.1.total_cmp(&a.1));
        // Keep the smallest prefix whose mass reaches top_p (at least one token).
        let mut kept = 0;
        let mut mass = 0.0;
        for &(_, p) in &probs {
            kept += 1;
            mass += p / total;
            if mass >= top_p {
                break;
            }
        }
        probs.truncate(kept);
        let nucleus: f64 = probs.iter().map(|p| p.1).sum();
        let mut u = self.rng.random::<f64>() * nucleus;
        for &(i, p) in &probs {
            if u < p {
                return Ok(i as u32);
            }
            u -= p;
        }
        Ok(probs[probs.len() - 1].0 as u32)
    }
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Turns a growing list of generated ids into text deltas.
///
/// Each new id is decoded in a window of the ids since the previous delta's context (the
/// method of the `tokenizers` crate's `DecodeStream` and of TGI): the window's text minus the
/// text of its context is the delta, so multi-token characters (byte fallback) and the
/// decoder's leading-space handling come out as in a one-shot decode, while each step decodes
/// a few ids rather than the whole answer. A trailing U+FFFD (an incomplete UTF-8 sequence)
/// is held back. [`TextStream::finish`] flushes what was held back, decoding the whole answer
/// once when there is some. The stream keeps no reference to the codec, so a sequence can own
/// it.
#[derive(Debug, Clone, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    /// The deltas so far, concatenated.
    emitted: String,
    /// `ids[context..window]` is the context of the next delta: the ids of the last delta.
    context: usize,
    window: usize,
    /// The decoded text of the context, once computed.
    context_text: Option<String>,
}

impl TextStream {
    pub fn new() -> Self {
        TextStream::default()
    }

    /// Adds a token; returns the new text, if any is final yet.
    pub fn push(&mut self, codec: &TextCodec, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        // A concept marker after text that is all out: its own text, nothing to decode; it
        // is the next delta's whole context.
        if self.window + 1 == self.ids.len() {
            if let Some(marker) = codec.verbatim_marker(id) {
                self.emitted.push_str(marker);
                self.context = self.window;
                self.window = self.ids.len();
                self.context_text = Some(marker.to_string());
                return Ok(Some(marker.to_string()));
            }
        }
        let context = match self.context_text.take() {
            Some(text) => text,
            None if self.context == self.window => String::new(),
            None => codec.decode(&self.ids[self.context..self.window])?,
        };
        let text = codec.decode(&self.ids[self.context..])?;
        let delta = text
            .strip_prefix(context.as_str())
            .filter(|delta| !delta.is_empty() && !delta.ends_with('\u{FFFD}'));
        let Some(delta) = delta else {
            self.context_text = Some(context);
            return Ok(None);
        };
        let delta = delta.to_string();
        self.emitted.push_str(&delta);
        self.context = self.window;
        self.window = self.ids.len();
        Ok(Some(delta))
    }

    /// Decodes the whole answer; returns what it has beyond the deltas, and the full text.
    /// With nothing held back the deltas are that text already.
    pub fn finish(self, codec: &TextCodec) -> Result<(Option<String>, String)> {
        if self.window == self.ids.len() {
            return Ok((None, self.emitted));
        }
        let text = codec.decode(&self.ids)?;
        let delta = text
            .strip_prefix(self.emitted.as_str())
            .filter(|rest| !rest.is_empty())
            .map(str::to_string);
        Ok((delta, text))
    }
}

/// Logits `[T, V + n]` (f32) for hidden states `[T, d]`.
fn logits_f32(model: &LlavaModel, table: &ConceptTable, hidden: &Tensor) -> Result<Tensor> {
    Ok(table.logits(model, hidden)?.to_dtype(DType::F32)?)
}

/// What a sequence does after [`Sequence::choose`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    /// Feed this token and come back with the logits after it.
    Feed(u32),
    /// The sequence is finished.
    Stop(StopReason),
}

/// One sequence's decoding: its prompt, sampler, the ids chosen so far and the text emitted.
///
/// The forward passes are the caller's: [`generate_cancellable`] feeds one sequence through
/// its own [`KvCache`]; the runtime's batch scheduler (`api`) feeds many through one
/// [`crate::BatchKvCache`] with [`decode_step`]. Both choose every token here, so a sequence
/// produces the same tokens either way.
#[derive(Debug, Clone)]
pub struct Sequence {
    prompt_ids: Vec<u32>,
    prompt_logits: Option<Tensor>,
    max_tokens: usize,
    stop_ids: Vec<u32>,
    max_positions: usize,
    sampler: Sampler,
    stream: TextStream,
    generated: Vec<u32>,
}

impl Sequence {
    /// Runs `prompt` into `cache` and returns the sequence with the logits of the prompt's
    /// last position. `cache` is empty, or holds the keys and values of the prompt's first
    /// positions (a shared prefix computed once, such as the system text), which are then not
    /// run again; at least the last position is. With [`GenerateConfig::prompt_logits`] the
    /// cache must be empty.
    pub fn prefill(
        model: &LlavaModel,
        table: &ConceptTable,
        prompt: &EmbeddedPrompt,
        cfg: &GenerateConfig,
        cache: &mut KvCache,
    ) -> Result<(Sequence, Vec<f32>)> {
        let t = check_prompt(model, prompt)?;
        let done = cache.len();
        if done >= t || (done > 0 && cfg.prompt_logits) {
            return Err(RuntimeError::InvalidInput(format!(
                "prefill of a {t}-position prompt into a kv cache that holds {done} positions{}",
                if cfg.prompt_logits {
                    " (prompt logits need them all)"
                } else {
                    ""
                }
            )));
        }
        let hidden = model
            .forward_embeds(
                &prompt.embeds.narrow(0, done, t - done)?.unsqueeze(0)?,
                Some(cache),
                Kernels::Fast,
            )?
            .squeeze(0)?;
        let prompt_logits = if cfg.prompt_logits {
            Some(logits_f32(model, table, &hidden)?)
        } else {
            None
        };
        let last = match &prompt_logits {
            Some(all) => all.i(t - 1)?,
            None => logits_f32(model, table, &hidden.i(t - done - 1..t - done)?)?.squeeze(0)?,
        };
        let mut sequence = Sequence::new(model, &prompt.ids, cfg);
        sequence.prompt_logits = prompt_logits;
        Ok((sequence, last.to_vec1::<f32>()?))
    }

    /// A sequence whose prompt the caller runs itself: every position but the last into a
    /// cache, then the last one fed as if it were a chosen token (the batch scheduler feeds it
    /// in a decode step), whose logits go to the first [`Sequence::choose`]. Not for
    /// [`GenerateConfig::prompt_logits`], which [`Sequence::prefill`] computes.
    pub fn start(model: &LlavaModel, prompt_ids: &[u32], cfg: &GenerateConfig) -> Result<Sequence> {
        check_prompt_length(model, prompt_ids.len())?;
        if cfg.prompt_logits {
            return Err(RuntimeError::InvalidInput(
                "prompt logits need the prompt run by Sequence::prefill".into(),
            ));
        }
        Ok(Sequence::new(model, prompt_ids, cfg))
    }

    fn new(model: &LlavaModel, prompt_ids: &[u32], cfg: &GenerateConfig) -> Sequence {
        Sequence {
            prompt_ids: prompt_ids.to_vec(),
            prompt_logits: None,
            max_tokens: cfg.max_tokens,
            stop_ids: cfg.stop_ids.clone(),
            max_positions: model.config().text.max_position_embeddings,
            sampler: Sampler::new(cfg.sampling),
            stream: TextStream::new(),
            generated: Vec::new(),
        }
    }

    /// Chooses the next token from `logits` (those after the last fed position, over the
    /// base vocabulary and this sequence's identifiers), with `cached` positions in the
    /// sequence's cache; `on_text` receives the text that became final.
    pub fn choose(
        &mut self,
        codec: &TextCodec,
        logits: &[f32],
        cached: usize,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<NextStep> {
        if self.generated.len() >= self.max_tokens {
            return Ok(NextStep::Stop(StopReason::MaxTokens));
        }
        let next = self.sampler.sample(logits)?;
        if self.stop_ids.contains(&next) {
            return Ok(NextStep::Stop(StopReason::Eos));
        }
        self.generated.push(next);
        if let Some(delta) = self.stream.push(codec, next)? {
            on_text(&delta);
        }
        if self.generated.len() >= self.max_tokens {
            return Ok(NextStep::Stop(StopReason::MaxTokens));
        }
        if cached >= self.max_positions {
            return Ok(NextStep::Stop(StopReason::ContextFull));
        }
        Ok(NextStep::Feed(next))
    }

    /// Ids chosen so far.
    pub fn generated(&self) -> &[u32] {
        &self.generated
    }

    /// Flushes the text held back and returns the result.
    pub fn finish(
        self,
        codec: &TextCodec,
        stop: StopReason,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation> {
        let (delta, text) = self.stream.finish(codec)?;
        if let Some(delta) = delta {
            on_text(&delta);
        }
        Ok(Generation {
            prompt_ids: self.prompt_ids,
            generated_ids: self.generated,
            text,
            stop,
            prompt_logits: self.prompt_logits,
        })
    }
}

/// The prompt's length, after checking it against its embeddings and the context size.
fn check_prompt(model: &LlavaModel, prompt: &EmbeddedPrompt) -> Result<usize> {
    let t = prompt.ids.len();
    if t == 0 || prompt.embeds.dim(0)? != t {
        return Err(RuntimeError::InvalidInput(format!(
            "prompt of {t} ids with embeddings of shape {:?}",
            prompt.embeds.dims()
        )));
    }
    check_prompt_length(model, t)
}

fn check_prompt_length(model: &LlavaModel, t: usize) -> Result<usize> {
    if t == 0 {
        return Err(RuntimeError::InvalidInput("empty prompt".into()));
    }
    let max_pos = model.config().text.max_position_embeddings;
    if t > max_pos {
        return Err(RuntimeError::InvalidInput(format!(
            "prompt of {t} tokens exceeds max_position_embeddings {max_pos}"
        )));
    }
    Ok(t)
}

/// A sequence's part in a [`decode_step`].
#[derive(Clone, Copy)]
pub struct StepRow<'a> {
    /// The sequence's own concepts (its token ids are ids of this table).
    pub table: &'a ConceptTable,
    /// The token to feed.
    pub token: u32,
}

/// A sequence's concepts as a batched step uses them, stacked once when it joins the batch:
/// its identifiers' head columns as rows `[n, d]` and its concept tokens' embedding rows
/// `[m, d]` in id order (`None` without concepts).
#[derive(Debug, Clone)]
pub struct RowConcepts {
    heads: Tensor,
    embeds: Tensor,
}

impl RowConcepts {
    /// The concepts of `table`; `None` when it has none.
    pub fn of(table: &ConceptTable) -> Result<Option<RowConcepts>> {
        Ok(match (table.identifier_heads()?, table.embedding_rows()?) {
            (Some(heads), Some(embeds)) => Some(RowConcepts { heads, embeds }),
            _ => None,
        })
    }
}

/// The concepts of every row of a batch, each kind in one matrix: identifier head columns, so
/// a step computes all rows' identifier logits in one product, and concept embedding rows, so
/// a step embeds every row's token in one gather whatever its concepts. For a small LM head
/// the head matrix starts with the head itself, so base and identifier logits are one product.
///
/// Each slot owns a fixed stretch of both matrices (room for the most identifiers and concept
/// tokens any row has had), so a chat joining writes only its own rows in place and a chat
/// leaving writes nothing ([`BatchConcepts::set`], [`BatchConcepts::clear`]); the matrices are
/// rebuilt only when a chat brings more concepts than the room. Stretches no row owns are
/// computed and ignored.
#[derive(Debug)]
pub struct BatchConcepts {
    /// `[head rows (when `with_base`) | slots × head_room identifier rows]`.
    heads: Option<Tensor>,
    /// Whether `heads` starts with the LM head's rows.
    with_base: bool,
    head_room: usize,
    /// Slot `i`'s columns of the identifier product (empty: no concepts).
    columns: Vec<Range<usize>>,
    /// `slots × embed_room` concept embedding rows.
    embeds: Option<Tensor>,
    embed_room: usize,
    /// How many of slot `i`'s embedding rows are its own.
    embed_rows: Vec<usize>,
}

/// LM heads of at most this many elements are copied into [`BatchConcepts`].
const FUSED_HEAD_ELEMENTS: usize = 1 << 20;

impl BatchConcepts {
    /// From each slot's [`RowConcepts`] (`None`: a row without concepts, or a free slot).
    pub fn new(model: &LlavaModel, rows: &[Option<&RowConcepts>]) -> Result<Self> {
        let mut batch = BatchConcepts {
            heads: None,
            with_base: false,
            head_room: 0,
            columns: vec![0..0; rows.len()],
            embeds: None,
            embed_room: 0,
            embed_rows: vec![0; rows.len()],
        };
        let room = |f: fn(&RowConcepts) -> Result<usize>| -> Result<usize> {
            rows.iter()
                .flatten()
                .try_fold(0, |most, row| Ok(most.max(f(row)?)))
        };
        let head_room = room(|r| Ok(r.heads.dim(0)?))?;
        let embed_room = room(|r| Ok(r.embeds.dim(0)?))?;
        let Some(first) = rows.iter().flatten().next() else {
            return Ok(batch);
        };
        let (_, d) = first.heads.dims2()?;
        let (dtype, device) = (first.heads.dtype(), first.heads.device());
        let head = model.lm_head_weight();
        // A quantized head computes the base logits apart (`base_logits`), as unbatched.
        batch.with_base = !model.lm_head_is_quantized() && head.elem_count() <= FUSED_HEAD_ELEMENTS;
        let base_rows = if batch.with_base { head.dims2().0 } else { 0 };
        // Fresh buffers (never a view of a row's tensors): `set` writes into them.
        let heads = Tensor::zeros((base_rows + rows.len() * head_room, d), dtype, device)?;
        if batch.with_base {
            heads.slice_set(&head.to_tensor()?.to_dtype(dtype)?.contiguous()?, 0, 0)?;
        }
        let embeds = Tensor::zeros((rows.len() * embed_room, d), first.embeds.dtype(), device)?;
        batch.heads = Some(heads);
        batch.embeds = Some(embeds);
        batch.head_room = head_room;
        batch.embed_room = embed_room;
        for (slot, row) in rows.iter().enumerate() {
            if let Some(row) = row {
                batch.write(slot, row)?;
            }
        }
        Ok(batch)
    }

    /// Puts `rows[slot]` (a chat that joined) into its slot: in place when its concepts fit
    /// the room, otherwise by building every slot's again from `rows`.
    pub fn set(
        &mut self,
        model: &LlavaModel,
        rows: &[Option<&RowConcepts>],
        slot: usize,
    ) -> Result<()> {
        let fits = |row: &RowConcepts| -> Result<bool> {
            Ok(self.heads.is_some()
                && row.heads.dim(0)? <= self.head_room
                && row.embeds.dim(0)? <= self.embed_room)
        };
        match rows.get(slot) {
            _ if rows.len() != self.columns.len() => *self = Self::new(model, rows)?,
            Some(None) => self.clear(slot),
            Some(Some(row)) if fits(row)? => self.write(slot, row)?,
            _ => *self = Self::new(model, rows)?,
        }
        Ok(())
    }

    /// Empties `slot` (its chat left): its stretch stays, owned by no row.
    pub fn clear(&mut self, slot: usize) {
        if let Some(columns) = self.columns.get_mut(slot) {
            *columns = 0..0;
            self.embed_rows[slot] = 0;
        }
    }

    fn write(&mut self, slot: usize, row: &RowConcepts) -> Result<()> {
        let (Some(heads), Some(embeds)) = (&self.heads, &self.embeds) else {
            return Err(RuntimeError::InvalidInput(
                "concepts written into a batch without concept matrices".into(),
            ));
        };
        let n = row.heads.dim(0)?;
        let start = slot * self.head_room;
        let base_rows = if self.with_base {
            heads.dim(0)? - self.columns.len() * self.head_room
        } else {
            0
        };
        heads.slice_set(&row.heads.contiguous()?, 0, base_rows + start)?;
        embeds.slice_set(&row.embeds.contiguous()?, 0, slot * self.embed_room)?;
        self.columns[slot] = start..start + n;
        self.embed_rows[slot] = row.embeds.dim(0)?;
        Ok(())
    }
}

/// One decode step for a batch of sequences: `rows[b]` is the sequence in slot `b` of
/// `cache` and its next token, `None` for a free slot (computed, ignored); `concepts` holds
/// the concepts of the same slots ([`BatchConcepts::new`], kept by [`BatchConcepts::set`] and
/// [`BatchConcepts::clear`]; it may cover more slots than the step). Returns, per occupied row,
/// the f32 logits after its token: the base vocabulary (one product for the whole batch),
/// then only that row's own identifiers (one product against every row's heads, of which
/// each row keeps its own columns).
pub fn decode_step(
    model: &LlavaModel,
    cache: &mut BatchKvCache,
    rows: &[Option<StepRow<'_>>],
    concepts: &BatchConcepts,
) -> Result<Vec<Option<Vec<f32>>>> {
    let b = rows.len();
    if concepts.columns.len() < b {
        return Err(RuntimeError::InvalidInput(format!(
            "concepts for {} slots in a step of {b}",
            concepts.columns.len()
        )));
    }
    // Base ids in one gather; a row feeding a concept token then gets its concept row copied
    // over its (placeholder) base row, in place.
    let base_vocab = model.config().text.vocab_size as u32;
    let mut base_ids = vec![0u32; b];
    let mut concept_rows = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let Some(row) = row else { continue };
        if row.token < base_vocab {
            base_ids[i] = row.token;
        } else if (row.token as usize) < row.table.input_vocab_size() {
            let index = (row.token - base_vocab) as usize;
            if index >= concepts.embed_rows[i] {
                return Err(RuntimeError::InvalidInput(format!(
                    "concept token {} of row {i} is not among the batch's {} concept rows for it",
                    row.token, concepts.embed_rows[i]
                )));
            }
            concept_rows.push((i, i * concepts.embed_room + index));
        } else {
            return Err(RuntimeError::InvalidInput(format!(
                "token id {} of row {i} outside its vocabulary of {}",
                row.token,
                row.table.input_vocab_size()
            )));
        }
    }
    let device = model.device();
    // A fresh tensor (the gather's output), so writing into it touches nothing else.
    let embeds = model
        .embed_tokens(&Tensor::from_vec(base_ids, b, device)?)?
        .contiguous()?;
    if !concept_rows.is_empty() {
        let table = concepts.embeds.as_ref().ok_or_else(|| {
            RuntimeError::InvalidInput("a concept token in a batch without concept rows".into())
        })?;
        for (i, r) in concept_rows {
            embeds.slice_set(&table.narrow(0, r, 1)?.to_dtype(embeds.dtype())?, 0, i)?;
        }
    }
    let hidden = model
        .decode_batch(&embeds.unsqueeze(1)?, cache)?
        .squeeze(1)?;
    let logits = match (&concepts.heads, concepts.with_base) {
        (Some(matrix), true) => {
            // [base | every row's identifiers]: each row keeps the base and its own columns.
            let v = base_vocab as usize;
            let all = ops::linear(&hidden, matrix, None)?
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()?;
            all.into_iter()
                .zip(&concepts.columns)
                .map(|(mut row, columns)| {
                    let own = (v + columns.start)..(v + columns.end);
                    row.copy_within(own, v);
                    row.truncate(v + columns.len());
                    row
                })
                .collect()
        }
        (matrix, _) => {
            let mut logits = model
                .base_logits(&hidden)?
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()?;
            if let Some(matrix) = matrix {
                let extra = ops::linear(&hidden, matrix, None)?
                    .to_dtype(DType::F32)?
                    .to_vec2::<f32>()?;
                for ((row, extra), columns) in logits.iter_mut().zip(&extra).zip(&concepts.columns)
                {
                    row.extend_from_slice(&extra[columns.clone()]);
                }
            }
            logits
        }
    };
    Ok(rows
        .iter()
        .zip(logits)
        .map(|(row, logits)| row.map(|_| logits))
        .collect())
}

/// Runs the prompt through the decoder, then generates until a stop id, `max_tokens`, or
/// the context limit. `on_text` receives each text delta as it becomes final.
pub fn generate(
    model: &LlavaModel,
    table: &ConceptTable,
    codec: &TextCodec,
    prompt: &EmbeddedPrompt,
    cfg: &GenerateConfig,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation> {
    generate_cancellable(model, table, codec, prompt, cfg, on_text, &|| false)
}

/// [`generate`] that also stops with [`StopReason::Cancelled`] as soon as `cancelled`
/// returns true; it is asked before the prompt is run and before each token is chosen.
pub fn generate_cancellable(
    model: &LlavaModel,
    table: &ConceptTable,
    codec: &TextCodec,
    prompt: &EmbeddedPrompt,
    cfg: &GenerateConfig,
    on_text: &mut dyn FnMut(&str),
    cancelled: &dyn Fn() -> bool,
) -> Result<Generation> {
    check_prompt(model, prompt)?;
    if cancelled() {
        return Sequence::new(model, &prompt.ids, cfg).finish(
            codec,
            StopReason::Cancelled,
            on_text,
        );
    }
    let mut cache = model.kv_cache();
    let (mut sequence, mut last) = Sequence::prefill(model, table, prompt, cfg, &mut cache)?;
    let stop = loop {
        if cancelled() {
            break StopReason::Cancelled;
        }
        match sequence.choose(codec, &last, cache.len(), on_text)? {
            NextStep::Stop(reason) => break reason,
            NextStep::Feed(next) => {
                let embed = table.embed_ids(model, &[next])?.unsqueeze(0)?;
                let hidden = model.forward_embeds(&embed, Some(&mut cache), Kernels::Fast)?;
                last = logits_f32(model, table, &hidden.i((0, 0..1))?)?
                    .squeeze(0)?
                    .to_vec1::<f32>()?;
            }
        }
    };
    sequence.finish(codec, stop, on_text)
}

/// The Yo'LLaVA recognition read-out at the first answer position.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recognition {
    /// Softmax probability of the "Yes" token over the full vocabulary (base and concepts).
    pub p_yes: f64,
    /// Same for "No".
    pub p_no: f64,
    pub yes_id: u32,
    pub no_id: u32,
}

impl Recognition {
    /// The decision: "yes" when p(Yes) > p(No).
    pub fn is_yes(&self) -> bool {
        self.p_yes > self.p_no
    }
}

/// p(Yes) and p(No) for the next token after `prompt`.
pub fn recognize(
    model: &LlavaModel,
    table: &ConceptTable,
    prompt: &EmbeddedPrompt,
    yes_id: u32,
    no_id: u32,
) -> Result<Recognition> {
    let t = prompt.ids.len();
    if t == 0 {
        return Err(RuntimeError::InvalidInput("empty prompt".to_string()));
    }
    let hidden = model
        .forward_embeds(&prompt.embeds.unsqueeze(0)?, None, Kernels::Fast)?
        .squeeze(0)?;
    readout(model, table, &hidden.i(t - 1..t)?, yes_id, no_id)
}

/// p(Yes) and p(No) for the next token after a prompt whose first positions are already in
/// `prefix` and whose remaining positions have the embeddings `suffix` (`[S, d]`, `S >= 1`).
///
/// The prefix cache is not changed (the suffix goes into a copy-on-write clone), so one
/// prefix — system text and image tokens — serves any number of suffixes; the result equals
/// [`recognize`] on the whole prompt up to floating-point rounding.
pub fn recognize_after_prefix(
    model: &LlavaModel,
    table: &ConceptTable,
    prefix: &KvCache,
    suffix: &Tensor,
    yes_id: u32,
    no_id: u32,
) -> Result<Recognition> {
    let s = suffix.dim(0)?;
    if s == 0 {
        return Err(RuntimeError::InvalidInput(
            "empty prompt suffix".to_string(),
        ));
    }
    let max_pos = model.config().text.max_position_embeddings;
    if prefix.len() + s > max_pos {
        return Err(RuntimeError::InvalidInput(format!(
            "prompt of {} tokens exceeds max_position_embeddings {max_pos}",
            prefix.len() + s
        )));
    }
    let mut cache = prefix.clone();
    let hidden = model
        .forward_embeds(&suffix.unsqueeze(0)?, Some(&mut cache), Kernels::Fast)?
        .squeeze(0)?;
    readout(model, table, &hidden.i(s - 1..s)?, yes_id, no_id)
}

/// The recognition read-out for the last hidden state `[1, d]`.
fn readout(
    model: &LlavaModel,
    table: &ConceptTable,
    last: &Tensor,
    yes_id: u32,
    no_id: u32,
) -> Result<Recognition> {
    let logits = logits_f32(model, table, last)?
        .squeeze(0)?
        .to_dtype(DType::F64)?;
    let probs = candle_nn::ops::softmax(&logits, D::Minus1)?.to_vec1::<f64>()?;
    let p = |id: u32| {
        probs.get(id as usize).copied().ok_or_else(|| {
            RuntimeError::InvalidInput(format!("answer token {id} outside the logits"))
        })
    };
    Ok(Recognition {
        p_yes: p(yes_id)?,
        p_no: p(no_id)?,
        yes_id,
        no_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::concept_table::ConceptWeights;
    use crate::model::BatchKvCache;
    use crate::testing::{randn, random_model, tiny_config};
    use candle_core::Device;

    /// Chats join and leave a batch (one bringing more concepts than the room, one plain, one
    /// fitting in place); after every change each row's step logits are those of its chat
    /// decoding alone with its own concepts.
    #[test]
    fn batch_concepts_kept_in_place_step_as_each_chat_alone() {
        let cfg = tiny_config();
        let (model, _) = random_model(&cfg, 3, DType::F64, &Device::Cpu).unwrap();
        let dev = Device::Cpu;
        let concept = |seed| {
            let r = |shape: &[usize], s| randn(shape, s, DType::F64, &dev).unwrap();
            ConceptWeights::new(r(&[16], seed), r(&[2, 16], seed + 1), r(&[16], seed + 2)).unwrap()
        };
        let table = |names: &[(&str, u64)]| {
            let mut t = ConceptTable::new(&model);
            for &(name, seed) in names {
                t.activate(name, concept(seed)).unwrap();
            }
            t
        };
        let tables = [
            table(&[("bo", 1)]),
            table(&[("kiki", 4), ("bo", 1)]),
            table(&[]),
            table(&[("mug", 7)]),
        ];
        let stacked: Vec<Option<RowConcepts>> =
            tables.iter().map(|t| RowConcepts::of(t).unwrap()).collect();
        // Which chat each of three slots holds, phase by phase.
        let phases: [[Option<usize>; 3]; 4] = [
            [Some(0), None, None],
            [Some(0), Some(1), None],
            [None, Some(1), Some(2)],
            [Some(3), Some(1), Some(2)],
        ];
        let mut batch = BatchKvCache::new(&cfg, 3);
        let mut alone: Vec<Option<KvCache>> = vec![None, None, None];
        let mut held: [Option<usize>; 3] = [None; 3];
        let mut concepts: Option<BatchConcepts> = None;
        let mut seed = 50;
        for phase in phases {
            for slot in 0..3 {
                if held[slot] == phase[slot] {
                    continue;
                }
                if held[slot].take().is_some() {
                    batch.release(slot);
                    alone[slot] = None;
                    if let Some(c) = concepts.as_mut() {
                        c.clear(slot);
                    }
                }
                let Some(chat) = phase[slot] else { continue };
                seed += 1;
                let mut cache = KvCache::new(&cfg);
                let prompt = randn(&[1, 3, 16], seed, DType::F64, &dev).unwrap();
                model
                    .forward_embeds(&prompt, Some(&mut cache), Kernels::Fast)
                    .unwrap();
                batch.load(slot, cache.clone()).unwrap();
                alone[slot] = Some(cache);
                held[slot] = Some(chat);
                let rows: Vec<_> = held
                    .iter()
                    .map(|h| h.and_then(|c| stacked[c].as_ref()))
                    .collect();
                match concepts.as_mut() {
                    Some(c) => c.set(&model, &rows, slot).unwrap(),
                    None => concepts = Some(BatchConcepts::new(&model, &rows).unwrap()),
                }
            }
            // Each row feeds a base token, then its concept tokens in turn.
            for step in 0..4u32 {
                let width = batch.width();
                let feeds: Vec<Option<StepRow>> = held[..width]
                    .iter()
                    .map(|h| {
                        h.map(|chat| {
                            let t = &tables[chat];
                            let own = (t.input_vocab_size() - t.base_vocab()) as u32;
                            let token = match step {
                                0 => 5,
                                s if own == 0 => 5 + s,
                                s => t.base_vocab() as u32 + (s - 1) % own,
                            };
                            StepRow { table: t, token }
                        })
                    })
                    .collect();
                let got =
                    decode_step(&model, &mut batch, &feeds, concepts.as_ref().unwrap()).unwrap();
                for (slot, feed) in feeds.iter().enumerate() {
                    let Some(feed) = feed else {
                        assert!(got[slot].is_none());
                        continue;
                    };
                    let cache = alone[slot].as_mut().unwrap();
                    let embed = feed.table.embed_ids(&model, &[feed.token]).unwrap();
                    let hidden = model
                        .forward_embeds(&embed.unsqueeze(0).unwrap(), Some(cache), Kernels::Fast)
                        .unwrap();
                    let want = logits_f32(&model, feed.table, &hidden.i((0, 0..1)).unwrap())
                        .unwrap()
                        .squeeze(0)
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap();
                    let got = got[slot].as_ref().unwrap();
                    assert_eq!(got.len(), want.len(), "slot {slot}: own identifiers only");
                    let diff = got
                        .iter()
                        .zip(&want)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                    assert!(
                        diff < 1e-5,
                        "phase {phase:?} step {step} slot {slot}: {diff}"
                    );
                }
            }
        }
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(Sampling::Greedy);
        assert_eq!(s.sample(&[0.1, 2.0, -1.0, 2.0]).expect("sample"), 1);
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // p ≈ [0.64, 0.24, 0.09, 0.03]: top_p 0.7 keeps ids 0 and 1 only.
        let logits = [2.0f32, 1.0, 0.0, -1.0];
        let sampling = Sampling::from_temperature(1.0, 0.7, 7).expect("valid");
        let mut s = Sampler::new(sampling);
        let draws: Vec<u32> = (0..400)
            .map(|_| s.sample(&logits).expect("sample"))
            .collect();
        assert!(draws.iter().all(|&d| d < 2));
        let ones = draws.iter().filter(|&&d| d == 1).count();
        // 0.24 / 0.88 of 400 ≈ 109.
        assert!((70..150).contains(&ones), "{ones}");
    }

    #[test]
    fn sampling_is_reproducible_per_seed() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 / 3.0).collect();
        let run = |seed| {
            let mut s = Sampler::new(Sampling::from_temperature(0.8, 0.95, seed).expect("valid"));
            (0..32)
                .map(|_| s.sample(&logits).expect("sample"))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }

    #[test]
    fn sampling_parameters_are_checked() {
        assert_eq!(
            Sampling::from_temperature(0.0, 1.0, 1).expect("greedy"),
            Sampling::Greedy
        );
        assert!(Sampling::from_temperature(-1.0, 1.0, 1).is_err());
        assert!(Sampling::from_temperature(1.0, 0.0, 1).is_err());
        assert!(Sampling::from_temperature(f64::NAN, 1.0, 1).is_err());
    }
}
