//! Recognition: one concept at a time ([`recognise_one`]) and the concept scan
//! ([`recognise_all`]), which shares the prompt prefix between concepts.
//!
//! Each concept is asked its own recognition prompt with only itself active, exactly as
//! [`recognise_one`] asks it, so the scan's answers are those of the one-by-one calls. The
//! `llava_v1/yollava-1` prompt is `{system} USER: <image>\n<bo> is <bo:1>…. {question}
//! ASSISTANT:`: the token ids up to the first concept token are the same for every concept
//! (system text, role, image positions). That prefix is run once — vision tower included —
//! into a [`KvCache`](crate::model::KvCache); each concept then runs only its suffix on a copy-on-write clone.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::error::{Result, RuntimeError};
use crate::ops::Kernels;
use crate::preprocess::PixelValues;
use crate::session::{Engine, PromptInput};

use super::resident::ResidentConcept;
use super::{active, check, ConceptScore, Inner};

/// The recognition prompt text for the concept active in `engine`.
fn prompt_text(inner: &Inner, engine: &Engine, identifier: &str) -> String {
    let question = inner.config.recognition_question.replace("{}", identifier);
    engine.conversation().prompt(&question, true)
}

/// p(Yes) / p(No) for one concept: the whole prompt, vision tower included.
pub(super) fn recognise_one(
    inner: &Inner,
    concept: &Arc<ResidentConcept>,
    pixels: PixelValues,
) -> Result<ConceptScore> {
    let engine = inner.engine_for(std::slice::from_ref(concept))?;
    let text = prompt_text(inner, &engine, &concept.entry.identifier);
    let r = engine.recognize(&PromptInput {
        text,
        images: vec![pixels],
    })?;
    Ok(ConceptScore {
        concept: active(concept),
        p_yes: r.p_yes,
        p_no: r.p_no,
    })
}

/// [`recognise_one`] for every concept, with the shared prefix computed once.
pub(super) fn recognise_all(
    inner: &Inner,
    pixels: &PixelValues,
    concepts: &[Arc<ResidentConcept>],
    cancel: &AtomicBool,
) -> Result<Vec<ConceptScore>> {
    if concepts.is_empty() {
        return Ok(Vec::new());
    }
    let mut engines = Vec::with_capacity(concepts.len());
    let mut prompts = Vec::with_capacity(concepts.len());
    for concept in concepts {
        let engine = inner.engine_for(std::slice::from_ref(concept))?;
        let text = prompt_text(inner, &engine, &concept.entry.identifier);
        prompts.push(engine.tokenize_prompt(&text, 1)?);
        engines.push(engine);
    }
    let base = &inner.base;
    let model = base.model();
    let vocab = model.config().text.vocab_size as u32;
    let shared = shared_prefix(prompts.iter().map(|(ids, _)| &ids[..]), vocab);
    let (first_ids, spans) = &prompts[0];
    let image_end = spans.iter().map(|s| s.end).max().unwrap_or(0);
    if image_end == 0 || shared < image_end {
        return Err(RuntimeError::Prompt(format!(
            "the recognition prompts share {shared} tokens, which do not cover the image \
             (positions up to {image_end})"
        )));
    }
    check(cancel)?;
    let features = base.image_features(std::slice::from_ref(pixels))?;
    let embeds = base.embed_with_features(&first_ids[..shared], spans, Some(&features))?;
    let mut prefix = model.kv_cache();
    model.forward_embeds(&embeds.unsqueeze(0)?, Some(&mut prefix), Kernels::Fast)?;
    tracing::debug!(
        concepts = concepts.len(),
        prefix = shared,
        "scan prefix computed"
    );
    let mut scores = Vec::with_capacity(concepts.len());
    for ((engine, (ids, _)), concept) in engines.iter().zip(&prompts).zip(concepts) {
        check(cancel)?;
        let r = engine.recognize_after_prefix(&prefix, ids)?;
        scores.push(ConceptScore {
            concept: active(concept),
            p_yes: r.p_yes,
            p_no: r.p_no,
        });
    }
    Ok(scores)
}

/// The number of leading positions all prompts share, stopping before the first id at or
/// past `vocab` (concept ids: the same id means different concepts in different prompts)
/// and leaving every prompt at least one position of its own.
fn shared_prefix<'a>(mut prompts: impl Iterator<Item = &'a [u32]>, vocab: u32) -> usize {
    let Some(first) = prompts.next() else {
        return 0;
    };
    let mut shared = first
        .iter()
        .position(|&id| id >= vocab)
        .unwrap_or(first.len())
        .min(first.len().saturating_sub(1));
    for ids in prompts {
        let common = first.iter().zip(ids).take_while(|(a, b)| a == b).count();
        shared = shared.min(common).min(ids.len().saturating_sub(1));
    }
    shared
}

#[cfg(test)]
mod tests {
    use super::shared_prefix;

    #[test]
    fn the_shared_prefix_stops_at_concept_ids_and_leaves_a_suffix() {
        let a: &[u32] = &[1, 5, 6, 7, 100, 101, 8];
        let b: &[u32] = &[1, 5, 6, 7, 100, 102, 9];
        let c: &[u32] = &[1, 5, 6, 9, 100];
        assert_eq!(shared_prefix([a, b].into_iter(), 100), 4);
        assert_eq!(shared_prefix([a, b, c].into_iter(), 100), 3);
        assert_eq!(shared_prefix([a].into_iter(), 1000), 6);
        assert_eq!(shared_prefix([&a[..2], a].into_iter(), 1000), 1);
        assert_eq!(shared_prefix(std::iter::empty(), 100), 0);
    }
}
