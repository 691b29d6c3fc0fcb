//! Concept-aware prompts: the versioned chat template and the tokenizer around it.
//!
//! A personalised subject `<bo>` is written in text with *markers*: its identifier `<bo>`
//! and its latent tokens `<bo:1>` … `<bo:k>`. The runtime owns their token ids (they come
//! right after the model's vocabulary, see `concept_table`); the base tokenizer does not know
//! them and is never modified or written back.
//!
//! # How text around markers is tokenized
//!
//! Yo'LLaVA registers its tokens with `tokenizer.add_tokens(...)`; transformers then splits
//! the text on those added tokens *before* normalisation and pre-tokenisation, and tokenizes
//! each remaining piece knowing where it sits in the original text. For Llama-style
//! `Metaspace(prepend_scheme="first")` tokenizers this matters: only a piece at offset 0 gets
//! the `▁` word prefix, so `<bo:16>. What` gives `.` `▁What`, not `▁.` `▁What` as tokenizing
//! `". What"` on its own would. [`TextCodec`] reproduces exactly this by giving a private copy
//! of the base tokenizer the active markers as added tokens (`normalized = false`, not
//! special), encoding the whole text once, and mapping the copy's marker ids to the
//! runtime's concept ids. Where it is provably the same (checked when the codec is built, see
//! `pieces`), the codec assembles those ids from the pieces between markers, tokenizing each
//! distinct piece once: a concept chat's system text and personal prompts recur in every
//! request.
//!
//! `normalized = false` is transformers' behaviour for `add_special_tokens` and is identical
//! to `add_tokens` for tokenizers without a normalizer (Llama-2 non-legacy, byte-level BPE).
//! For legacy tokenizers whose normalizer prepends `▁`, transformers would only match a
//! normalised added token after a space; we deliberately always recognise markers instead.
//! The parity fixture checks both spellings against transformers.
//!
//! # Template `llava_v1/yollava-1`
//!
//! LLaVA's `conv_llava_v1` (`SeparatorStyle.TWO`, separators `" "` and `"</s>"`):
//!
//! ```text
//! {system} USER: <image>\n<bo> is <bo:1>…<bo:16>. {question} ASSISTANT:
//! ```
//!
//! with one `<T> is <T:1>…<T:k>.` sentence per introduced concept, `<image>\n` only when an
//! image is given, and earlier exchanges rendered as `USER: {q} ASSISTANT: {a}</s>`.
//!
//! # Which active concepts are introduced
//!
//! An active concept always has its token ids and LM-head column; its personal prompt is
//! written only where [`PersonalPrompts`] says. The runtime's default,
//! [`PersonalPrompts::Mentioned`], introduces the concepts whose identifier appears in the
//! conversation, so a question that does not concern an installed concept gets exactly the
//! prompt it would get without it (and a prompt does not grow by the k + 3 or more tokens of
//! each installed concept's sentence). [`PersonalPrompts::All`] introduces every active concept, as the trainer does
//! and as a question like "Who is in this photo?" needs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use tokenizers::{AddedToken, Tokenizer};

use crate::error::{Result, RuntimeError};

mod pieces;

/// The template id recorded in concept package manifests.
pub const TEMPLATE_ID: &str = "llava_v1/yollava-1";

/// The system text of LLaVA-1.5's `conv_llava_v1`.
pub const LLAVA_V1_SYSTEM: &str = "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions.";

/// The image placeholder of llava-hf prompts.
pub const IMAGE_MARKER: &str = "<image>";

/// The text markers of one concept: `<name>` and `<name:1>` … `<name:k>`.
///
/// Invariant: the identifier is `<`, a non-empty name without `<`, `>`, `:` or whitespace,
/// and `>`; `k >= 1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConceptMarkers {
    identifier: String,
    latents: Vec<String>,
}

impl ConceptMarkers {
    /// Markers for `identifier` (e.g. `<bo>`) with `k` latent tokens.
    pub fn new(identifier: &str, k: usize) -> Result<Self> {
        let name = identifier
            .strip_prefix('<')
            .and_then(|s| s.strip_suffix('>'))
            .filter(|n| {
                !n.is_empty()
                    && !n
                        .chars()
                        .any(|c| matches!(c, '<' | '>' | ':') || c.is_whitespace())
            })
            .ok_or_else(|| {
                RuntimeError::Prompt(format!(
                    "concept identifier `{identifier}` is not of the form `<name>` \
                     (name without `<`, `>`, `:` or spaces)"
                ))
            })?;
        if k == 0 {
            return Err(RuntimeError::Prompt(format!(
                "concept `{identifier}` has no latent tokens"
            )));
        }
        Ok(Self {
            identifier: identifier.to_string(),
            latents: (1..=k).map(|i| format!("<{name}:{i}>")).collect(),
        })
    }

