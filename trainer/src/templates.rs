//! The question templates of stage 2: Yo'LLaVA's recognition Q/A (appendix F, 30 positive and
//! 30 negative, verbatim) and the attribute questions of the conversation data (section 3.3 /
//! appendix G: ten human-related questions about "Riley", ten subject-related ones about
//! "this subject").
//!
//! `<sks>` stands for the concept identifier and is replaced before tokenizing.

/// The id of this template set, recorded in package provenance.
pub const TEMPLATE_SET_ID: &str = "yollava-f30/g10-v1";

/// The file in a model folder that holds the model's own recognition phrasing (see
/// [`TemplateSet::for_model`]).
pub const MODEL_TEMPLATES_FILE: &str = "concepts_templates.json";

/// The recognition question/answer pairs a concept is trained with, and optionally the
/// attribute questions of its conversation data.
///
/// Yo'LLaVA's 30 + 30 (appendix F) suit a base model instruction-tuned on open English. A base
/// model may instead ship the phrasing it was tuned on in `concepts_templates.json` next to
/// its `config.json`: the toy model does, because its word-level vocabulary lacks most of the
/// paper's words and it was taught one-word answers.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSet {
    /// Recorded in package provenance.
    pub id: String,
    /// (question, answer) pairs for photos that show the subject.
    pub positive: Vec<(String, String)>,
    /// (question, answer) pairs for photos that do not.
    pub negative: Vec<(String, String)>,
    /// Attribute questions for the conversation data. Empty: Yo'LLaVA's questions, asked as
    /// trained.
    #[serde(default)]
    pub subject_questions: Vec<SubjectQuestion>,
    /// The model's multiple-choice layout, with `{question}`, `{a}` and `{b}`: with it, each
    /// answer of a subject question that has `options` also becomes an A/B question against
    /// another option.
    #[serde(default)]
    pub choice_format: Option<String>,
}

/// One attribute question of the conversation data.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectQuestion {
    /// Asked of the base model about each positive photo.
    pub ask: String,
    /// Trained with the base model's answer; names the subject `this subject`, which the
    /// linker rewrites to the identifier.
    pub train: String,
    /// The answers this question can have (lowercase), for A/B questions.
    #[serde(default)]
    pub options: Vec<String>,
}

impl TemplateSet {
    /// The A/B question of `question` with options `a` and `b`, if the set has a layout.
    pub fn choice(&self, question: &str, a: &str, b: &str) -> Option<String> {
        self.choice_format.as_ref().map(|f| {
            f.replace("{question}", question)
                .replace("{a}", a)
                .replace("{b}", b)
        })
    }
}

impl TemplateSet {
    /// Yo'LLaVA's templates.
    pub fn yollava() -> TemplateSet {
        let own = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(q, a)| (q.to_string(), a.to_string()))
                .collect()
        };
        TemplateSet {
            id: TEMPLATE_SET_ID.to_string(),
            positive: own(&POSITIVE),
            negative: own(&NEGATIVE),
            subject_questions: Vec::new(),
            choice_format: None,
        }
    }

    /// The templates of the model in `dir`: its `concepts_templates.json` if it has one
    /// (validated: both lists non-empty, every question naming `<sks>`, no empty answer),
    /// else Yo'LLaVA's.
    pub fn for_model(dir: &std::path::Path) -> Result<TemplateSet, String> {
        let path = dir.join(MODEL_TEMPLATES_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::yollava()),
            Err(e) => return Err(format!("reading `{}`: {e}", path.display())),
        };
        let t: TemplateSet = serde_json::from_str(&text)
            .map_err(|e| format!("`{}` is not a template set: {e}", path.display()))?;
        for (kind, list) in [("positive", &t.positive), ("negative", &t.negative)] {
            if list.is_empty() {
                return Err(format!("`{}` has no {kind} templates", path.display()));
            }
            if let Some((q, _)) = list
                .iter()
                .find(|(q, a)| !q.contains(SKS) || a.trim().is_empty())
            {
                return Err(format!(
                    "`{}`: the {kind} template `{q}` must name {SKS} and have an answer",
                    path.display()
                ));
            }
        }
        if let Some(q) = t
            .subject_questions
            .iter()
            .map(|q| &q.train)
            .find(|q| !NEUTRAL_SUBJECT.iter().any(|n| q.contains(n)))
        {
            return Err(format!(
                "`{}`: the subject question `{q}` must name the subject as `this subject`",
                path.display()
            ));
        }
        if let Some(f) = &t.choice_format {
            if !["{question}", "{a}", "{b}"].iter().all(|k| f.contains(k)) {
                return Err(format!(
                    "`{}`: choice_format must contain {{question}}, {{a}} and {{b}}",
                    path.display()
                ));
            }
        }
        if t.id.trim().is_empty() {
            return Err(format!("`{}` has an empty id", path.display()));
        }
        Ok(t)
    }
}

