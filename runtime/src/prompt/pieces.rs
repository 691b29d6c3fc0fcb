//! Tokenizing a prompt piece by piece between concept markers, each distinct piece once.
//!
//! A tokenizer splits its input at added tokens before it normalises, pre-tokenizes or runs
//! its model, and then tokenizes each piece on its own, knowing only whether the piece starts
//! the text (Llama's `Metaspace(prepend_scheme="first")` gives only that piece the `▁`
//! prefix). So the ids of a text are its markers' ids and its pieces' ids in order, and a piece
//! that recurs need not be tokenized again. Every prompt of a concept chat recurs in most of
//! its text: the system text before the first marker, ` is ` and `. ` around each concept's
//! latents; only the question is new. Tokenizing the whole text instead runs each of the
//! k + 2 or more pieces per concept through the tokenizer's pipeline and merges their
//! encodings every time (about half again the time of a plain prompt of the same length).
//!
//! The pieces are cut where the tokenizer would cut them only under conditions checked when
//! the codec is built ([`Pieces::new`]): no truncation or padding, every added token of the base
//! tokenizer either free of `<` and `>` or itself of the form `<…>` (so none can overlap a
//! marker, which is `<…>` without inner brackets), special tokens that the post-processor only
//! puts around the text, and a few probe texts that tokenize the same both ways. Otherwise
//! the codec tokenizes whole texts, as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokenizers::Tokenizer;

/// Distinct pieces kept per codec; the cache is emptied when it is full. With
/// [`MAX_PIECE_BYTES`] a codec keeps at most about 128 KiB (a server keeps up to 256 codecs).
const MAX_PIECES: usize = 128;
/// Longer pieces (a long question, a pasted document) are tokenized but not kept; the
/// system text before the first marker is about 200 bytes.
const MAX_PIECE_BYTES: usize = 512;

/// (piece starts the text, piece) → its ids.
type PieceIds = HashMap<(bool, Box<str>), Arc<[u32]>>;

/// A codec's markers and the ids of the pieces of text seen between them.
pub(super) struct Pieces {
    /// Marker text → runtime id.
    markers: HashMap<String, u32>,
    /// A marker put before a piece that does not start the text (so the tokenizer sees it
    /// where it stands), and the marker's id in the codec's tokenizer.
    lead: (String, u32),
    /// What the post-processor puts before and after a text's ids.
    specials: (Vec<u32>, Vec<u32>),
    cache: Mutex<PieceIds>,
}

impl Pieces {
    /// Pieces for `tokenizer` (which has the markers as added tokens) with `markers` (marker
    /// text, id in `tokenizer`, runtime id), or `None` when a text's ids cannot be assembled
    /// from its pieces for this tokenizer (see the module docs).
    pub(super) fn new(tokenizer: &Tokenizer, markers: &[(String, u32, u32)]) -> Option<Self> {
        let (lead, lead_local, _) = markers.first()?.clone();
        if tokenizer.get_truncation().is_some() || tokenizer.get_padding().is_some() {
            return None;
        }
        let bracketed = |s: &str| {
            s.len() > 2
                && s.starts_with('<')
                && s.ends_with('>')
                && !s[1..s.len() - 1].contains(['<', '>'])
        };
        if markers.iter().any(|(m, _, _)| !bracketed(m)) {
            return None;
        }
        let base_safe = tokenizer
            .get_added_tokens_decoder()
            .values()
            .all(|t| !t.content.contains(['<', '>']) || bracketed(&t.content));
        if !base_safe {
            return None;
        }
        let whole = |text: &str, special: bool| -> Option<Vec<u32>> {
            Some(tokenizer.encode(text, special).ok()?.get_ids().to_vec())
        };
        // The post-processor's specials, found around a probe word.
        let full = whole("a", true)?;
        let bare = whole("a", false)?;
        let at = (0..=full.len().checked_sub(bare.len())?)
            .find(|&i| full[i..i + bare.len()] == bare[..])?;
        let pieces = Pieces {
            markers: markers
                .iter()
                .map(|(m, _, runtime)| (m.clone(), *runtime))
                .collect(),
            lead: (lead.clone(), lead_local),
            specials: (full[..at].to_vec(), full[at + bare.len()..].to_vec()),
            cache: Mutex::new(HashMap::new()),
        };
        // Probes: markers at the start, the end, side by side, after spaces and words, inside
        // brackets and next to the base tokenizer's own added tokens.
        let m = &lead;
        // The base's first and last added tokens (`<unk>`, `<s>`, `</s>`, `<image>`…; a
        // tokenizer may have hundreds, such as byte-fallback pieces, and building a codec
        // must stay cheap: it happens when a concept set is first used).
        let mut base: Vec<(u32, String)> = tokenizer
            .get_added_tokens_decoder()
            .into_iter()
            .map(|(id, t)| (id, t.content))
            .collect();
        base.sort();
        let few = base.iter().take(3).chain(base.iter().skip(3).rev().take(2));
        let beside_base: String = few.map(|(_, t)| format!("{t}{m} w{t} ")).collect();
        let probes = [
            String::new(),
            format!("a {m} is {m}{m}. b {m}"),
            format!("{m} {m}\n{m} . <{m}> x<y {m}>"),
            beside_base,
        ];
        let to_runtime: HashMap<u32, u32> = markers.iter().map(|(_, l, r)| (*l, *r)).collect();
        for probe in &probes {
            for special in [false, true] {
                let expected: Vec<u32> = whole(probe, special)?
                    .into_iter()
                    .map(|id| to_runtime.get(&id).copied().unwrap_or(id))
                    .collect();
                if pieces.encode(tokenizer, probe, special).ok()? != expected {
                    tracing::debug!(probe, "marker pieces disagree with whole-text tokenization");
                    return None;
                }
            }
        }
        pieces.cache.lock().expect("piece cache").clear();
        Some(pieces)
    }

