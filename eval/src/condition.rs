//! The three ways of naming a subject to the model, and the prompts each one writes.
//!
//! * **vanilla**: no personal prompt; the subject is called by its name ("Can you see if Ziggy
//!   is in this photo?"). The model cannot know who Ziggy is, so this is the floor.
//! * **description**: the subject's true text description in place of the soft tokens, in the
//!   layout of the toy world's in-context name-binding task the base model was pretrained on:
//!   "Ziggy is a red star with blue dots. Can you see if Ziggy is in this photo? …".
//! * **model_description**: a description the base model wrote from the subject's training
//!   photos ([`crate::model_description`]; the paper's automated baseline) in the same layout.
//! * **learned**: the trained concept is active, so the runtime's template adds the personal
//!   prompt `<ziggy> is <ziggy:1>…<ziggy:k>.` and the question says `<ziggy>`.

use serde::Serialize;

use crate::dataset::{EvalSubject, SKS};

/// The recognition question of the protocol, with [`SKS`] for the subject.
pub const RECOGNITION_QUESTION: &str =
    "Can you see if <sks> is in this photo? Answer with a single word or phrase.";

/// How the subject is presented to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// The name alone.
    Vanilla,
    /// The true description in the prompt.
    Description,
    /// A description the base model wrote from the training photos, in the prompt.
    ModelDescription,
    /// The learned concept.
    Learned,
}

impl Condition {
    /// Every condition, in report order.
    pub const ALL: [Condition; 4] = [
        Condition::Vanilla,
        Condition::Description,
        Condition::ModelDescription,
        Condition::Learned,
    ];

    /// `vanilla`, `description`, `model_description` or `learned`.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Vanilla => "vanilla",
            Condition::Description => "description",
            Condition::ModelDescription => "model_description",
            Condition::Learned => "learned",
        }
    }
}

/// The concept identifier of a subject: `<name>`.
pub fn identifier(subject: &EvalSubject) -> String {
    format!("<{}>", subject.name)
}

/// The user message asking `template` (which names the subject as [`SKS`]) about `subject`
/// under `condition`; `None` for the description condition when the subject has none, and
/// always for [`Condition::ModelDescription`], whose text is not part of the dataset (ask
/// [`described_message`] with it).
///
/// For [`Condition::Learned`] the concept must be active in the engine that asks, which adds
/// the personal prompt in front of this message.
pub fn user_message(condition: Condition, subject: &EvalSubject, template: &str) -> Option<String> {
    match condition {
        Condition::Vanilla => Some(template.replace(SKS, &subject.text_name())),
        Condition::Description => Some(described_message(
            subject,
            subject.description.as_deref()?,
            template,
        )),
        Condition::ModelDescription => None,
        Condition::Learned => Some(template.replace(SKS, &identifier(subject))),
    }
}

/// `template` about `subject`, introduced by `description` in the layout of the toy world's
/// in-context name-binding task: "Ziggy is a red star with blue dots. Can you see if Ziggy …".
pub fn described_message(subject: &EvalSubject, description: &str, template: &str) -> String {
    let name = subject.text_name();
    format!("{name} is {description}. {}", template.replace(SKS, &name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(description: Option<&str>) -> EvalSubject {
        EvalSubject {
            name: "ziggy".into(),
            description: description.map(str::to_string),
            train_dir: "train".into(),
            train: Vec::new(),
            test: Vec::new(),
            twins: Vec::new(),
            qa: None,
        }
    }

    #[test]
    fn messages_per_condition() {
        let s = subject(Some("a red star with blue dots"));
        let ask = |c| user_message(c, &s, RECOGNITION_QUESTION).unwrap();
        assert_eq!(
            ask(Condition::Vanilla),
            "Can you see if Ziggy is in this photo? Answer with a single word or phrase."
        );
        // The exact layout of the pretraining task and of the base model's gate question.
        assert_eq!(
            ask(Condition::Description),
            "Ziggy is a red star with blue dots. Can you see if Ziggy is in this photo? \
             Answer with a single word or phrase."
        );
        assert_eq!(
            ask(Condition::Learned),
            "Can you see if <ziggy> is in this photo? Answer with a single word or phrase."
        );
        assert_eq!(
            user_message(Condition::Description, &subject(None), RECOGNITION_QUESTION),
            None
        );
        // The model-written description uses the true description's layout.
        assert_eq!(
            user_message(Condition::ModelDescription, &s, RECOGNITION_QUESTION),
            None
        );
        assert_eq!(
            described_message(&s, "a blue heart", RECOGNITION_QUESTION),
            "Ziggy is a blue heart. Can you see if Ziggy is in this photo? \
             Answer with a single word or phrase."
        );
    }
}