/// How trained subject questions name a non-person subject (the linker rewrites it).
const NEUTRAL_SUBJECT: [&str; 1] = ["this subject"];

/// The placeholder for the identifier in the templates.
pub const SKS: &str = "<sks>";

/// The gender-neutral name the conversation questions use for a person (appendix G).
pub const PERSON_PLACEHOLDER: &str = "Riley";

/// The question recognition accuracy is measured with; its answer is one word, "Yes" or "No".
pub const EVAL_QUESTION: &str = "Is <sks> in this photo? Answer with a single word or phrase.";

/// Positive recognition templates (question, answer): the image shows the subject.
pub const POSITIVE: [(&str, &str); 30] = [
    ("Is <sks> in this photo?", "Yes, <sks> is in this photo."),
    (
        "Can you tell if <sks> appears in this picture?",
        "Yes, <sks> appears in this picture.",
    ),
    (
        "Could you check whether <sks> is in the image?",
        "<sks> is indeed in the image.",
    ),
    (
        "Do you see <sks> anywhere in this snapshot?",
        "<sks> is visible in this snapshot.",
    ),
    (
        "Is there a chance <sks> could be in this photo?",
        "Absolutely, <sks> is in this photo.",
    ),
    (
        "Would you happen to know if <sks> is shown in this photograph?",
        "<sks> is shown in this photograph.",
    ),
    (
        "Can you see <sks> in this photo?",
        "Yes, I can confirm that <sks> is indeed in the photo.",
    ),
    (
        "Have you spotted <sks> in this photo?",
        "I have spotted <sks> in this photo.",
    ),
    (
        "Is that <sks> in the photo there?",
        "That is <sks> in the photo.",
    ),
    ("Is <sks> in this image?", "Yes, <sks> is in this image."),
    (
        "Am I seeing <sks> in this picture?",
        "Yes, you are seeing <sks> in this picture.",
    ),
    (
        "Does this photo include <sks>?",
        "This photo includes <sks>.",
    ),
    (
        "Is <sks> featured in this photo?",
        "<sks> is featured in this photo.",
    ),
    (
        "Can you point out <sks> in this photo?",
        "Certainly, <sks> is right here in the photo.",
    ),
    (
        "Is <sks> visible in this photo?",
        "<sks> is visible in this photo.",
    ),
    (
        "Check if <sks> is in this photo for me, will you?",
        "After checking, yes, <sks> is in this photo.",
    ),
    (
        "Hey AI, can you tell me if you see <sks> in this photo?",
        "Yes, I can confirm that <sks> is indeed in the photo.",
    ),
    (
        "Do you recognize <sks> in this photo?",
        "I do recognize <sks> in this photo.",
    ),
    (
        "I'm looking for <sks>, is <sks> in this photo?",
        "Yes, <sks> is in this photo.",
    ),
    (
        "Can you see if <sks> is in this photo?",
        "Yes, <sks> is indeed in the photo.",
    ),
    (
        "This photo, does it have <sks>?",
        "This photo does have <sks>.",
    ),
    (
        "Could you confirm if this is <sks> in the photo?",
        "I can confirm that this is <sks> in the photo.",
    ),
    (
        "Any chance that <sks> might be in this photo?",
        "Yes, <sks> is definitely in this photo.",
    ),
    (
        "Can you recognize if <sks> is in this photo?",
        "Yes, <sks> is indeed in the photo.",
    ),
    (
        "I think I see <sks>, is it so?",
        "You're correct, that is <sks> you see in the photo.",
    ),
    (
        "Has <sks> been captured in this photo?",
        "<sks> has been captured in this photo.",
    ),
    (
        "<sks>'s in this photo, right?",
        "Yes, <sks>'s in this photo.",
    ),
    (
        "Is <sks> present in this particular photo?",
        "<sks> is present in this particular photo.",
    ),
    (
        "Hey AI, can you tell me if you recognize <sks> in this photo?",
        "Yes, I can see <sks> in the photo.",
    ),
    (
        "Can you see if <sks> is in this photo?",
        "Yes, <sks> is in this photo.",
    ),
];