    /// The identifier marker, e.g. `<bo>`.
    pub fn identifier(&self) -> &str {
        &self.identifier
    }

    /// The latent markers `<bo:1>` … `<bo:k>`.
    pub fn latents(&self) -> &[String] {
        &self.latents
    }

    /// Identifier then latents: the order of the concept's token ids.
    pub fn all(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.identifier.as_str()).chain(self.latents.iter().map(String::as_str))
    }

    /// The Yo'LLaVA personal prompt `<bo> is <bo:1>…<bo:k>.`.
    pub fn personal_prompt(&self) -> String {
        format!("{} is {}.", self.identifier, self.latents.concat())
    }
}

/// Which active concepts get their personal prompt `<bo> is <bo:1>…<bo:k>.`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PersonalPrompts {
    /// Those whose identifier appears in a message or answer of the conversation.
    #[default]
    Mentioned,
    /// All of them, mentioned or not.
    All,
}

/// One finished exchange of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// The user's message, without markers for images or concepts.
    pub user: String,
    /// Whether this user message carried an image.
    pub image: bool,
    /// The assistant's answer.
    pub assistant: String,
}

/// A `llava_v1/yollava-1` conversation: active concepts and the exchanges so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    concepts: Vec<ConceptMarkers>,
    personal_prompts: PersonalPrompts,
    history: Vec<Exchange>,
}

impl Conversation {
    /// A new conversation about `concepts` (possibly none), introducing all of them
    /// ([`PersonalPrompts::All`]).
    pub fn new(concepts: Vec<ConceptMarkers>) -> Self {
        Self {
            concepts,
            personal_prompts: PersonalPrompts::All,
            history: Vec::new(),
        }
    }

    /// The same conversation, introducing the concepts `personal_prompts` selects.
    pub fn with_personal_prompts(mut self, personal_prompts: PersonalPrompts) -> Self {
        self.personal_prompts = personal_prompts;
        self
    }

    /// The active concepts whose personal prompt a prompt asking `question` next contains.
    pub fn introduced(&self, question: &str) -> Vec<&ConceptMarkers> {
        let mentioned = |c: &ConceptMarkers| {
            let id = c.identifier();
            question.contains(id)
                || self
                    .history
                    .iter()
                    .any(|e| e.user.contains(id) || e.assistant.contains(id))
        };
        self.concepts
            .iter()
            .filter(|c| self.personal_prompts == PersonalPrompts::All || mentioned(c))
            .collect()
    }

    /// The active concepts.
    pub fn concepts(&self) -> &[ConceptMarkers] {
        &self.concepts
    }

    /// The finished exchanges.
    pub fn history(&self) -> &[Exchange] {
        &self.history
    }

    /// Records a finished exchange.
    pub fn push(&mut self, exchange: Exchange) {
        self.history.push(exchange);
    }

    /// The prompt asking `question` next, ending in `ASSISTANT:`. The personal prompts of
    /// the [introduced](Self::introduced) concepts go into the first user message.
    pub fn prompt(&self, question: &str, image: bool) -> String {
        let introduced = self.introduced(question);
        let mut out = format!("{LLAVA_V1_SYSTEM} ");
        let turns = self
            .history
            .iter()
            .map(|e| (e.user.as_str(), e.image, Some(e.assistant.as_str())))
            .chain(std::iter::once((question, image, None)));
        for (i, (user, image, answer)) in turns.enumerate() {
            let mut msg = String::new();
            if image {
                msg.push_str(IMAGE_MARKER);
                msg.push('\n');
            }
            if i == 0 {
                for c in &introduced {
                    msg.push_str(&c.personal_prompt());
                    msg.push(' ');
                }
            }
            msg.push_str(user);
            out.push_str("USER: ");
            out.push_str(&msg);
            out.push(' ');
            match answer {
                Some(a) => {
                    out.push_str("ASSISTANT: ");
                    out.push_str(a);
                    out.push_str("</s>");
                }
                None => out.push_str("ASSISTANT:"),
            }
        }
        out
    }
}

/// A runtime token id for a marker string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MarkerId {
    pub marker: String,
    pub id: u32,
}

