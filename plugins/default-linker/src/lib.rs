//! concepts-default-linker: the default metadata policy.
//!
//! - [`validate`](MetadataLinker::validate) checks the shapes of a concept's metadata (name,
//!   identifier, display name, category, facts, relations) and reports every problem at once.
//! - [`link_conversation`](MetadataLinker::link_conversation) rewrites the neutral references a
//!   conversation generator used for the subject — its placeholder names ("Riley") and "this
//!   subject", "the subject", "this person" — to the identifier, in any letter case and keeping
//!   possessives ("Riley's" → "<bo>'s").
//! - [`render_context`](MetadataLinker::render_context) writes the per-request context for the active
//!   concepts: their facts, and each relation whose target is also active ("<T> is <bo>'s owner.").
//!
//! Key design choice: whole-word, case-insensitive matching on `char` boundaries and no other
//! rewriting, so text that does not mention the subject comes back byte for byte.
//!
//! Built for `wasm32-wasip2` this crate is the component `concepts.default-linker`; built for the
//! host it is the same policy as in-process Rust.

use concepts_plugin_sdk::{
    register_linker, ConceptMetadata, Context, MetadataLinker, Result, Turn,
};

/// Neutral references to the subject that generated conversations use besides placeholder names.
pub const NEUTRAL_REFERENCES: [&str; 3] = ["this subject", "the subject", "this person"];

/// The categories a concept may have.
pub const CATEGORIES: [&str; 6] = ["person", "pet", "object", "landmark", "character", "other"];

/// Longest user fact, in characters.
pub const MAX_FACT_CHARS: usize = 500;
/// Most user facts per concept.
pub const MAX_FACTS: usize = 64;
/// Most relations per concept.
pub const MAX_RELATIONS: usize = 64;

/// The default linker; see the crate docs.
pub struct DefaultLinker;

impl MetadataLinker for DefaultLinker {
    fn new() -> Self {
        DefaultLinker
    }

