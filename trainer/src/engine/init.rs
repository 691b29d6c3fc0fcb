//! How the concept rows start ([`Init`]) and the rows each choice gives

use candle_core::{DType, Tensor};
use concepts_plugin_api::SampleKind;
use serde::{Deserialize, Serialize};

use super::state::Moments;
use super::{ConceptParams, TrainingEngine};
use crate::error::{Result, TrainError};

/// How the concept rows start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Init {
    /// Gaussian rows with the spread of the base embedding table (the reference).
    Random,
    /// Every row starts at the mean projected visual token of the positives.
    Visual,
    /// Every row starts at this word's embedding (mean over its tokens), the head column at the
    /// word's LM-head row.
    Word(String),
    /// The latent rows start at the embeddings of this text's tokens, in order and repeated
    /// until the k rows are full, so the personal prompt `<sks> is <sks:1>…<sks:k>.` starts out
    /// saying the text ("<sks> is a red star with blue dots a red star …"); the identifier
    /// row and the head column start as in [`Init::Random`]. Given a description of the
    /// subject (the base model's own, see `concepts-eval`), training starts where that prompt
    /// ends and has only what words miss left to learn.
    Text(String),
}

impl Init {
    /// `random`, `visual`, `word:WORD` or `text:TEXT`.
    pub fn parse(text: &str) -> Option<Init> {
        let arg = |prefix: &str| {
            text.strip_prefix(prefix)
                .filter(|w| !w.trim().is_empty())
                .map(str::to_string)
        };
        match text {
            "random" => Some(Init::Random),
            "visual" => Some(Init::Visual),
            _ => arg("word:")
                .map(Init::Word)
                .or_else(|| arg("text:").map(Init::Text)),
        }
    }

    pub fn label(&self) -> String {
        match self {
            Init::Random => "random".to_string(),
            Init::Visual => "visual".to_string(),
            Init::Word(w) => format!("word:{w}"),
            Init::Text(t) => format!("text:{t}"),
        }
    }
}

impl TrainingEngine<'_> {
    /// Starts a new run: the initial rows and zero AdamW moments
    pub(super) fn start_fresh(&mut self) -> Result<()> {
        self.params = self.initial_params()?;
        let z = |t: &Tensor| t.zeros_like();
        self.moments = Moments {
            m_rows: z(&self.params.rows)?,
            v_rows: z(&self.params.rows)?,
            m_head: z(&self.params.head)?,
            v_head: z(&self.params.head)?,
            t: 0,
        };
        Ok(())
    }

    pub(super) fn initial_params(&mut self) -> Result<ConceptParams> {
        let model = self.session.model();
        let (k, d) = (self.cfg.k, model.config().text.hidden_size);
        let device = model.device().clone();
        let embed_std = model.embed_weight().std()?;
        let head_std = model.lm_head_weight().std()?;
        let noise = |shape: &[usize], seed: u64, scale: f64| -> Result<Tensor> {
            Ok((concepts_runtime::optim::randn(shape, seed, DType::F32, &device)? * scale)?)
        };
        let seed = self.cfg.seed ^ 0x1a2b_3c4d;
        let rows_noise = noise(&[k + 1, d], seed, embed_std)?;
        let head = noise(&[d], seed + 1, head_std)?;
        Ok(match self.cfg.init.clone() {
            Init::Random => ConceptParams {
                rows: rows_noise,
                head,
            },
            Init::Visual => {
                let mut sum: Option<Tensor> = None;
                // The photos, not their crowded views (the subject small among other objects).
                let photos = self.data.photos();
                for i in 0..photos {
                    let f = self
                        .features(SampleKind::Positive, i as u32, false)?
                        .to_dtype(DType::F32)?
                        .mean(0)?;
                    sum = Some(match sum {
                        Some(s) => (s + f)?,
                        None => f,
                    });
                }
                let mean =
                    (sum.ok_or_else(|| TrainError::Input("no positives".into()))? / photos as f64)?;
                ConceptParams {
                    rows: (mean.unsqueeze(0)?.broadcast_as((k + 1, d))? + (rows_noise * 0.1)?)?,
                    head,
                }
            }
            Init::Word(word) => {
                let ids = self.session.codec().encode(&word, false)?;
                let ids: Vec<u32> = ids.into_iter().filter(|&i| i < self.base_vocab).collect();
                if ids.is_empty() {
                    return Err(TrainError::Input(format!(
                        "the initialisation word `{word}` has no tokens"
                    )));
                }
                let idx = Tensor::new(ids.as_slice(), &device)?;
                let emb = model
                    .embed_weight()
                    .rows(&idx)?
                    .to_dtype(DType::F32)?
                    .mean(0)?;
                let out = model
                    .lm_head_weight()
                    .rows(&idx)?
                    .to_dtype(DType::F32)?
                    .mean(0)?;
                ConceptParams {
                    rows: (emb.unsqueeze(0)?.broadcast_as((k + 1, d))? + (rows_noise * 0.1)?)?,
                    head: out,
                }
            }
            Init::Text(text) => {
                let ids = self.known_ids(&text)?;
                let cycled: Vec<u32> = ids.iter().copied().cycle().take(k).collect();
                let idx = Tensor::new(cycled.as_slice(), &device)?;
                let latents = model.embed_weight().rows(&idx)?.to_dtype(DType::F32)?;
                let identifier = rows_noise.narrow(0, 0, 1)?;
                ConceptParams {
                    rows: Tensor::cat(&[&identifier, &latents], 0)?,
                    head,
                }
            }
        })
    }

    /// The ids of `text` in the base vocabulary, refusing text the tokenizer does not know
    /// (a word-level vocabulary turns unknown words into `<unk>`, which says nothing).
    pub(super) fn known_ids(&self, text: &str) -> Result<Vec<u32>> {
        let codec = self.session.codec();
        if !codec.represents(text)? {
            return Err(TrainError::Input(format!(
                "the initialisation text `{text}` has words the base model's tokenizer lacks"
            )));
        }
        let ids: Vec<u32> = codec
            .encode(text, false)?
            .into_iter()
            .filter(|&i| i < self.base_vocab)
            .collect();
        if ids.is_empty() {
            return Err(TrainError::Input(format!(
                "the initialisation text `{text}` has no tokens"
            )));
        }
        Ok(ids)
    }
}
