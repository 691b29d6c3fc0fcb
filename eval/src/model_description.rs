//! The paper's automated description baseline (§5, "LLaVA + Personalized Description",
//! automated and summarised; Table 5's "LLaVA + Prompt, Text, ~16 tokens"): the base model
//! captions every training photo of a subject, the captions are summarised into one short
//! description, and that description takes the place of the soft tokens exactly as the true
//! description does in [`Condition::Description`](crate::Condition::Description).
//!
//! In the toy world the true description is complete (a subject *is* its shape, colours and
//! pattern), so it is an upper bound no learned concept can clearly beat. The model-written
//! description carries what the base model actually sees, misreadings included, which is what
//! the paper's automated baseline measures.
//!
//! The paper asks LLaVA to summarise its captions. The toy base model cannot summarise text,
//! so the summary here is deterministic: each caption is read back with
//! [`toy_world::text::parse_caption`]; its first object (captions list the largest first, and a
//! subject is the main object of its training photos) is that photo's description of the
//! subject; the description most photos give wins, ties going to the earliest photo. A caption
//! outside the toy world's caption layout (another base model) gives nothing.

use std::sync::atomic::{AtomicBool, Ordering};

use concepts_runtime::generate::{GenerateConfig, Sampling};
use concepts_runtime::session::Engine;
use serde::Serialize;

use crate::ask::ImageCache;
use crate::dataset::EvalSubject;
use crate::error::{EvalError, Result};

/// The caption request, the toy world's first caption question.
pub const CAPTION_QUESTION: &str = toy_world::text::CAPTION_QUESTIONS[0];

/// Most tokens of one caption; a three-object toy caption is about 25 words.
const MAX_CAPTION_TOKENS: usize = 48;

/// What the base model wrote about one subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelDescription {
    /// The summary ("a red star with blue dots"); `null` when no caption could be read.
    pub description: Option<String>,
    /// The base model's caption of each training photo, in photo order.
    pub captions: Vec<String>,
}

/// Captions every training photo of `subject` with the base model alone (greedy), calling
/// `captioned` after each, and summarises them ([`summarise`]).
pub fn write(
    engine: &Engine,
    subject: &EvalSubject,
    images: &mut ImageCache,
    captioned: &mut dyn FnMut(),
    cancel: &AtomicBool,
) -> Result<ModelDescription> {
    if !engine.concepts().is_empty() {
        return Err(EvalError::Setting(
            "the model-written description must come from the base model alone".into(),
        ));
    }
    let gen = GenerateConfig {
        max_tokens: MAX_CAPTION_TOKENS,
        sampling: Sampling::Greedy,
        stop_ids: engine.stop_ids(),
        prompt_logits: false,
    };
    let mut captions = Vec::with_capacity(subject.train.len());
    for photo in &subject.train {
        if cancel.load(Ordering::Relaxed) {
            return Err(EvalError::Cancelled);
        }
        let pixels = images.get(engine, photo)?.clone();
        let prompt = engine.chat_prompt(CAPTION_QUESTION, Some(pixels));
        let caption = engine.generate(&prompt, &gen, &mut |_| {})?.text;
        captions.push(caption.trim().to_string());
        captioned();
    }
    Ok(ModelDescription {
        description: summarise(&captions),
        captions,
    })
}

/// The description of the main object that most captions give (ties: the earliest caption),
/// in the true descriptions' form ("a red star with blue dots"); `None` when no caption is in
/// the toy world's caption layout.
pub fn summarise(captions: &[String]) -> Option<String> {
    let mains: Vec<toy_world::Combo> = captions
        .iter()
        .filter_map(|c| {
            toy_world::text::parse_caption(c)?
                .first()
                .map(|&(_, combo)| combo)
        })
        .collect();
    // `max_by_key` keeps the last maximum, so scan in reverse to let the earliest win ties.
    let count = |combo: &toy_world::Combo| mains.iter().filter(|m| *m == combo).count();
    mains
        .iter()
        .rev()
        .max_by_key(|m| count(m))
        .map(|m| m.description())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_main_object_most_captions_name_wins() {
        let captions = strings(&[
            "A large red diamond with black stripes and a small white triangle.",
            "A large white triangle and a medium red diamond with black stripes.",
            "A medium red diamond with black stripes.",
            "not a caption",
            "A large black diamond with red stripes.",
        ]);
        assert_eq!(
            summarise(&captions).as_deref(),
            Some("a red diamond with black stripes")
        );
    }

    #[test]
    fn ties_go_to_the_earliest_photo_and_nothing_readable_gives_none() {
        let captions = strings(&[
            "A small blue heart.",
            "A large green ring with a red border.",
        ]);
        assert_eq!(summarise(&captions).as_deref(), Some("a blue heart"));
        assert_eq!(summarise(&strings(&["Yes", ""])), None);
        assert_eq!(summarise(&[]), None);
    }
}
