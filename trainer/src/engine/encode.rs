//! Samples as token ids and frozen embeddings, encoded once per template and conversation

use std::ops::Range;

use candle_core::Tensor;
use concepts_plugin_api::{SampleKind, SampleRef};
use concepts_runtime::prompt::{expand_image_tokens, ConceptMarkers, Conversation};
use concepts_runtime::session::Engine;

use super::TrainingEngine;
use crate::data::Dataset;
use crate::error::{Result, TrainError};
use crate::templates;

/// One tokenized, embedded prompt + answer.
pub(super) struct Encoded {
    pub(super) len: usize,
    /// Token ids, `<image>` expanded to one id per image feature.
    pub(super) ids: Vec<u32>,
    pub(super) image: Option<Range<usize>>,
    /// `[len, d]` base embeddings in the model dtype (image and concept positions are
    /// placeholders).
    pub(super) base: Tensor,
    /// (position, concept row) of every concept token.
    pub(super) concept: Vec<(usize, u32)>,
    /// (position, target id): the position's logits must predict the target.
    pub(super) targets: Vec<(usize, u32)>,
    /// Length of the constant prefix: the positions before the first concept token (and
    /// before the first loss position), which no trainable parameter reaches.
    pub(super) prefix: usize,
}

/// Tokenizes and embeds one `llava_v1/yollava-1` sample: the personal prompt and `question`
/// (after `<image>\n` when `image`), then ` {answer}</s>` as the only loss positions. Without
/// an answer (evaluation), the prompt alone.
/// The samples' prompts, each encoded once: the recognition templates (positive and negative),
/// the conversations, and the evaluation question
pub(super) struct Prompts {
    pub(super) positive: Vec<Encoded>,
    pub(super) negative: Vec<Encoded>,
    pub(super) conversations: Vec<Encoded>,
    pub(super) eval: Encoded,
}

impl Prompts {
    pub(super) fn new(
        session: &Engine,
        markers: &[ConceptMarkers],
        base_vocab: u32,
        templates: &templates::TemplateSet,
        data: &Dataset,
    ) -> Result<Prompts> {
        let identifier = markers[0].identifier().to_string();
        let codec = session.codec();
        let enc = |question: &str, answer: Option<&str>, image: bool| {
            encode(session, markers, base_vocab, question, answer, image)
        };
        let fill = |t: &str| templates::fill(t, &identifier);
        // Only templates the base model's vocabulary can say (a small word-level vocabulary
        // lacks most of Yo'LLaVA's phrasing); the evaluation question with a one-word answer
        // is the fallback when none is left.
        let usable =
            |pairs: &[(String, String)], fallback: &str| -> Result<Vec<(String, String)>> {
                let mut out = Vec::new();
                for (q, a) in pairs {
                    let (q, a) = (fill(q), fill(a));
                    if codec.represents(&q)? && codec.represents(&a)? {
                        out.push((q, a));
                    }
                }
                if out.len() < pairs.len() {
                    tracing::info!(
                    kept = out.len(),
                    of = pairs.len(),
                    "dropped recognition templates with words outside the base model's vocabulary"
                );
                }
                if out.is_empty() {
                    out.push((fill(templates::EVAL_QUESTION), fallback.to_string()));
                }
                Ok(out)
            };
        let recognition = |pairs: &[(String, String)], fallback: &str| {
            usable(pairs, fallback)?
                .iter()
                .map(|(q, a)| enc(q, Some(a), true))
                .collect::<Result<Vec<_>>>()
        };
        Ok(Prompts {
            positive: recognition(&templates.positive, "Yes")?,
            negative: recognition(&templates.negative, "No")?,
            conversations: data
                .conversations
                .iter()
                .map(|t| enc(&t.question, Some(&t.answer), false))
                .collect::<Result<Vec<_>>>()?,
            eval: enc(&fill(templates::EVAL_QUESTION), None, true)?,
        })
    }
}

pub(super) fn encode(
    session: &Engine,
    markers: &[ConceptMarkers],
    base_vocab: u32,
    question: &str,
    answer: Option<&str>,
    image: bool,
) -> Result<Encoded> {
    let model = session.model();
    let cfg = model.config();
    let codec = session.codec();
    let prompt = Conversation::new(markers.to_vec()).prompt(question, image);
    let prompt_ids = codec.encode(&prompt, true)?;
    let ids = match answer {
        Some(a) => codec.encode(&format!("{prompt} {a}</s>"), true)?,
        None => prompt_ids.clone(),
    };
    if ids.len() <= prompt_ids.len() && answer.is_some()
        || !ids.starts_with(&prompt_ids[..prompt_ids.len().min(ids.len())])
    {
        return Err(TrainError::Input(format!(
            "the tokenizer does not split `{prompt}` the same with and without its answer"
        )));
    }
    let (ids, spans) = expand_image_tokens(&ids, cfg.image_token_id, cfg.image_seq_len());
    let prompt_len = prompt_ids.len() + spans.len() * cfg.image_seq_len().saturating_sub(1);
    if spans.len() != usize::from(image) {
        return Err(TrainError::Input(format!(
            "the prompt has {} image positions, expected {}",
            spans.len(),
            usize::from(image)
        )));
    }
    let len = ids.len();
    if len > cfg.text.max_position_embeddings {
        return Err(TrainError::Input(format!(
            "a training sample of {len} tokens exceeds the model's {} positions",
            cfg.text.max_position_embeddings
        )));
    }
    let concept: Vec<(usize, u32)> = ids
        .iter()
        .enumerate()
        .filter(|(_, &id)| id >= base_vocab)
        .map(|(p, &id)| (p, id - base_vocab))
        .collect();
    let base_ids: Vec<u32> = ids
        .iter()
        .map(|&id| if id >= base_vocab { 0 } else { id })
        .collect();
    let base = model.embed_tokens(&Tensor::from_vec(base_ids, len, model.device())?)?;
    let targets: Vec<(usize, u32)> = match answer {
        Some(_) => (prompt_len - 1..len - 1).map(|p| (p, ids[p + 1])).collect(),
        None => Vec::new(),
    };
    // Without an answer the last position is read (evaluation), so it stays in the suffix.
    let prefix = concept
        .first()
        .map(|&(p, _)| p)
        .into_iter()
        .chain(targets.first().map(|&(p, _)| p))
        .chain(std::iter::once(len - 1))
        .min()
        .unwrap_or(0);
    Ok(Encoded {
        len,
        ids,
        image: spans.into_iter().next(),
        base,
        concept,
        targets,
        prefix,
    })
}

impl TrainingEngine<'_> {
    pub(super) fn encoded(&self, sample: &SampleRef) -> Result<&Encoded> {
        let list = match sample.kind {
            SampleKind::Positive => &self.positive,
            SampleKind::HardNegative | SampleKind::EasyNegative => &self.negative,
            SampleKind::Conversation => {
                return self
                    .conversations
                    .get(sample.index as usize)
                    .ok_or_else(|| {
                        TrainError::Input(format!("conversation {} is out of range", sample.index))
                    })
            }
        };
        Ok(&list[sample.template as usize % list.len()])
    }
}
