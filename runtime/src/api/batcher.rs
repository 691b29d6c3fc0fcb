//! Continuous batching: every chat of a [`super::Runtime`] decodes in one running batch.
//!
//! A concept is a few input embeddings and one LM-head column, so chats with different
//! concept sets can share every forward pass: the batch thread owns a [`BatchKvCache`] of
//! `slots` rows; a chat joins when a row is free (its prompt prefilled alone, its cache copied
//! into the row), every step feeds each row's next token at that row's own position, and a
//! row leaves when its chat stops, is cancelled or loses its reader. Each row keeps its own
//! concept table: its token embedded with its own concept rows, its logits the base vocabulary
//! plus only its own identifiers' columns ([`decode_step`]), so no chat can emit another's
//! identifier. Tokens are chosen by the same [`Sequence`] as unbatched generation.
//!
//! Prefill of newcomers is interleaved with decoding: between two steps the thread prefills
//! waiting chats until [`PREFILL_TOKENS_PER_STEP`] prompt tokens are spent (at least one chat),
//! so a long image prompt delays the running rows by one prefill, not by its whole answer.
//! The keys and values of prompt prefixes recent chats share are kept (`super::prefix`), so a
//! newcomer runs only the rest of its prompt.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::config::LlavaConfig;
use crate::error::{Result, RuntimeError};
use crate::generate::{
    decode_step, BatchConcepts, GenerateConfig, NextStep, RowConcepts, Sequence, StepRow,
    StopReason,
};
use crate::model::{BatchKvCache, LlavaModel};
use crate::ops::Kernels;
use crate::session::{Engine, TokenizedPrompt};

use super::prefix::{prompt_key, PrefixCache};
use super::{summary, ChatEvent};

/// Prompt tokens prefilled between two decode steps while rows are decoding.
pub(crate) const PREFILL_TOKENS_PER_STEP: usize = 512;

/// Decoder weights from which a decode step is split across cores by default: below it a
/// step's kernels are too short to share (waking the pool's other workers costs more than
/// they save, and while they spin they take the core that tokenizes and serves requests;
/// measured in docs/serving.md).
const PARALLEL_STEP_WEIGHTS: usize = 16 << 20;

/// The batch pool's threads when [`super::RuntimeConfig::batch_threads`] is 0: one per core
/// for a decoder of at least [`PARALLEL_STEP_WEIGHTS`] weights, else one.
pub(crate) fn default_threads(config: &LlavaConfig) -> usize {
    let t = &config.text;
    let per_layer = 4 * t.hidden_size * t.hidden_size + 3 * t.hidden_size * t.intermediate_size;
    if t.num_hidden_layers * per_layer >= PARALLEL_STEP_WEIGHTS {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        1
    }
}

/// A chat handed to the batch thread.
pub(crate) struct Job {
    pub(crate) engine: Engine,
    pub(crate) prompt: TokenizedPrompt,
    pub(crate) cfg: GenerateConfig,
    pub(crate) events: mpsc::UnboundedSender<Result<ChatEvent>>,
    pub(crate) cancel: Arc<AtomicBool>,
    /// Counts the chat as running until it is dropped.
    pub(crate) running: Running,
    /// The package digest of each active concept, by name (for the prefix cache).
    pub(crate) digests: HashMap<String, String>,
    /// The chat's concepts, stacked for [`BatchConcepts`] before the chat reaches the
    /// batch thread.
    pub(crate) concepts: Option<RowConcepts>,
}

/// Holds one count of a running-chats counter.
pub(crate) struct Running(Arc<AtomicUsize>);

impl Running {
    pub(crate) fn start(counter: &Arc<AtomicUsize>) -> Running {
        counter.fetch_add(1, Ordering::SeqCst);
        Running(Arc::clone(counter))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The handle of the batch thread; the thread ends once this is dropped and its rows are done.
pub(crate) struct Batcher {
    jobs: std_mpsc::Sender<Job>,
}

impl Batcher {
    /// Starts the batch thread with `slots` rows, in a pool of `threads` threads.
    ///
    /// The loop runs on a worker of a rayon pool of its own, so the CPU kernels it calls
    /// split their work within that pool: called from a thread outside any pool, every
    /// parallel kernel is handed to rayon's global pool and waited for, which costs more
    /// than a small model's whole kernel (measured in docs/serving.md).
    pub(crate) fn start(slots: usize, prefix_bytes: usize, threads: usize) -> Result<Batcher> {
        let failed =
            |e: String| RuntimeError::InvalidInput(format!("starting the batch thread: {e}"));

        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("concepts-batch-{i}"))
            .build()
            .map_err(|e| failed(e.to_string()))?;
        let (jobs, rx) = std_mpsc::channel();
        std::thread::Builder::new()
            .name("concepts-batch".into())
            .spawn(move || {
                pool.install(move || BatchLoop::new(slots.max(1), prefix_bytes).run(&rx))
            })
            .map_err(|e| failed(e.to_string()))?;
        Ok(Batcher { jobs })
    }

    /// Queues a chat; it joins the batch when a row is free.
    pub(crate) fn submit(&self, job: Job) {
        if let Err(std_mpsc::SendError(job)) = self.jobs.send(job) {
            let _ = job.events.send(Err(RuntimeError::InvalidInput(
                "the batch thread has stopped".into(),
            )));
        }
    }
}

/// A chat decoding in a row of the batch.
struct Row {
    job: Job,
    sequence: Sequence,
    /// The token the next step feeds.
    next: u32,
}

impl Row {
    /// Sends a text delta; a reader that is gone cancels the chat.
    fn send_text(job: &Job, text: &str) {
        if job
            .events
            .send(Ok(ChatEvent::Text(text.to_string())))
            .is_err()
        {
            job.cancel.store(true, Ordering::SeqCst);
        }
    }
}

struct BatchLoop {
    slots: usize,
    rows: Vec<Option<Row>>,
    cache: Option<BatchKvCache>,
    waiting: VecDeque<Job>,
    prefixes: PrefixCache,
    /// Every slot's concepts, kept as rows join and leave; `None`: built at the next step.
    concepts: Option<BatchConcepts>,
}

impl BatchLoop {
    fn new(slots: usize, prefix_bytes: usize) -> Self {
        BatchLoop {
            slots,
            rows: (0..slots).map(|_| None).collect(),
            cache: None,
            waiting: VecDeque::new(),
            prefixes: PrefixCache::new(prefix_bytes),
            concepts: None,
        }
    }