    /// The runtime ids of `text`, as the codec's tokenizer gives them for the whole text.
    pub(super) fn encode(
        &self,
        tokenizer: &Tokenizer,
        text: &str,
        add_special_tokens: bool,
    ) -> tokenizers::Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3 + 4);
        if add_special_tokens {
            out.extend_from_slice(&self.specials.0);
        }
        let mut piece_start = 0;
        let mut from = 0;
        while let Some(lt) = text[from..].find('<').map(|i| from + i) {
            // A marker has no inner brackets: the candidate ends at the next `>`, unless a `<`
            // comes first.
            let end = text[lt + 1..]
                .find(['<', '>'])
                .map(|i| lt + 1 + i)
                .filter(|&i| text.as_bytes()[i] == b'>');
            match end.and_then(|end| self.markers.get(&text[lt..=end]).map(|&id| (end, id))) {
                Some((end, id)) => {
                    self.piece(tokenizer, text, piece_start..lt, &mut out)?;
                    out.push(id);
                    piece_start = end + 1;
                    from = end + 1;
                }
                None => from = lt + 1,
            }
        }
        self.piece(tokenizer, text, piece_start..text.len(), &mut out)?;
        if add_special_tokens {
            out.extend_from_slice(&self.specials.1);
        }
        Ok(out)
    }

    /// Appends the ids of `text[range]`, a piece without markers.
    fn piece(
        &self,
        tokenizer: &Tokenizer,
        text: &str,
        range: std::ops::Range<usize>,
        out: &mut Vec<u32>,
    ) -> tokenizers::Result<()> {
        if range.is_empty() {
            return Ok(());
        }
        let first = range.start == 0;
        let piece = &text[range];
        let key = (first, Box::<str>::from(piece));
        if let Some(ids) = self.cache.lock().expect("piece cache").get(&key) {
            out.extend_from_slice(ids);
            return Ok(());
        }
        let ids: Arc<[u32]> = if first {
            tokenizer.encode(piece, false)?.get_ids().into()
        } else {
            // Behind a marker, as in the text: the tokenizer cuts the marker off and sees the
            // piece where it stands (not at the start).
            let (lead, lead_id) = &self.lead;
            let enc = tokenizer.encode(format!("{lead}{piece}"), false)?;
            match enc.get_ids().split_first() {
                Some((id, rest)) if id == lead_id => rest.into(),
                _ => return Err(format!("marker `{lead}` was not cut off `{piece}`").into()),
            }
        };
        out.extend_from_slice(&ids);
        if piece.len() <= MAX_PIECE_BYTES {
            let mut cache = self.cache.lock().expect("piece cache");
            if cache.len() >= MAX_PIECES {
                cache.clear();
            }
            cache.insert(key, ids);
        }
        Ok(())
    }
}
