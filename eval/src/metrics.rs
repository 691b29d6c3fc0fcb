//! Counting right answers and turning counts into the paper's accuracies.
//!
//! Overall numbers are *macro* averages: the mean over subjects of each subject's accuracy,
//! as in Yo'LLaVA's tables, so a subject with more test photos does not weigh more.

use serde::Serialize;

/// Right answers out of a number of questions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Answers that were right.
    pub right: usize,
    /// Questions asked.
    pub total: usize,
}

impl Tally {
    /// Counts one answer.
    pub fn add(&mut self, right: bool) {
        self.right += usize::from(right);
        self.total += 1;
    }

    /// `right / total`, or `None` when nothing was asked.
    pub fn accuracy(&self) -> Option<f64> {
        (self.total > 0).then(|| self.right as f64 / self.total as f64)
    }
}

/// Recognition answers of one subject: its own photos (should be "Yes") and other subjects'
/// photos (should be "No").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecognitionTally {
    /// Answers on photos of the subject.
    pub positive: Tally,
    /// Answers on photos without the subject.
    pub negative: Tally,
}

impl RecognitionTally {
    /// Counts the answer `said_yes` on a photo that does (`positive`) or does not show the
    /// subject.
    pub fn add(&mut self, positive: bool, said_yes: bool) {
        if positive {
            self.positive.add(said_yes);
        } else {
            self.negative.add(!said_yes);
        }
    }

    /// The accuracies; a side with no photos counts as 0.
    pub fn scores(&self) -> RecognitionScores {
        let positive = self.positive.accuracy().unwrap_or(0.0);
        let negative = self.negative.accuracy().unwrap_or(0.0);
        RecognitionScores {
            positive,
            negative,
            weighted: weighted(positive, negative),
            positives: self.positive.total,
            negatives: self.negative.total,
        }
    }
}

/// The paper's weighted accuracy: the mean of positive and negative accuracy, so that the many
/// negatives do not drown the few positives.
pub fn weighted(positive: f64, negative: f64) -> f64 {
    (positive + negative) / 2.0
}

/// Recognition accuracies.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RecognitionScores {
    /// Accuracy on photos of the subject.
    pub positive: f64,
    /// Accuracy on photos without the subject.
    pub negative: f64,
    /// `(positive + negative) / 2`.
    pub weighted: f64,
    /// Number of positive photos asked about (summed over subjects in an overall score).
    pub positives: usize,
    /// Number of negative photos asked about.
    pub negatives: usize,
}

/// The macro average of per-subject scores; `None` for no subjects.
pub fn mean_recognition(scores: &[RecognitionScores]) -> Option<RecognitionScores> {
    if scores.is_empty() {
        return None;
    }
    let n = scores.len() as f64;
    let positive = scores.iter().map(|s| s.positive).sum::<f64>() / n;
    let negative = scores.iter().map(|s| s.negative).sum::<f64>() / n;
    Some(RecognitionScores {
        positive,
        negative,
        weighted: weighted(positive, negative),
        positives: scores.iter().map(|s| s.positives).sum(),
        negatives: scores.iter().map(|s| s.negatives).sum(),
    })
}

/// The macro average of per-subject accuracies, skipping subjects where nothing was asked;
/// `None` when nothing was asked at all.
pub fn mean_accuracy(tallies: &[Tally]) -> Option<f64> {
    let accs: Vec<f64> = tallies.iter().filter_map(Tally::accuracy).collect();
    (!accs.is_empty()).then(|| accs.iter().sum::<f64>() / accs.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(tally: RecognitionTally, expect: (f64, f64, f64)) {
        let s = tally.scores();
        assert_eq!((s.positive, s.negative, s.weighted), expect);
    }

    #[test]
    fn recognition_scores_follow_the_paper() {
        let mut t = RecognitionTally::default();
        // 3 of 4 positives said yes, 1 of 2 negatives said no.
        for yes in [true, true, true, false] {
            t.add(true, yes);
        }
        t.add(false, true);
        t.add(false, false);
        check(t, (0.75, 0.5, 0.625));
        assert_eq!((t.scores().positives, t.scores().negatives), (4, 2));

        // "Always no" scores 0.5 weighted whatever the balance of photos.
        let mut always_no = RecognitionTally::default();
        for i in 0..30 {
            always_no.add(i < 3, false);
        }
        check(always_no, (0.0, 1.0, 0.5));
        check(RecognitionTally::default(), (0.0, 0.0, 0.0));
    }

    #[test]
    fn overall_numbers_are_macro_averages() {
        let a = RecognitionScores {
            positive: 1.0,
            negative: 0.5,
            weighted: 0.75,
            positives: 10,
            negatives: 90,
        };
        let b = RecognitionScores {
            positive: 0.0,
            negative: 1.0,
            weighted: 0.5,
            positives: 2,
            negatives: 8,
        };
        let m = mean_recognition(&[a, b]).unwrap();
        assert_eq!((m.positive, m.negative, m.weighted), (0.5, 0.75, 0.625));
        assert_eq!((m.positives, m.negatives), (12, 98));
        assert!(mean_recognition(&[]).is_none());

        let t = |right, total| Tally { right, total };
        assert_eq!(mean_accuracy(&[t(1, 2), t(3, 3), t(0, 0)]), Some(0.75));
        assert_eq!(mean_accuracy(&[t(0, 0)]), None);
        let mut x = Tally::default();
        x.add(true);
        x.add(false);
        assert_eq!(x.accuracy(), Some(0.5));
    }
}
