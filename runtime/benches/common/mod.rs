//! What the inference benchmarks share: the greedy prefill and decode loops they time.

use std::error::Error;

use candle_core::{DType, IndexOp, Tensor};
use concepts_runtime::generate::{Sampler, Sampling};
use concepts_runtime::session::{Engine, PromptInput};
use concepts_runtime::{Kernels, KvCache};

pub type BenchResult<T> = Result<T, Box<dyn Error>>;

pub fn argmax(logits: &Tensor) -> BenchResult<u32> {
    let values = logits.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    Ok(Sampler::new(Sampling::Greedy).sample(&values)?)
}

/// Prompt to first token into the empty `cache`: returns it filled and the first generated id.
pub fn prefill(
    engine: &Engine,
    prompt: &PromptInput,
    mut cache: KvCache,
) -> BenchResult<(KvCache, u32)> {
    let model = engine.model();
    let embedded = engine.embed_prompt(prompt)?;
    let t = embedded.ids.len();
    let hidden = model
        .forward_embeds(
            &embedded.embeds.unsqueeze(0)?,
            Some(&mut cache),
            Kernels::Fast,
        )?
        .squeeze(0)?;
    let logits = engine
        .concepts()
        .logits(model, &hidden.i(t - 1..t)?)?
        .squeeze(0)?;
    Ok((cache, argmax(&logits)?))
}

/// `n` greedy decode steps after `first`; returns the new ids.
pub fn decode(engine: &Engine, cache: &mut KvCache, first: u32, n: usize) -> BenchResult<Vec<u32>> {
    let model = engine.model();
    let table = engine.concepts();
    let mut ids = Vec::with_capacity(n);
    let mut next = first;
    for _ in 0..n {
        let embed = table.embed_ids(model, &[next])?.unsqueeze(0)?;
        let hidden = model.forward_embeds(&embed, Some(cache), Kernels::Fast)?;
        let logits = table.logits(model, &hidden.i((0, 0..1))?)?.squeeze(0)?;
        next = argmax(&logits)?;
        ids.push(next);
    }
    Ok(ids)
}