/// Text ↔ token ids for the base tokenizer plus the active concept markers.
///
/// See the module docs for how text around markers is tokenized.
#[derive(Clone)]
pub struct TextCodec {
    tokenizer: Tokenizer,
    source: PathBuf,
    to_runtime: HashMap<u32, u32>,
    from_runtime: HashMap<u32, u32>,
    /// Marker text by runtime id, for markers that decode as themselves whatever comes
    /// before them (checked when the codec is built), so a text stream appends them without
    /// decoding.
    verbatim: HashMap<u32, String>,
    /// (marker, id in `tokenizer`, runtime id) of each marker.
    markers: Arc<[(String, u32, u32)]>,
    /// Tokenizes texts with markers piece by piece, each distinct piece once; `None` without
    /// markers or where that would not give the whole text's ids (`pieces`). Built on the
    /// first encode (probing costs a few encodes, and many codecs never encode: a concept
    /// activated and deactivated, a codec built to decode).
    pieces: OnceLock<Option<Arc<pieces::Pieces>>>,
}

impl std::fmt::Debug for TextCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextCodec")
            .field("source", &self.source)
            .field("markers", &self.to_runtime.len())
            .finish()
    }
}

/// Loads `tokenizer.json`.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path).map_err(|e| RuntimeError::Tokenizer {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

impl TextCodec {
    /// A codec over `base` (loaded from `source`, used in messages) knowing `markers`.
    ///
    /// Marker ids must not collide with each other; they are normally past the base vocabulary.
    pub fn new(base: &Tokenizer, source: &Path, markers: &[MarkerId]) -> Result<Self> {
        let mut tokenizer = base.clone();
        let mut to_runtime = HashMap::new();
        let mut from_runtime = HashMap::new();
        if !markers.is_empty() {
            let added: Vec<AddedToken> = markers
                .iter()
                .map(|m| AddedToken::from(m.marker.clone(), false).normalized(false))
                .collect();
            tokenizer.add_tokens(&added);
            for m in markers {
                let local =
                    tokenizer
                        .token_to_id(&m.marker)
                        .ok_or_else(|| RuntimeError::Tokenizer {
                            path: source.to_path_buf(),
                            msg: format!("marker `{}` was not registered", m.marker),
                        })?;
                if to_runtime.insert(local, m.id).is_some()
                    || from_runtime.insert(m.id, local).is_some()
                {
                    return Err(RuntimeError::Prompt(format!(
                        "marker `{}` (id {}) is given twice",
                        m.marker, m.id
                    )));
                }
            }
        }
        let marker_ids = markers
            .iter()
            .map(|m| (m.marker.clone(), from_runtime[&m.id], m.id))
            .collect();
        let mut codec = Self {
            tokenizer,
            source: source.to_path_buf(),
            to_runtime,
            from_runtime,
            verbatim: HashMap::new(),
            markers: marker_ids,
            pieces: OnceLock::new(),
        };
        // A marker is verbatim when it decodes as itself alone and after an ordinary word
        // (the decoder neither strips, joins nor rewrites it).
        let word = codec.encode("a", false)?;
        let before = codec.decode(&word)?;
        for m in markers {
            let alone = codec.decode(&[m.id])?;
            let after = codec.decode(&[word.as_slice(), &[m.id]].concat())?;
            if alone == m.marker && after == format!("{before}{}", m.marker) {
                codec.verbatim.insert(m.id, m.marker.clone());
            }
        }
        Ok(codec)
    }

    /// The text of marker `id` when it decodes as itself wherever it stands.
    pub fn verbatim_marker(&self, id: u32) -> Option<&str> {
        self.verbatim.get(&id).map(String::as_str)
    }

    fn tok_err(&self, e: impl std::fmt::Display) -> RuntimeError {
        RuntimeError::Tokenizer {
            path: self.source.clone(),
            msg: e.to_string(),
        }
    }

