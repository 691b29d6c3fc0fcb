//! Multi-concept recognition: photos with two subjects (or one subject and a look-alike of
//! another), every labelled subject's concept active at once, each asked about.

use crate::ask::says_yes;
use crate::condition::{user_message, Condition, RECOGNITION_QUESTION};
use crate::error::Result;
use crate::metrics::{RecognitionTally, Tally};
use crate::protocol::Scorer;
use crate::report::MultiReport;

/// Scores the dataset's multi photos; `None` when it has none.
pub(crate) fn evaluate(scorer: &mut Scorer<'_>) -> Result<Option<MultiReport>> {
    let dataset = scorer.dataset;
    let index = |name: &str| dataset.subjects.iter().position(|s| s.name == name);
    let photos: Vec<_> = dataset
        .multi
        .iter()
        .filter(|m| !m.subjects.is_empty())
        .collect();
    if photos.is_empty() {
        return Ok(None);
    }
    let questions: usize = photos
        .iter()
        .map(|m| m.subjects.len() + m.lookalikes.len())
        .sum();
    scorer.progress.start("multi", questions as u64);
    let mut rec = RecognitionTally::default();
    let mut both = Tally::default();
    for photo in &photos {
        let present: Vec<usize> = photo.subjects.iter().filter_map(|s| index(s)).collect();
        let absent: Vec<usize> = photo.lookalikes.iter().filter_map(|s| index(s)).collect();
        let active: Vec<usize> = present.iter().chain(&absent).copied().collect();
        let engine = scorer.engine_with(&active)?;
        let mut all_yes = true;
        for &i in &active {
            let is_present = present.contains(&i);
            let message = user_message(
                Condition::Learned,
                &dataset.subjects[i],
                RECOGNITION_QUESTION,
            )
            .unwrap_or_default();
            let pixels = scorer.images.get(&engine, &photo.image)?;
            let yes = says_yes(&engine, &message, Some(pixels))?;
            rec.add(is_present, yes);
            all_yes &= !is_present || yes;
            scorer.progress.tick();
        }
        if present.len() >= 2 {
            both.add(all_yes);
        }
    }
    scorer.progress.finish();
    Ok(Some(MultiReport {
        photos: photos.len(),
        pair_photos: both.total,
        both_recognised: both.accuracy().unwrap_or(0.0),
        recognition: rec.scores(),
    }))
}