/// Negative recognition templates (question, answer): the image does not show the subject.
pub const NEGATIVE: [(&str, &str); 30] = [
    ("Is <sks> in this photo?", "No, <sks> is not in this photo."),
    (
        "Can you tell if <sks> appears in this picture?",
        "No, <sks> is not in this picture.",
    ),
    (
        "Could you check whether <sks> is in the image?",
        "<sks> is not in the image.",
    ),
    (
        "Do you see <sks> anywhere in this snapshot?",
        "<sks> does not appear in this snapshot.",
    ),
    (
        "Is there a chance <sks> could be in this photo?",
        "There's no indication that <sks> is in this photo.",
    ),
    (
        "Would you happen to know if <sks> is shown in this photograph?",
        "<sks> is not shown in the photograph.",
    ),
    (
        "Can you recognize if <sks> is in this photo?",
        "I have analyzed the image, and <sks> is not present in the photo.",
    ),
    (
        "Have you spotted <sks> in this photo?",
        "I have not spotted <sks> in this photo.",
    ),
    (
        "Is that <sks> in the photo there?",
        "That is not <sks> in the photo.",
    ),
    (
        "Can you check if <sks> is in this photo?",
        "I've analyzed the photo, and <sks> is not present in the image you provided.",
    ),
    (
        "Am I seeing <sks> in this picture?",
        "You are not seeing <sks> in this picture.",
    ),
    (
        "Does this photo include <sks>?",
        "This photo does not include <sks>.",
    ),
    (
        "Is <sks> featured in this photo?",
        "<sks> is not featured in this photo.",
    ),
    (
        "Can you point out <sks> in this photo?",
        "I can't point out <sks> because <sks> isn't in the photo.",
    ),
    (
        "Is <sks> visible in this photo?",
        "<sks> is not visible in this photo.",
    ),
    (
        "Check if <sks> is in this photo for me, will you?",
        "After checking, <sks> is not in this photo.",
    ),
    (
        "Can you see <sks> in this photo?",
        "I've analyzed the image, and <sks> is not present in the photo.",
    ),
    (
        "Do you recognize <sks> in this photo?",
        "I do not recognize <sks> in this photo.",
    ),
    (
        "I'm looking for <sks>, is <sks> in this photo?",
        "<sks> is not in this photo.",
    ),
    (
        "Is there any sign of <sks> in this photo?",
        "There is no sign of <sks> in this photo.",
    ),
    (
        "This photo, does it have <sks>?",
        "This photo does not have <sks>.",
    ),
    (
        "Could you confirm if this is <sks> in the photo?",
        "I can confirm that this is not <sks> in the photo.",
    ),
    (
        "Can you see if <sks> is in this photo?",
        "I've searched the image, and <sks> is not present in the photo.",
    ),
    (
        "Is <sks> part of the group in this photo?",
        "<sks> is not part of the group in this photo.",
    ),
    (
        "I think I see <sks>, is it so?",
        "You do not see <sks>, as <sks> is not in the photo.",
    ),
    (
        "Has <sks> been captured in this photo?",
        "<sks> has not been captured in this photo.",
    ),
    (
        "<sks>'s in this photo, right?",
        "No, <sks>'s not in this photo.",
    ),
    (
        "Is <sks> present in this particular photo?",
        "<sks> is not present in this particular photo.",
    ),
    (
        "I can't find <sks>, is <sks> in the photo?",
        "You can't find <sks> because <sks> is not in the photo.",
    ),
    ("Is <sks> in this image?", "No, <sks> is not in this image."),
];