    /// Token ids of `text`; with `add_special_tokens` the tokenizer's post-processor adds
    /// BOS (and whatever else it adds). Markers become the runtime's concept ids.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let pieces = self
            .pieces
            .get_or_init(|| pieces::Pieces::new(&self.tokenizer, &self.markers).map(Arc::new));
        if let Some(pieces) = pieces {
            return pieces
                .encode(&self.tokenizer, text, add_special_tokens)
                .map_err(|e| self.tok_err(e));
        }
        self.encode_whole(text, add_special_tokens)
    }

    /// [`TextCodec::encode`] by running the whole text through the tokenizer.
    fn encode_whole(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| self.tok_err(e))?;
        Ok(enc
            .get_ids()
            .iter()
            .map(|id| self.to_runtime.get(id).copied().unwrap_or(*id))
            .collect())
    }

    /// Text of `ids`, skipping special tokens (BOS, EOS, `<image>`) and rendering concept
    /// ids as their markers. Ids unknown to the tokenizer are dropped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let local: Vec<u32> = ids
            .iter()
            .map(|id| self.from_runtime.get(id).copied().unwrap_or(*id))
            .collect();
        self.tokenizer
            .decode(&local, true)
            .map_err(|e| self.tok_err(e))
    }

    /// The single token of `text` as the model would emit it at the start of an answer
    /// (`"Yes"` → `▁Yes` for Llama), or its first token when it splits.
    pub fn answer_token(&self, text: &str) -> Result<u32> {
        self.encode(text, false)?
            .first()
            .copied()
            .ok_or_else(|| RuntimeError::Prompt(format!("`{text}` has no tokens")))
    }

    /// Whether `text` tokenizes without the unknown token `<unk>`. A word-level vocabulary
    /// such as the toy model's maps every word it lacks to `<unk>`, and a prompt full of
    /// them teaches nothing; a tokenizer without an `<unk>` token represents everything.
    pub fn represents(&self, text: &str) -> Result<bool> {
        let Some(unk) = self.tokenizer.token_to_id("<unk>") else {
            return Ok(true);
        };
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| self.tok_err(e))?;
        Ok(!enc.get_ids().contains(&unk))
    }

    /// The id of a special or added token such as `<image>` or `</s>`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }
}