    fn run(mut self, jobs: &std_mpsc::Receiver<Job>) {
        loop {
            if self.is_idle() {
                match jobs.recv() {
                    Ok(job) => self.waiting.push_back(job),
                    Err(_) => return,
                }
            }
            self.waiting.extend(jobs.try_iter());
            self.admit();
            self.step();
        }
    }

    fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.rows.iter().all(Option::is_none)
    }

    /// Prefills waiting chats into free rows, up to the step's prompt-token budget.
    fn admit(&mut self) {
        let mut spent = 0;
        while spent == 0 || spent < PREFILL_TOKENS_PER_STEP {
            let Some(slot) = self.rows.iter().position(Option::is_none) else {
                return;
            };
            let Some(job) = self.waiting.pop_front() else {
                return;
            };
            spent += job.prompt.ids.len().max(1);
            if let Some(row) = self.prefill(job, slot) {
                let model = Arc::clone(row.job.engine.model_arc());
                self.rows[slot] = Some(row);
                if let Some(concepts) = self.concepts.as_mut() {
                    if concepts
                        .set(&model, &row_concepts(&self.rows), slot)
                        .is_err()
                    {
                        // Built again (and any error reported) at the next step.
                        self.concepts = None;
                    }
                }
            }
        }
    }

    /// Runs a chat's prompt and chooses its first token; returns the row when the chat goes
    /// on decoding (its cache loaded into `slot`), after answering it when it does not.
    fn prefill(&mut self, job: Job, slot: usize) -> Option<Row> {
        if job.cancel.load(Ordering::SeqCst) {
            // Nobody waits for an answer; the reader's `collect` reports the cancellation.
            let _ = job.events.send(Err(RuntimeError::Cancelled));
            return None;
        }
        let started = (|| {
            let engine = &job.engine;
            let model = engine.model();
            let ids = &job.prompt.ids;
            let t = ids.len();
            let image = model.config().image_token_id;
            let key = prompt_key(ids, engine.concepts(), &job.digests, image);
            if job.cfg.prompt_logits || t < 2 {
                // Prompt logits need every position run here, with the LM head.
                let prompt = engine.embed_tokenized(&job.prompt)?;
                let mut cache = model.kv_cache();
                cache.reserve(planned_positions(model, t, job.cfg.max_tokens));
                let (mut sequence, logits) =
                    Sequence::prefill(model, engine.concepts(), &prompt, &job.cfg, &mut cache)?;
                self.prefixes.insert(&key, &cache)?;
                let next = sequence.choose(engine.codec(), &logits, cache.len(), &mut |t| {
                    Row::send_text(&job, t)
                })?;
                return Ok((sequence, next, cache));
            }
            // Every position but the last, after what the prefix cache holds (only those are
            // embedded); the last one is the row's first token in the next decode step, whose
            // LM head serves the whole batch at once.
            let mut cache = self
                .prefixes
                .lookup(&key, t - 1)
                .unwrap_or_else(|| model.kv_cache());
            cache.reserve(planned_positions(model, t, job.cfg.max_tokens));
            let done = cache.len();
            if done < t - 1 {
                let rest = engine.embed_range(&job.prompt, done..t - 1)?.unsqueeze(0)?;
                model.forward_embeds(&rest, Some(&mut cache), Kernels::Fast)?;
            }
            self.prefixes.insert(&key, &cache)?;
            let sequence = Sequence::start(model, ids, &job.cfg)?;
            Ok((sequence, NextStep::Feed(ids[t - 1]), cache))
        })();
        let (sequence, next, cache) = match started {
            Ok(started) => started,
            Err(e) => {
                let _ = job.events.send(Err(e));
                return None;
            }
        };
        let next = match next {
            NextStep::Stop(stop) => {
                finish_chat(job, sequence, stop);
                return None;
            }
            NextStep::Feed(next) => next,
        };
        let batch = self
            .cache
            .get_or_insert_with(|| BatchKvCache::new(job.engine.model().config(), self.slots));
        if let Err(e) = batch.load(slot, cache) {
            let _ = job.events.send(Err(e));
            return None;
        }
        Some(Row {
            job,
            sequence,
            next,
        })
    }

