//! Pretraining samples as token sequences in the reference prompt layout, and batches of them.
//!
//! A sample becomes `{system} USER: <image>\n{question} ASSISTANT: {answer}</s>` (no
//! `<image>\n` for text-only tasks), tokenized by the toy tokenizer with `<s>` first, the
//! `<image>` token expanded to one position per image feature. Only the answer tokens and
//! the final `</s>` are targets. A batch pads every sequence at the end to the longest one;
//! attention is causal, so trailing padding never influences a real position, and padded
//! positions are no targets.

use candle_core::{IndexOp, Tensor};
use concepts_runtime::preprocess::{preprocess, PreprocessConfig};
use concepts_runtime::prompt::{expand_image_tokens, Conversation};
use image::RgbImage;
use tokenizers::Tokenizer;
use toy_world::{Sample, TaskKind};

use crate::error::{PretrainError, Result};

/// Token ids of the toy tokenizer's special tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialIds {
    pub unk: u32,
    pub bos: u32,
    pub eos: u32,
    pub pad: u32,
    pub image: u32,
}

impl SpecialIds {
    /// Reads the ids from `tokenizer`.
    pub fn of(tokenizer: &Tokenizer) -> Result<Self> {
        let id = |t: &str| {
            tokenizer
                .token_to_id(t)
                .ok_or_else(|| PretrainError::Tokenizer(format!("no `{t}` token")))
        };
        Ok(SpecialIds {
            unk: id(toy_world::UNK)?,
            bos: id(toy_world::BOS)?,
            eos: id(toy_world::EOS)?,
            pad: id(toy_world::PAD)?,
            image: id(toy_world::IMAGE)?,
        })
    }
}

/// The text prompt of a question, ending in `ASSISTANT:`, as inference builds it.
pub fn prompt_text(question: &str, image: bool) -> String {
    Conversation::new(Vec::new()).prompt(question, image)
}

/// One tokenized training sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    pub task: TaskKind,
    /// Token ids with the `<image>` token expanded to `image_seq_len` copies.
    pub ids: Vec<u32>,
    /// Index of the first target token (the first answer token); targets run to the end,
    /// which is `</s>`.
    pub answer_start: usize,
    /// Where the image features go, if the sample has an image.
    pub image_span: Option<std::ops::Range<usize>>,
}

/// Encodes `text` and fails on any unknown word.
pub fn encode(
    tokenizer: &Tokenizer,
    special: SpecialIds,
    text: &str,
    bos: bool,
) -> Result<Vec<u32>> {
    let ids = tokenizer
        .encode(text, bos)
        .map_err(|e| PretrainError::Tokenizer(e.to_string()))?
        .get_ids()
        .to_vec();
    if ids.contains(&special.unk) {
        return Err(PretrainError::Tokenizer(format!(
            "`{text}` has a word outside the vocabulary"
        )));
    }
    Ok(ids)
}

/// Tokenizes a sample: prompt, answer and `</s>`.
pub fn tokenize(
    tokenizer: &Tokenizer,
    special: SpecialIds,
    image_seq_len: usize,
    sample: &Sample,
) -> Result<Sequence> {
    let has_image = sample.image.is_some();
    let prompt = prompt_text(&sample.question, has_image);
    let prompt_ids = encode(tokenizer, special, &prompt, true)?;
    let full_ids = encode(
        tokenizer,
        special,
        &format!("{prompt} {}{}", sample.answer, toy_world::EOS),
        true,
    )?;
    if !full_ids.starts_with(&prompt_ids) || full_ids.len() <= prompt_ids.len() + 1 {
        return Err(PretrainError::Tokenizer(format!(
            "the answer `{}` does not extend the prompt's tokens",
            sample.answer
        )));
    }
    let (ids, spans) = expand_image_tokens(&full_ids, special.image, image_seq_len);
    if spans.len() != usize::from(has_image) {
        return Err(PretrainError::Tokenizer(format!(
            "{} image placeholders for {} images in `{}`",
            spans.len(),
            usize::from(has_image),
            sample.question
        )));
    }
    let answer_start = prompt_ids.len() + ids.len() - full_ids.len();
    Ok(Sequence {
        task: sample.task,
        ids,
        answer_start,
        image_span: spans.into_iter().next(),
    })
}

/// Preprocessed pixel values `[3, px, px]` (CHW, f32) of a rendered image.
pub fn pixels(image: &RgbImage, config: &PreprocessConfig) -> Result<Vec<f32>> {
    Ok(preprocess(image, config)?.data().to_vec())
}

/// A padded batch of sequences.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `[B, T]` row-major, padded at the end with `<pad>`.
    pub ids: Vec<u32>,
    pub batch: usize,
    pub len: usize,
    /// Per row, where its image features go (the image index is the row's rank among rows
    /// with an image).
    pub image_spans: Vec<Option<std::ops::Range<usize>>>,
    /// Flattened `[B·T]` indices of the positions whose next token is a target, and those
    /// targets, in the same order.
    pub target_rows: Vec<u32>,
    pub targets: Vec<u32>,
}

impl Batch {
    /// Pads `sequences` at the end to the longest.
    pub fn new(sequences: &[Sequence], pad: u32) -> Batch {
        let len = sequences.iter().map(|s| s.ids.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(sequences.len() * len);
        let mut target_rows = Vec::new();
        let mut targets = Vec::new();
        for (b, s) in sequences.iter().enumerate() {
            ids.extend_from_slice(&s.ids);
            ids.extend(std::iter::repeat_n(pad, len - s.ids.len()));
            for t in s.answer_start..s.ids.len() {
                target_rows.push((b * len + t - 1) as u32);
                targets.push(s.ids[t]);
            }
        }
        Batch {
            ids,
            batch: sequences.len(),
            len,
            image_spans: sequences.iter().map(|s| s.image_span.clone()).collect(),
            target_rows,
            targets,
        }
    }
}
/// Replaces each row's image span of `embeds` `[B, T, d]` with the next image's features.
pub(crate) fn splice_images(
    embeds: &Tensor,
    spans: &[Option<std::ops::Range<usize>>],
    features: Option<&Tensor>,
) -> Result<Tensor> {
    let Some(features) = features else {
        return Ok(embeds.clone());
    };
    let t = embeds.dim(1)?;
    let mut rows = Vec::with_capacity(spans.len());
    let mut next = 0;
    for (b, span) in spans.iter().enumerate() {
        let row = embeds.i(b)?;
        match span {
            None => rows.push(row),
            Some(span) => {
                let mut parts = Vec::with_capacity(3);
                if span.start > 0 {
                    parts.push(row.narrow(0, 0, span.start)?);
                }
                parts.push(features.i(next)?);
                if span.end < t {
                    parts.push(row.narrow(0, span.end, t - span.end)?);
                }
                next += 1;
                rows.push(Tensor::cat(&parts, 0)?);
            }
        }
    }
    Ok(Tensor::stack(&rows, 0)?)
}
