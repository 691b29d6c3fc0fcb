//! The word-level tokenizer, saved as a standard Hugging Face `tokenizer.json`.
//!
//! Layout: `WordLevel` model, no normaliser (case is kept: "Yes" and "yes" are different
//! tokens), pre-tokenizer `Sequence[WhitespaceSplit, Punctuation(isolated),
//! Digits(individual)]`, a Llama-style `TemplateProcessing` that prepends `<s>`, and a
//! decoder that joins words with spaces and glues `. , ? ! :` back to the previous word.
//!
//! Concept markers such as `<bo>` never reach the tokenizer: the runtime splices them in
//! as soft tokens, so the tokenizer only sees plain text.

use std::collections::BTreeSet;
use std::path::Path;

use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::punctuation::Punctuation;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::{Error, Result};

/// Unknown word (id 0).
pub const UNK: &str = "<unk>";
/// Beginning of sequence (id 1), added by the post-processor.
pub const BOS: &str = "<s>";
/// End of sequence (id 2).
pub const EOS: &str = "</s>";
/// Padding (id 3).
pub const PAD: &str = "<pad>";
/// Image placeholder (id 4); the runtime swaps it for the projected image features.
pub const IMAGE: &str = "<image>";
/// The special tokens, in id order.
pub const SPECIAL_TOKENS: [&str; 5] = [UNK, BOS, EOS, PAD, IMAGE];

/// The vocabulary in id order: special tokens, then every ASCII punctuation mark, the
/// digits and the words of every generator template in sorted order.
///
/// Each word appears as written, lowercased and capitalised, so sentence-initial forms are
/// covered.
pub fn vocabulary() -> Vec<String> {
    let mut words = BTreeSet::new();
    for c in (0u8..128).map(char::from) {
        if c.is_ascii_punctuation() || c.is_ascii_digit() {
            words.insert(c.to_string());
        }
    }
    for source in crate::text::vocabulary_sources() {
        for word in source.split(|c: char| !c.is_ascii_alphabetic()) {
            if word.is_empty() {
                continue;
            }
            words.insert(word.to_string());
            words.insert(word.to_ascii_lowercase());
            words.insert(crate::text::capitalise(&word.to_ascii_lowercase()));
        }
    }
    SPECIAL_TOKENS
        .iter()
        .map(|s| s.to_string())
        .chain(words)
        .collect()
}

/// Builds the tokenizer in memory.
pub fn build_tokenizer() -> Tokenizer {
    let vocab = vocabulary();
    let model = WordLevel::builder()
        .vocab(
            vocab
                .iter()
                .enumerate()
                .map(|(i, w)| (w.clone(), i as u32))
                .collect(),
        )
        .unk_token(UNK.to_string())
        .build()
        .expect("the vocabulary contains the unknown token");
    let mut tok = Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(Sequence::new(vec![
        WhitespaceSplit.into(),
        Punctuation::new(SplitDelimiterBehavior::Isolated).into(),
        Digits::new(true).into(),
    ])));
    let bos = (BOS, 1u32);
    tok.with_post_processor(Some(
        TemplateProcessing::builder()
            .try_single(format!("{BOS}:0 $A:0"))
            .expect("valid single template")
            .try_pair(format!("{BOS}:0 $A:0 {BOS}:1 $B:1"))
            .expect("valid pair template")
            .special_tokens(vec![bos])
            .build()
            .expect("the template only uses <s>"),
    ));
    tok.with_decoder(Some(DecoderSequence::new(vec![
        // Joins tokens with spaces and removes the space before . , ? !
        WordPieceDecoder::new("##".to_string(), true).into(),
        Replace::new(" :", ":").expect("literal pattern").into(),
    ])));
    let specials: Vec<AddedToken> = SPECIAL_TOKENS
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect();
    tok.add_special_tokens(&specials);
    tok
}

/// Writes the tokenizer as pretty-printed `tokenizer.json`. The bytes depend only on this
/// crate's version.
pub fn write_tokenizer(path: &Path) -> Result<()> {
    let json = build_tokenizer()
        .to_string(true)
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    std::fs::write(path, json).map_err(|source| Error::Io {
        op: "write",
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_token_ids_are_llama_like() {
        let tok = build_tokenizer();
        for (i, s) in SPECIAL_TOKENS.iter().enumerate() {
            assert_eq!(tok.token_to_id(s), Some(i as u32), "{s}");
        }
        let enc = tok.encode("Is Ziggy red?", true).unwrap();
        assert_eq!(enc.get_tokens(), ["<s>", "Is", "Ziggy", "red", "?"]);
        let enc = tok.encode("<image>\nDescribe the image.", false).unwrap();
        assert_eq!(
            enc.get_tokens(),
            ["<image>", "Describe", "the", "image", "."]
        );
    }

    #[test]
    fn system_prompt_and_roles_are_covered() {
        let tok = build_tokenizer();
        let text = format!(
            "{} USER: <image>\nIs it 12? ASSISTANT: Yes</s>",
            crate::text::SYSTEM_PROMPT
        );
        let enc = tok.encode(text.as_str(), true).unwrap();
        assert!(!enc.get_ids().contains(&0), "{:?}", enc.get_tokens());
        assert!(enc.get_tokens().contains(&"human".to_string()));
        assert_eq!(enc.get_tokens().last().map(String::as_str), Some(EOS));
    }

    #[test]
    fn unknown_words_map_to_unk() {
        let tok = build_tokenizer();
        let enc = tok.encode("Is Xylophone here?", false).unwrap();
        assert_eq!(enc.get_ids()[1], 0);
    }

    #[test]
    fn decode_glues_punctuation() {
        let tok = build_tokenizer();
        let text = "A large red star with blue dots, a small green circle and a ring.";
        let ids = tok.encode(text, true).unwrap().get_ids().to_vec();
        assert_eq!(tok.decode(&ids, true).unwrap(), text);
        let ids = tok.encode("A: star", false).unwrap().get_ids().to_vec();
        assert_eq!(tok.decode(&ids, true).unwrap(), "A: star");
    }

    #[test]
    fn json_is_stable_and_reloads() {
        let a = build_tokenizer().to_string(true).unwrap();
        let b = build_tokenizer().to_string(true).unwrap();
        assert_eq!(a, b);
        let reloaded: Tokenizer = a.parse().unwrap();
        assert_eq!(reloaded.get_vocab_size(true), vocabulary().len());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        write_tokenizer(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), a);
        Tokenizer::from_file(&path).unwrap();
    }

    #[test]
    fn names_are_single_tokens_that_collide_with_nothing() {
        let tok = build_tokenizer();
        let lower_names: BTreeSet<String> = crate::text::NAMES
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        let mut other = BTreeSet::new();
        for source in crate::text::vocabulary_sources() {
            if crate::text::NAMES.contains(&source.as_str()) {
                continue;
            }
            for w in source.split(|c: char| !c.is_ascii_alphabetic()) {
                other.insert(w.to_ascii_lowercase());
            }
        }
        for n in crate::text::NAMES {
            assert_eq!(tok.encode(*n, false).unwrap().get_ids().len(), 1, "{n}");
            assert!(
                !other.contains(&n.to_ascii_lowercase()),
                "name {n} is also a word"
            );
        }
        assert_eq!(lower_names.len(), crate::text::NAMES.len());
    }
}