    /// One decode step over every row; rows whose chat stops leave the batch.
    fn step(&mut self) {
        self.drop_cancelled();
        let Some(cache) = self.cache.as_mut() else {
            return;
        };
        let width = cache.width();
        if width == 0 {
            return;
        }
        let Some(model) = self.rows[..width]
            .iter()
            .flatten()
            .next()
            .map(|row| Arc::clone(row.job.engine.model_arc()))
        else {
            return;
        };
        let feeds: Vec<_> = self.rows[..width]
            .iter()
            .map(|row| {
                row.as_ref().map(|r| StepRow {
                    table: r.job.engine.concepts(),
                    token: r.next,
                })
            })
            .collect();
        let concepts = match self.concepts.take() {
            Some(concepts) => Ok(concepts),
            None => BatchConcepts::new(&model, &row_concepts(&self.rows)),
        };
        let logits = concepts.and_then(|concepts| {
            let logits = decode_step(&model, cache, &feeds, &concepts);
            self.concepts = Some(concepts);
            logits
        });
        let logits = match logits {
            Ok(logits) => logits,
            Err(e) => {
                // A failed step leaves every row's cache in doubt: end them all.
                tracing::error!("batched decode step failed: {e}");
                for slot in 0..width {
                    if let Some(row) = self.rows[slot].take() {
                        cache.release(slot);
                        let _ = row.job.events.send(Err(RuntimeError::InvalidInput(format!(
                            "batched decode step failed: {e}"
                        ))));
                    }
                }
                self.concepts = None;
                return;
            }
        };
        for (slot, logits) in logits.into_iter().enumerate() {
            let (Some(logits), Some(row)) = (logits, self.rows[slot].as_mut()) else {
                continue;
            };
            let job = &row.job;
            let chosen =
                row.sequence
                    .choose(job.engine.codec(), &logits, cache.len(slot), &mut |t| {
                        Row::send_text(job, t)
                    });
            match chosen {
                Ok(NextStep::Feed(next)) => row.next = next,
                Ok(NextStep::Stop(stop)) => {
                    let row = self.rows[slot].take().expect("row is occupied");
                    if let Some(concepts) = self.concepts.as_mut() {
                        concepts.clear(slot);
                    }
                    cache.release(slot);
                    finish_row(row, stop);
                }
                Err(e) => {
                    let row = self.rows[slot].take().expect("row is occupied");
                    if let Some(concepts) = self.concepts.as_mut() {
                        concepts.clear(slot);
                    }
                    cache.release(slot);
                    let _ = row.job.events.send(Err(e));
                }
            }
        }
    }

    /// Ends the rows whose chat was cancelled (or whose reader left) and the waiting chats
    /// nobody waits for any more.
    fn drop_cancelled(&mut self) {
        self.waiting.retain(|job| {
            let cancelled = job.cancel.load(Ordering::SeqCst);
            if cancelled {
                let _ = job.events.send(Err(RuntimeError::Cancelled));
            }
            !cancelled
        });
        for slot in 0..self.rows.len() {
            let cancelled = self.rows[slot]
                .as_ref()
                .is_some_and(|row| row.job.cancel.load(Ordering::SeqCst));
            if cancelled {
                let row = self.rows[slot].take().expect("row is occupied");
                if let Some(concepts) = self.concepts.as_mut() {
                    concepts.clear(slot);
                }
                if let Some(cache) = self.cache.as_mut() {
                    cache.release(slot);
                }
                finish_row(row, StopReason::Cancelled);
            }
        }
    }
}

/// Every slot's concepts, as [`BatchConcepts`] takes them.
fn row_concepts(rows: &[Option<Row>]) -> Vec<Option<&RowConcepts>> {
    rows.iter()
        .map(|row| row.as_ref().and_then(|r| r.job.concepts.as_ref()))
        .collect()
}

/// Sends a finished row's summary.
fn finish_row(row: Row, stop: StopReason) {
    finish_chat(row.job, row.sequence, stop);
}

/// Flushes a chat's held-back text and sends its summary.
fn finish_chat(job: Job, sequence: Sequence, stop: StopReason) {
    let result = sequence
        .finish(job.engine.codec(), stop, &mut |t| Row::send_text(&job, t))
        .and_then(summary);
    let _ = job.events.send(result.map(ChatEvent::Done));
}

/// Positions a chat's key/value cache is allocated for at once: its prompt and every token it
/// may generate, within the model's context. Growing a cache later copies it into one twice
/// as large, both held meanwhile; at LLaVA-7B's size that is gigabytes.
fn planned_positions(model: &LlavaModel, prompt: usize, max_tokens: usize) -> usize {
    prompt
        .saturating_add(max_tokens)
        .min(model.config().text.max_position_embeddings)
}
