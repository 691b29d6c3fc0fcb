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
    /// The latent rows start at the positives' mean [`object_token`] (MC-LLaVA's idea: the
    /// subject's own visual tokens); the identifier row and the head column as in
    /// [`Init::Random`].
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
    /// The latent rows spell this text once (at most k − 1 tokens), and the rest start at the
    /// positives' mean [`object_token`]: the words a description has and a view of what it
    /// misses. The identifier row and the head column as in [`Init::Random`].
    TextVisual(String),
}

impl Init {
    /// `random`, `visual`, `word:WORD`, `text:TEXT` or `text-visual:TEXT`.
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
                .or_else(|| arg("text:").map(Init::Text))
                .or_else(|| arg("text-visual:").map(Init::TextVisual)),
        }
    }

    pub fn label(&self) -> String {
        match self {
            Init::Random => "random".to_string(),
            Init::Visual => "visual".to_string(),
            Init::Word(w) => format!("word:{w}"),
            Init::Text(t) => format!("text:{t}"),
            Init::TextVisual(t) => format!("text-visual:{t}"),
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

    /// The mean [`object_token`] of the photos (not their crowded views, where the subject is
    /// small among other objects).
    fn photos_object_token(&mut self) -> Result<Tensor> {
        let photos = self.data.photos();
        let mut sum: Option<Tensor> = None;
        for i in 0..photos {
            let f = self.features(SampleKind::Positive, i as u32, false)?;
            let f = object_token(&f)?;
            sum = Some(match sum {
                Some(s) => (s + f)?,
                None => f,
            });
        }
        Ok((sum.ok_or_else(|| TrainError::Input("no positives".into()))? / photos as f64)?)
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
                let object = self.photos_object_token()?;
                // The identifier row starts as in `Init::Random`; the latents at the object
                // token, with a little of the noise so the rows can part.
                let latents = (object.unsqueeze(0)?.broadcast_as((k, d))?
                    + (rows_noise.narrow(0, 1, k)? * 0.1)?)?;
                ConceptParams {
                    rows: Tensor::cat(&[rows_noise.narrow(0, 0, 1)?, latents], 0)?,
                    head,
                }
            }
            Init::TextVisual(text) => {
                let mut ids = self.known_ids(&text)?;
                ids.truncate(k - 1);
                let idx = Tensor::new(ids.as_slice(), &device)?;
                let words = model.embed_weight().rows(&idx)?.to_dtype(DType::F32)?;
                let rest = k - ids.len();
                let object = self.photos_object_token()?;
                let visual = (object.unsqueeze(0)?.broadcast_as((rest, d))?
                    + (rows_noise.narrow(0, 1 + ids.len(), rest)? * 0.1)?)?;
                ConceptParams {
                    rows: Tensor::cat(&[&rows_noise.narrow(0, 0, 1)?, &words, &visual], 0)?,
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

/// The share of a photo's projected tokens that make its object token: a sixth (6 of the toy
/// base's 36, 96 of LLaVA-1.5's 576).
pub const OBJECT_TOKEN_SHARE: usize = 6;

/// A photo's *object token*: the mean of the sixth of its projected visual tokens (`[n, d]`)
/// farthest from their element-wise median, i.e. the tokens of what stands out from the
/// background. The toy base's visual-binding pretraining task (`tools/toy_gpu/visual_binding.py`,
/// `object_token`) binds names to exactly this, with the same median (the lower middle value
/// for an even count, as `torch.median`).
pub fn object_token(features: &Tensor) -> Result<Tensor> {
    let rows = features.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let (n, d) = (rows.len(), rows.first().map_or(0, Vec::len));
    if n == 0 {
        return Err(TrainError::Input("a photo without visual tokens".into()));
    }
    let mut median = vec![0f32; d];
    let mut column = vec![0f32; n];
    for (j, m) in median.iter_mut().enumerate() {
        for (c, r) in column.iter_mut().zip(&rows) {
            *c = r[j];
        }
        column.sort_by(f32::total_cmp);
        *m = column[(n - 1) / 2];
    }
    let mut by_distance: Vec<(f32, usize)> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let d2: f32 = r.iter().zip(&median).map(|(a, b)| (a - b) * (a - b)).sum();
            (d2, i)
        })
        .collect();
    by_distance.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let m = (n / OBJECT_TOKEN_SHARE).max(1);
    let mut out = vec![0f32; d];
    for &(_, i) in &by_distance[..m] {
        for (o, v) in out.iter_mut().zip(&rows[i]) {
            *o += v / m as f32;
        }
    }
    Ok(Tensor::from_vec(out, d, features.device())?)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn the_object_token_averages_what_stands_out_from_the_background() {
        // 12 tokens: 10 background (near 0), 2 object tokens far from it.
        let mut data = vec![0f32; 12 * 3];
        for i in 0..10 {
            data[i * 3] = 0.01 * i as f32;
        }
        data[10 * 3..].copy_from_slice(&[5.0, 1.0, 0.0, 3.0, 1.0, 2.0]);
        let f = Tensor::from_vec(data, (12, 3), &Device::Cpu).unwrap();
        let t = object_token(&f).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(t, vec![4.0, 1.0, 1.0]);
        let one = Tensor::from_vec(vec![1f32, 2.0], (1, 2), &Device::Cpu).unwrap();
        assert_eq!(
            object_token(&one).unwrap().to_vec1::<f32>().unwrap(),
            vec![1.0, 2.0]
        );
    }
}