/// Replaces each `image_token_id` with `per_image` copies, as transformers' processor does
/// with the `<image>` string; returns the ids and the position range of each image.
pub fn expand_image_tokens(
    ids: &[u32],
    image_token_id: u32,
    per_image: usize,
) -> (Vec<u32>, Vec<std::ops::Range<usize>>) {
    let mut out = Vec::with_capacity(ids.len() + per_image);
    let mut spans = Vec::new();
    for &id in ids {
        if id == image_token_id {
            spans.push(out.len()..out.len() + per_image);
            out.extend(std::iter::repeat_n(id, per_image));
        } else {
            out.push(id);
        }
    }
    (out, spans)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids assembled from marker-free pieces (each tokenized once) equal the whole text's ids,
    /// on the parity fixture's Llama tokenizer and the toy model's word-level one, over random
    /// texts of markers, near-markers, the tokenizers' own added tokens, words, spaces and
    /// multi-byte characters.
    #[test]
    fn pieces_between_markers_tokenize_as_the_whole_text() {
        use rand::{Rng, SeedableRng};
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let markers: Vec<MarkerId> = ["<bo>", "<bo:1>", "<bo:2>", "<bo:10>", "<T>", "<T:1>"]
            .iter()
            .enumerate()
            .map(|(i, m)| MarkerId {
                marker: m.to_string(),
                id: 50_000 + i as u32,
            })
            .collect();
        let fragments = [
            "<bo>",
            "<bo:1>",
            "<bo:2>",
            "<bo:10>",
            "<T>",
            "<T:1>",
            "<bo:3>",
            "<bo",
            "bo>",
            "<bo:>",
            "<<",
            ">",
            "<",
            "<image>",
            "</s>",
            "<s>",
            "<unk>",
            " is ",
            "is",
            "a",
            "dog",
            "Hello",
            "red",
            " ",
            "  ",
            "\n",
            ".",
            ",",
            "?",
            "é",
            "😀",
            "▁",
            "USER:",
            " ASSISTANT:",
        ];
        for path in [
            root.join("tests/fixtures/parity/model/tokenizer.json"),
            root.join("../models/toy-llava/tokenizer.json"),
        ] {
            let tokenizer = load_tokenizer(&path).expect("tokenizer");
            let codec = TextCodec::new(&tokenizer, &path, &markers).expect("codec");
            codec.encode("", false).expect("first encode");
            assert!(
                matches!(codec.pieces.get(), Some(Some(_))),
                "{}: no piecewise path",
                path.display()
            );
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
            for _ in 0..1500 {
                let n = rng.random_range(0..24);
                let text: String = (0..n)
                    .map(|_| fragments[rng.random_range(0..fragments.len())])
                    .collect();
                for special in [false, true] {
                    let whole = codec.encode_whole(&text, special).expect("whole");
                    // Twice: the second time every piece comes from the cache.
                    for _ in 0..2 {
                        let pieces = codec.encode(&text, special).expect("pieces");
                        assert_eq!(pieces, whole, "{}: {text:?}", path.display());
                    }
                }
            }
        }
    }

    #[test]
    fn markers_and_personal_prompt() {
        let m = ConceptMarkers::new("<bo>", 3).expect("valid");
        assert_eq!(
            m.all().collect::<Vec<_>>(),
            ["<bo>", "<bo:1>", "<bo:2>", "<bo:3>"]
        );
        assert_eq!(m.personal_prompt(), "<bo> is <bo:1><bo:2><bo:3>.");
        for bad in ["bo", "<>", "<b o>", "<bo:1>", "<<bo>"] {
            let err = ConceptMarkers::new(bad, 3).unwrap_err().to_string();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
        assert!(ConceptMarkers::new("<bo>", 0).is_err());
    }

    #[test]
    fn llava_v1_single_turn_layouts() {
        let bo = ConceptMarkers::new("<bo>", 2).expect("valid");
        let t = ConceptMarkers::new("<T>", 2).expect("valid");
        let conv = Conversation::new(vec![bo.clone(), t]);
        assert_eq!(
            conv.prompt("Where is <bo>?", true),
            format!(
                "{LLAVA_V1_SYSTEM} USER: <image>\n<bo> is <bo:1><bo:2>. <T> is <T:1><T:2>. \
                 Where is <bo>? ASSISTANT:"
            )
        );
        let plain = Conversation::new(vec![]);
        assert_eq!(
            plain.prompt("Hi", false),
            format!("{LLAVA_V1_SYSTEM} USER: Hi ASSISTANT:")
        );
    }

    #[test]
    fn llava_v1_multi_turn_uses_both_separators() {
        let mut conv = Conversation::new(vec![ConceptMarkers::new("<bo>", 1).expect("valid")]);
        conv.push(Exchange {
            user: "Who is <bo>?".into(),
            image: true,
            assistant: "A dog.".into(),
        });
        assert_eq!(
            conv.prompt("And now?", false),
            format!(
                "{LLAVA_V1_SYSTEM} USER: <image>\n<bo> is <bo:1>. Who is <bo>? ASSISTANT: A dog.</s>\
                 USER: And now? ASSISTANT:"
            )
        );
    }

    #[test]
    fn mentioned_concepts_only_are_introduced() {
        let bo = ConceptMarkers::new("<bo>", 1).expect("valid");
        let t = ConceptMarkers::new("<T>", 1).expect("valid");
        let bob = ConceptMarkers::new("<bob>", 1).expect("valid");
        let conv = Conversation::new(vec![bo.clone(), t.clone(), bob])
            .with_personal_prompts(PersonalPrompts::Mentioned);
        assert_eq!(
            conv.prompt("What colour is the star?", true),
            format!("{LLAVA_V1_SYSTEM} USER: <image>\nWhat colour is the star? ASSISTANT:"),
            "an unmentioned concept leaves the prompt as it is without concepts"
        );
        assert_eq!(
            conv.prompt("Is <T> with <bo>?", false),
            format!("{LLAVA_V1_SYSTEM} USER: <bo> is <bo:1>. <T> is <T:1>. Is <T> with <bo>? ASSISTANT:"),
            "mentioned concepts keep their activation order; `<bob>` is not `<bo>`"
        );
        // A mention in any earlier message or answer introduces the concept in the first message.
        let mut conv = conv;
        conv.push(Exchange {
            user: "Who is here?".into(),
            image: false,
            assistant: "<T>.".into(),
        });
        assert_eq!(
            conv.prompt("Thanks", false),
            format!(
                "{LLAVA_V1_SYSTEM} USER: <T> is <T:1>. Who is here? ASSISTANT: <T>.</s>\
                 USER: Thanks ASSISTANT:"
            )
        );
        let all = Conversation::new(vec![t]).with_personal_prompts(PersonalPrompts::All);
        assert_eq!(
            all.prompt("Hi", false),
            format!("{LLAVA_V1_SYSTEM} USER: <T> is <T:1>. Hi ASSISTANT:")
        );
    }

    #[test]
    fn expand_image_tokens_reports_spans() {
        let (ids, spans) = expand_image_tokens(&[1, 9, 5, 9], 9, 3);
        assert_eq!(ids, [1, 9, 9, 9, 5, 9, 9, 9]);
        assert_eq!(spans, [1..4, 5..8]);
    }
}
