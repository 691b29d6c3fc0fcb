//! Multi-concept recognition: photos with two or three subjects, or with subjects next to an
//! impostor of another (its look-alike or its twin), every labelled subject's concept active at
//! once, each asked about. Each concept was trained alone.
//!
//! Asked as the runtime asks by default, only the concept a question mentions has its
//! personal prompt in the prompt; the other active concepts act through their tokens and
//! LM-head columns. The same questions are also asked with every active concept's personal
//! prompt in the prompt ([`PersonalPrompts::All`]), with no concept (vanilla: the subject's
//! name only) and, where the dataset has them, with the true descriptions.

use concepts_runtime::prompt::PersonalPrompts;

use crate::ask::says_yes;
use crate::condition::{user_message, Condition, RECOGNITION_QUESTION};
use crate::error::Result;
use crate::metrics::{RecognitionTally, Tally};
use crate::report::{MultiReport, MultiScores};
use crate::scorer::Scorer;

/// Scores the dataset's multi photos; `None` when it has none.
pub(crate) fn evaluate(scorer: &mut Scorer<'_>) -> Result<Option<MultiReport>> {
    let photos: Vec<_> = scorer
        .dataset
        .multi
        .iter()
        .filter(|m| !m.subjects.is_empty())
        .collect();
    if photos.is_empty() {
        return Ok(None);
    }
    let questions: usize = photos
        .iter()
        .map(|m| m.subjects.len() + m.impostors().count())
        .sum();
    let described = scorer
        .dataset
        .subjects
        .iter()
        .all(|s| s.description.is_some());
    let rounds = if described { 4 } else { 3 };
    scorer.progress.start("multi", rounds * questions as u64);
    let learned = |p| (Condition::Learned, p);
    let (mentioned, counts) = scores(scorer, &photos, learned(PersonalPrompts::Mentioned))?;
    let (all_introduced, _) = scores(scorer, &photos, learned(PersonalPrompts::All))?;
    // What the base model says with no concept and no words about the subject: the floor a
    // learned concept must clear (CI asserts it does, on pairs as on single photos).
    let vanilla = scores(
        scorer,
        &photos,
        (Condition::Vanilla, PersonalPrompts::Mentioned),
    )?
    .0;
    let description = if described {
        let asked = (Condition::Description, PersonalPrompts::Mentioned);
        Some(scores(scorer, &photos, asked)?.0)
    } else {
        None
    };
    scorer.progress.finish();
    Ok(Some(MultiReport {
        photos: photos.len(),
        pair_photos: counts.pairs,
        triple_photos: counts.triples,
        impostor_questions: counts.impostor_questions,
        both_recognised: mentioned.both_recognised,
        triples_all_recognised: mentioned.triples_all_recognised,
        rejected: mentioned.rejected,
        recognition: mentioned.recognition,
        all_introduced,
        vanilla,
        description,
    }))
}

/// How many photos and questions of each kind were asked (the same whichever way the
/// concepts are introduced).
struct Counts {
    pairs: usize,
    triples: usize,
    impostor_questions: usize,
}

/// The scores of `photos` asked under `condition` (learned: with the concepts active and
/// introduced by `personal_prompts`; description: with none active), and what was asked.
fn scores(
    scorer: &mut Scorer<'_>,
    photos: &[&crate::dataset::MultiPhoto],
    (condition, personal_prompts): (Condition, PersonalPrompts),
) -> Result<(MultiScores, Counts)> {
    let dataset = scorer.dataset;
    let index = |name: &str| dataset.subjects.iter().position(|s| s.name == name);
    let mut rec = RecognitionTally::default();
    let (mut both, mut all_three, mut rejected) =
        (Tally::default(), Tally::default(), Tally::default());
    for photo in photos {
        let present: Vec<usize> = photo.subjects.iter().filter_map(|s| index(s)).collect();
        let absent: Vec<usize> = photo.impostors().filter_map(|s| index(s)).collect();
        let active: Vec<usize> = present.iter().chain(&absent).copied().collect();
        let concepts: &[usize] = if condition == Condition::Learned {
            &active
        } else {
            &[]
        };
        let mut engine = scorer.engine_with(concepts)?;
        engine.set_personal_prompts(personal_prompts);
        let mut all_yes = true;
        for &i in &active {
            let is_present = present.contains(&i);
            let message = user_message(condition, &dataset.subjects[i], RECOGNITION_QUESTION)
                .unwrap_or_default();
            let pixels = scorer.images.get(&engine, &photo.image)?;
            let yes = says_yes(&engine, &message, Some(pixels))?;
            tracing::debug!(
                photo = %photo.image.display(),
                subject = %dataset.subjects[i].name,
                ?condition,
                ?personal_prompts,
                present = is_present,
                yes,
                "multi-concept question"
            );
            rec.add(is_present, yes);
            if !is_present {
                rejected.add(!yes);
            }
            all_yes &= !is_present || yes;
            scorer.progress.tick();
        }
        match present.len() {
            2 => both.add(all_yes),
            3 => all_three.add(all_yes),
            _ => {}
        }
    }
    let scores = MultiScores {
        both_recognised: both.accuracy().unwrap_or(0.0),
        triples_all_recognised: all_three.accuracy(),
        rejected: rejected.accuracy(),
        recognition: rec.scores(),
    };
    let counts = Counts {
        pairs: both.total,
        triples: all_three.total,
        impostor_questions: rejected.total,
    };
    Ok((scores, counts))
}
