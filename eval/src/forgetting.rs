//! Forgetting: exact-match accuracy on the toy world's generic pretraining tasks (captions,
//! attributes, existence, counting, name binding) with 0, 1 and 5 concepts active.
//!
//! Each count is run the way the runtime asks by default ([`PersonalPrompts::Mentioned`]: the
//! generic questions mention no concept, so the concepts act only through their tokens and
//! LM-head columns, which can steal the argmax) and, for comparison, with every active
//! concept's personal prompt before each question ([`PersonalPrompts::All`]), which measures
//! how much an unrelated `<sks> is <sks:1>….` disturbs the base model. It only means
//! something for a base model pretrained on the toy world.

use std::collections::BTreeMap;

use concepts_runtime::generate::{GenerateConfig, Sampling};
use concepts_runtime::preprocess::preprocess;
use concepts_runtime::prompt::PersonalPrompts;
use rand::SeedableRng;
use toy_world::{ImageSize, TaskKind, TaskMix};

use crate::error::{EvalError, Result};
use crate::report::{ForgettingReport, ForgettingRun};
use crate::scorer::Scorer;

/// The seed of the generic questions (the same for every run, so runs are comparable).
const SEED: u64 = 0x5eed_f0e7;

/// The numbers of active concepts compared.
const COUNTS: [usize; 3] = [0, 1, 5];

fn task_name(kind: TaskKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{kind:?}"))
}

/// Runs `per_task` questions of every generic task with 0, 1 and 5 concepts active (fewer
/// when the dataset has fewer subjects).
pub(crate) fn evaluate(scorer: &mut Scorer<'_>, per_task: usize) -> Result<ForgettingReport> {
    let available = scorer.weights.len();
    let mut counts: Vec<usize> = COUNTS.iter().map(|&n| n.min(available)).collect();
    counts.dedup();
    let runs_wanted: Vec<(usize, PersonalPrompts)> = counts
        .iter()
        .map(|&n| (n, PersonalPrompts::Mentioned))
        .chain(
            counts
                .iter()
                .filter(|&&n| n > 0)
                .map(|&n| (n, PersonalPrompts::All)),
        )
        .collect();
    let px = scorer.base.model().config().vision.image_size as u32;
    let size = ImageSize::new(px).unwrap_or(ImageSize::DEFAULT);
    scorer.progress.start(
        "forgetting",
        (runs_wanted.len() * TaskKind::ALL.len() * per_task) as u64,
    );
    let mut runs = Vec::new();
    for (n, personal_prompts) in runs_wanted {
        let indices: Vec<usize> = (0..n).collect();
        let mut engine = scorer.engine_with(&indices)?;
        engine.set_personal_prompts(personal_prompts);
        let (mut right, mut total) = (0usize, 0usize);
        let mut tasks = BTreeMap::new();
        for (k, kind) in TaskKind::ALL.into_iter().enumerate() {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(SEED ^ (k as u64 + 1));
            let mut task_right = 0;
            for _ in 0..per_task {
                if scorer.cancel.load(std::sync::atomic::Ordering::Relaxed) {
                    return Err(EvalError::Cancelled);
                }
                let sample = toy_world::sample(&mut rng, &TaskMix::only(kind), size);
                let pixels = match &sample.image {
                    Some(img) => {
                        Some(preprocess(img, engine.preprocess_config()).map_err(|e| {
                            EvalError::Setting(format!("preprocessing a generic task image: {e}"))
                        })?)
                    }
                    None => None,
                };
                let want = engine.codec().encode(&sample.answer, false)?;
                let cfg = GenerateConfig {
                    max_tokens: want.len() + 2,
                    sampling: Sampling::Greedy,
                    stop_ids: engine.stop_ids(),
                    prompt_logits: false,
                };
                let prompt = engine.chat_prompt(&sample.question, pixels);
                let got = engine.generate(&prompt, &cfg, &mut |_| {})?;
                task_right += usize::from(got.generated_ids == want);
                scorer.progress.tick();
            }
            right += task_right;
            total += per_task;
            tasks.insert(task_name(kind), task_right as f64 / per_task.max(1) as f64);
        }
        runs.push(ForgettingRun {
            concepts: n,
            personal_prompts,
            accuracy: right as f64 / total.max(1) as f64,
            tasks,
        });
    }
    scorer.progress.finish();
    Ok(ForgettingReport { per_task, runs })
}