/// Attribute questions about a person, who is called [`PERSON_PLACEHOLDER`].
pub const HUMAN_QUESTIONS: [&str; 10] = [
    "What is the hair color of Riley?",
    "What is the hairstyle of Riley?",
    "What is the skin tone of Riley?",
    "What is the eye color of Riley?",
    "Is Riley wearing glasses?",
    "What is Riley wearing?",
    "What is the approximate age of Riley?",
    "What is the facial expression of Riley?",
    "Describe the facial features of Riley.",
    "Describe Riley in detail.",
];

/// Attribute questions about any other subject, called "this subject".
pub const SUBJECT_QUESTIONS: [&str; 10] = [
    "What color is this subject?",
    "What shape does this subject have?",
    "What pattern is on this subject?",
    "What material is this subject made of?",
    "What is the size of this subject?",
    "What kind of thing is this subject?",
    "What is the texture of this subject?",
    "What is the overall vibe of this subject?",
    "What are the most distinctive features of this subject?",
    "Describe this subject in detail.",
];

/// Questions that turn a user fact into a text-only sample; `<sks>` is the identifier.
pub const FACT_QUESTIONS: [&str; 3] = [
    "What do you know about <sks>?",
    "Tell me something about <sks>.",
    "What else can you tell me about <sks>?",
];

/// `template` with every `<sks>` replaced by `identifier`.
pub fn fill(template: &str, identifier: &str) -> String {
    template.replace(SKS, identifier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_without_a_template_file_gets_yollavas_and_a_bad_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            TemplateSet::for_model(dir.path()).unwrap(),
            TemplateSet::yollava()
        );
        let file = dir.path().join(MODEL_TEMPLATES_FILE);
        for (text, needle) in [
            (
                r#"{"id": "x", "positive": [], "negative": [["Is <sks> here?", "No"]]}"#,
                "no positive",
            ),
            (
                r#"{"id": "x", "positive": [["Is it here?", "Yes"]], "negative": [["Is <sks> here?", "No"]]}"#,
                "must name",
            ),
            (
                r#"{"id": "x", "positive": [["Is <sks> here?", "Yes"]], "negative": [["Is <sks> here?", "No"]], "choice_format": "{question}"}"#,
                "choice_format",
            ),
            (
                r#"{"id": "x", "positive": [["Is <sks> here?", "Yes"]], "negative": [["Is <sks> here?", "No"]], "subject_questions": [{"ask": "What colour is it?", "train": "What colour is it?"}]}"#,
                "this subject",
            ),
            (
                r#"{"id": "x", "positive": [["Is <sks> here?", "Yes"]], "negative": [["Is <sks> here?", "No"]], "extra": 1}"#,
                "not a template set",
            ),
        ] {
            std::fs::write(&file, text).unwrap();
            let err = TemplateSet::for_model(dir.path()).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
        std::fs::write(
            &file,
            r#"{"id": "mine", "positive": [["Is <sks> here?", "Yes"]], "negative": [["Is <sks> here?", "No"]],
                "subject_questions": [{"ask": "What colour is the object?", "train": "What colour is this subject?", "options": ["red", "blue"]}],
                "choice_format": "{question} A: {a} B: {b}"}"#,
        )
        .unwrap();
        let set = TemplateSet::for_model(dir.path()).unwrap();
        assert_eq!(set.id, "mine");
        assert_eq!(
            set.choice("Q?", "red", "blue").unwrap(),
            "Q? A: red B: blue"
        );
    }

    #[test]
    fn every_recognition_template_names_the_subject_in_question_and_answer() {
        for (q, a) in POSITIVE.iter().chain(NEGATIVE.iter()) {
            assert!(q.contains(SKS) && a.contains(SKS), "{q} / {a}");
        }
        assert!(NEGATIVE.iter().all(|(_, a)| !a.starts_with("Yes")));
        assert_eq!(
            fill(EVAL_QUESTION, "<bo>"),
            "Is <bo> in this photo? Answer with a single word or phrase."
        );
        assert!(HUMAN_QUESTIONS
            .iter()
            .all(|q| q.contains(PERSON_PLACEHOLDER)));
        assert!(SUBJECT_QUESTIONS.iter().all(|q| q.contains("this subject")));
    }
}
