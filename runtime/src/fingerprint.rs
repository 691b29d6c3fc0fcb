//! The identity of a base model, as recorded in concept files
//! (`concept_format::ModelFingerprint`), so a concept is never injected into a model whose
//! embeddings, head or tokenizer it was not trained against.
//!
//! Tensor hashes cover the tensor exactly as stored in the checkpoint, without conversion:
//! `sha256(header || data)` where `header` is the ASCII text `"{dtype}[{d0},{d1}]\n"`
//! (`dtype` as safetensors spells it, e.g. `F16[32064,4096]\n`) and `data` the stored
//! little-endian bytes. So the same weights saved in another dtype give another fingerprint,
//! and hashing costs one pass over the bytes. A tied LM head hashes as the embedding table.

use std::path::Path;

use concept_format::ModelFingerprint;
use sha2::{Digest, Sha256};

use crate::config::LlavaConfig;
use crate::error::{Result, RuntimeError};
use crate::weights::{read_config, Checkpoint, RawTensor};

/// The tokenizer file next to the weights.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Hub-layout names of the hashed tensors.
const EMBED: &str = "language_model.model.embed_tokens.weight";
const LM_HEAD: &str = "language_model.lm_head.weight";

/// Fingerprints the llava-hf model directory `dir` (`config.json`, `tokenizer.json` and the
/// safetensors weights).
pub fn fingerprint(dir: &Path) -> Result<ModelFingerprint> {
    let cfg = read_config(dir)?;
    let path = dir.join(TOKENIZER_FILE);
    let tokenizer = std::fs::read(&path).map_err(|source| RuntimeError::Io { path, source })?;
    let checkpoint = Checkpoint::open(dir)?;
    fingerprint_parts(&cfg, &tokenizer, &checkpoint)
}

/// Fingerprints already opened parts: the config, the bytes of `tokenizer.json`, the weights.
pub fn fingerprint_parts(
    cfg: &LlavaConfig,
    tokenizer_json: &[u8],
    checkpoint: &Checkpoint,
) -> Result<ModelFingerprint> {
    let embed = checkpoint.raw_tensor(EMBED)?;
    let expected = [cfg.text.vocab_size, cfg.text.hidden_size];
    if embed.shape != expected {
        return Err(RuntimeError::TensorShape {
            name: checkpoint.layout().stored_name(EMBED),
            expected: expected.to_vec(),
            actual: embed.shape,
        });
    }
    let embed_sha256 = tensor_sha256(&embed);
    let lm_head_sha256 = if cfg.text.tie_word_embeddings {
        embed_sha256.clone()
    } else {
        tensor_sha256(&checkpoint.raw_tensor(LM_HEAD)?)
    };
    Ok(ModelFingerprint {
        architecture: cfg.architecture_id(),
        hidden_size: cfg.text.hidden_size as u64,
        vocab_size: cfg.text.vocab_size as u64,
        tokenizer_sha256: hex::encode(Sha256::digest(tokenizer_json)),
        embed_sha256,
        lm_head_sha256,
    })
}

/// Lowercase hex SHA-256 of a stored tensor, as described in the module docs.
pub fn tensor_sha256(tensor: &RawTensor<'_>) -> String {
    let dims: Vec<String> = tensor.shape.iter().map(usize::to_string).collect();
    let mut hasher = Sha256::new();
    hasher.update(format!("{:?}[{}]\n", tensor.dtype, dims.join(",")).as_bytes());
    hasher.update(tensor.data);
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_hash_covers_dtype_shape_and_bytes() {
        let data = [0u8, 60, 0, 64];
        let t = |dtype, shape: &[usize], data: &'static [u8]| RawTensor {
            dtype,
            shape: shape.to_vec(),
            data,
        };
        let base = tensor_sha256(&t(safetensors::Dtype::F16, &[2], &[0, 60, 0, 64]));
        // sha256("F16[2]\n" || bytes), computed independently.
        let mut h = Sha256::new();
        h.update(b"F16[2]\n");
        h.update(data);
        assert_eq!(base, hex::encode(h.finalize()));
        assert_ne!(
            base,
            tensor_sha256(&t(safetensors::Dtype::BF16, &[2], &[0, 60, 0, 64]))
        );
        assert_ne!(
            base,
            tensor_sha256(&t(safetensors::Dtype::F16, &[1, 2], &[0, 60, 0, 64]))
        );
        assert_ne!(
            base,
            tensor_sha256(&t(safetensors::Dtype::F16, &[2], &[0, 60, 0, 65]))
        );
    }
}