    fn validate(
        &mut self,
        _cx: &Context<'_>,
        metadata: &ConceptMetadata,
    ) -> Result<(), Vec<String>> {
        let problems = problems(metadata);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    fn link_conversation(
        &mut self,
        cx: &Context<'_>,
        metadata: &ConceptMetadata,
        placeholders: &[String],
        turns: Vec<Turn>,
    ) -> Result<Vec<Turn>> {
        if let Some(problem) = identifier_problem(&metadata.identifier) {
            return Err(format!("concept `{}`: {problem}", metadata.name));
        }
        let phrases = phrases(placeholders);
        let mut rewritten = 0usize;
        let linked = turns
            .into_iter()
            .map(|t| {
                let question = link_text(&t.question, &metadata.identifier, &phrases);
                let answer = link_text(&t.answer, &metadata.identifier, &phrases);
                rewritten += usize::from(question != t.question || answer != t.answer);
                Turn { question, answer }
            })
            .collect::<Vec<_>>();
        cx.debug(&format!(
            "linked {rewritten} of {} turns to `{}`",
            linked.len(),
            metadata.identifier
        ));
        Ok(linked)
    }

    fn render_context(&mut self, cx: &Context<'_>, active: &[ConceptMetadata]) -> Result<String> {
        for (i, concept) in active.iter().enumerate() {
            if let Some(problem) = problems(concept).into_iter().next() {
                return Err(format!("active concept `{}`: {problem}", concept.name));
            }
            if active[..i]
                .iter()
                .any(|c| c.identifier == concept.identifier)
            {
                return Err(format!(
                    "identifier `{}` is active twice",
                    concept.identifier
                ));
            }
        }
        let mut lines = Vec::new();
        for concept in active {
            for fact in &concept.user_facts {
                lines.push(fact_sentence(fact, concept));
            }
            for relation in &concept.relations {
                if active.iter().any(|c| c.identifier == relation.target) {
                    lines.push(format!(
                        "{} is {}'s {}.",
                        relation.target,
                        concept.identifier,
                        relation.relation.replace(['_', '-'], " ")
                    ));
                } else {
                    cx.debug(&format!(
                        "relation `{}` of `{}` skipped: `{}` is not active",
                        relation.relation, concept.identifier, relation.target
                    ));
                }
            }
        }
        Ok(lines.join("\n"))
    }
}

register_linker!(DefaultLinker);

/// Every problem with `metadata`, each naming its field; empty when it is valid.
pub fn problems(m: &ConceptMetadata) -> Vec<String> {
    let mut out = Vec::new();
    if !is_slug(&m.name) {
        out.push(format!(
            "name `{}`: expected 1 to 64 characters from a-z, 0-9, _ and -",
            m.name
        ));
    }
    if let Some(problem) = identifier_problem(&m.identifier) {
        out.push(problem);
    }
    let display_chars = m.display_name.chars().count();
    if display_chars == 0 || display_chars > 64 || m.display_name.chars().any(char::is_control) {
        out.push(format!(
            "display name `{}`: expected 1 to 64 characters without control characters",
            m.display_name.escape_debug()
        ));
    }
    if !CATEGORIES.contains(&m.category.as_str()) {
        out.push(format!(
            "category `{}`: expected one of {}",
            m.category,
            CATEGORIES.join(", ")
        ));
    }
    if m.user_facts.len() > MAX_FACTS {
        out.push(format!(
            "user facts: {} given, at most {MAX_FACTS} allowed",
            m.user_facts.len()
        ));
    }
    for (i, fact) in m.user_facts.iter().enumerate() {
        let chars = fact.chars().count();
        if fact.trim().is_empty() || chars > MAX_FACT_CHARS || fact.chars().any(char::is_control) {
            out.push(format!(
                "user fact {i}: expected 1 to {MAX_FACT_CHARS} characters of text without control characters"
            ));
        }
    }
    if m.relations.len() > MAX_RELATIONS {
        out.push(format!(
            "relations: {} given, at most {MAX_RELATIONS} allowed",
            m.relations.len()
        ));
    }
    for (i, r) in m.relations.iter().enumerate() {
        if !is_slug(&r.relation) {
            out.push(format!(
                "relation {i} `{}`: expected 1 to 64 characters from a-z, 0-9, _ and -",
                r.relation
            ));
        }
        if let Some(problem) = identifier_problem(&r.target) {
            out.push(format!("relation {i} target: {problem}"));
        } else if r.target == m.identifier {
            out.push(format!(
                "relation {i} `{}`: targets the concept itself",
                r.relation
            ));
        }
        if m.relations[..i]
            .iter()
            .any(|o| o.relation == r.relation && o.target == r.target)
        {
            out.push(format!(
                "relation {i} `{}` -> `{}`: duplicate",
                r.relation, r.target
            ));
        }
    }
    out
}

fn is_slug(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// `None` when `identifier` looks like `<bo>`: angle brackets around 1 to 32 characters without
/// whitespace or brackets.
pub fn identifier_problem(identifier: &str) -> Option<String> {
    let inner = identifier
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'));
    let ok = inner.is_some_and(|inner| {
        let n = inner.chars().count();
        (1..=32).contains(&n)
            && !inner
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
    });
    (!ok).then(|| {
        format!(
            "identifier `{}`: expected `<` and `>` around 1 to 32 characters without whitespace or brackets",
            identifier.escape_debug()
        )
    })
}

/// The phrases to rewrite: non-empty placeholders and the neutral references, longest first.
fn phrases(placeholders: &[String]) -> Vec<String> {
    let mut phrases: Vec<String> = placeholders
        .iter()
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .chain(NEUTRAL_REFERENCES.iter().map(|s| (*s).to_owned()))
        .collect();
    phrases.sort_by_key(|p| std::cmp::Reverse(p.chars().count()));
    phrases.dedup_by(|a, b| a.to_lowercase() == b.to_lowercase());
    phrases
}

/// Replaces every whole-word, case-insensitive occurrence of a phrase in `text` with `identifier`.
/// Longer phrases win; a possessive `'s` after a phrase stays.
pub fn link_text(text: &str, identifier: &str, phrases: &[String]) -> String {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let lowered: Vec<Vec<char>> = phrases
        .iter()
        .map(|p| p.chars().flat_map(char::to_lowercase).collect())
        .collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        // "O'Riley" is one word; "Bo's" ends one.
        let at_word_start = i == 0
            || !(is_word_char(chars[i - 1].1)
                || (is_apostrophe(chars[i - 1].1) && i >= 2 && is_word_char(chars[i - 2].1)));
        let matched = at_word_start
            .then(|| {
                lowered.iter().find_map(|phrase| {
                    let end = i + phrase.len();
                    let fits = end <= chars.len()
                        && chars[i..end]
                            .iter()
                            .zip(phrase)
                            .all(|(&(_, c), &p)| lower_eq(c, p));
                    let at_word_end = fits && (end == chars.len() || !is_word_char(chars[end].1));
                    at_word_end.then_some(end)
                })
            })
            .flatten();
        match matched {
            Some(end) => {
                out.push_str(identifier);
                i = end;
            }
            None => {
                out.push(chars[i].1);
                i += 1;
            }
        }
    }
    out
}

fn lower_eq(c: char, lowered: char) -> bool {
    let mut l = c.to_lowercase();
    l.next() == Some(lowered) && l.next().is_none()
}

fn is_apostrophe(c: char) -> bool {
    c == '\'' || c == '\u{2019}'
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// A fact as a sentence about the concept: neutral references become the identifier; a fact that
/// still does not mention the identifier gets it as a prefix.
fn fact_sentence(fact: &str, concept: &ConceptMetadata) -> String {
    let phrases = phrases(std::slice::from_ref(&concept.display_name));
    let mut sentence = link_text(fact.trim(), &concept.identifier, &phrases);
    if !sentence.contains(&concept.identifier) {
        sentence = format!("{}: {sentence}", concept.identifier);
    }
    if !sentence.ends_with(['.', '!', '?']) {
        sentence.push('.');
    }
    sentence
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_link(text: &str, placeholders: &[&str], expected: &str) {
        let placeholders: Vec<String> = placeholders.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(link_text(text, "<bo>", &phrases(&placeholders)), expected);
    }

    #[test]
    fn rewrites_placeholders_case_and_possessive_aware() {
        check_link(
            "Where is Riley's ball?",
            &["Riley"],
            "Where is <bo>'s ball?",
        );
        check_link(
            "RILEY sleeps; riley eats.",
            &["Riley"],
            "<bo> sleeps; <bo> eats.",
        );
        check_link("This subject is a dog.", &[], "<bo> is a dog.");
        check_link(
            "Is the subject happy? Ask this person.",
            &[],
            "Is <bo> happy? Ask <bo>.",
        );
    }

    #[test]
    fn leaves_other_words_alone() {
        check_link(
            "Rileys and O'Riley met subjects.",
            &["Riley"],
            "Rileys and O'Riley met subjects.",
        );
        check_link("Riley\u{2019}s toy", &["Riley"], "<bo>\u{2019}s toy");
        check_link("the subjective view", &[], "the subjective view");
        check_link("nothing to see", &["Riley"], "nothing to see");
    }

    #[test]
    fn longest_phrase_wins() {
        check_link("Riley Jones waved", &["Riley", "Riley Jones"], "<bo> waved");
    }

    fn bo() -> ConceptMetadata {
        ConceptMetadata {
            name: "bo".into(),
            identifier: "<bo>".into(),
            display_name: "Bo".into(),
            category: "pet".into(),
            user_facts: vec!["<bo>'s birthday is May 3".into()],
            relations: vec![concepts_plugin_sdk::Relation {
                relation: "owner".into(),
                target: "<T>".into(),
            }],
        }
    }

    #[test]
    fn valid_metadata_has_no_problems() {
        assert_eq!(problems(&bo()), Vec::<String>::new());
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let mut m = bo();
        m.name = "Bo Dog".into();
        m.identifier = "bo".into();
        m.category = "dog".into();
        m.relations.push(m.relations[0].clone());
        let p = problems(&m);
        assert_eq!(p.len(), 4, "{p:#?}");
        assert!(p[0].starts_with("name `Bo Dog`"));
        assert!(p[1].starts_with("identifier `bo`"));
        assert!(p[2].starts_with("category `dog`"));
        assert!(p[3].starts_with("relation 1 `owner` -> `<T>`: duplicate"));
    }

    #[test]
    fn identifier_shapes() {
        assert_eq!(identifier_problem("<bo>"), None);
        assert!(identifier_problem("<sks dog>").is_some());
        assert!(identifier_problem("<>").is_some());
        assert!(identifier_problem("bo").is_some());
    }
}
