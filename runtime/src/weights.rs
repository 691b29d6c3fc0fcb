//! Loading llava-hf checkpoints: `config.json` plus `model.safetensors` or a sharded
//! `model.safetensors.index.json`, memory-mapped.
//!
//! Two tensor-name layouts exist. The hub layout written by transformers 4 has
//! `vision_tower.vision_model.*`, `multi_modal_projector.*`, `language_model.model.*` and
//! `language_model.lm_head.weight`; transformers 5 writes `model.vision_tower.*`,
//! `model.multi_modal_projector.*`, `model.language_model.*` and `lm_head.weight`. The model
//! code asks for hub-layout names; [`WeightLayout`] is detected by probing one tensor per
//! component and maps each name onto the checkpoint's. Tensors are shape-checked against
//! the request before their bytes are read: a missing or misshapen tensor is an error that
//! names it as stored, never a default.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::{Load, MmapedSafetensors};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use serde::Deserialize;

use crate::config::LlavaConfig;
use crate::error::{Result, RuntimeError};
use crate::madvise::{advise, Advice};
use crate::model::{LlavaModel, MappedMatrix};

/// The single-file checkpoint name.
pub const SAFETENSORS_FILE: &str = "model.safetensors";
/// The sharded checkpoint index name.
pub const SAFETENSORS_INDEX_FILE: &str = "model.safetensors.index.json";
/// The model config name.
pub const CONFIG_FILE: &str = "config.json";

/// Hub-layout prefixes the model code uses, one per component.
const VISION: &str = "vision_tower.vision_model";
const LANGUAGE: &str = "language_model.model";
pub(crate) const LM_HEAD: &str = "language_model.lm_head";
const PROJECTOR: &str = "multi_modal_projector";

/// Candidate stored prefixes per component, with the tensor that proves one present.
const VISION_CANDIDATES: [&str; 4] = [
    "vision_tower.vision_model",
    "model.vision_tower.vision_model",
    "model.vision_tower",
    "vision_tower",
];
const VISION_PROBE: &str = "encoder.layers.0.layer_norm1.weight";
const LANGUAGE_CANDIDATES: [&str; 4] = [
    "language_model.model",
    "model.language_model",
    "model.language_model.model",
    "language_model",
];
const LANGUAGE_PROBE: &str = "embed_tokens.weight";
const LM_HEAD_CANDIDATES: [&str; 2] = ["language_model.lm_head", "lm_head"];
const LM_HEAD_PROBE: &str = "weight";
const PROJECTOR_CANDIDATES: [&str; 2] = ["multi_modal_projector", "model.multi_modal_projector"];
const PROJECTOR_PROBE: &str = "linear_1.weight";

impl LlavaModel {
    /// Loads `config.json` and the safetensors weights of a llava-hf model directory, in
    /// `dtype` on `device` whatever dtype the files store. A folder written by
    /// `concepts quantize` ([`crate::quant`]) has its linear layers' matrices taken
    /// quantized from its GGUF file; the rest of the model computes in `dtype`.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let cfg = read_config(dir)?;
        let checkpoint = Checkpoint::open(dir)?;
        let vb = checkpoint.varbuilder(dtype, device);
        let mapped = Arc::new(checkpoint.mapped_files());
        let quantized = dir.join(crate::quant::QUANTIZED_FILE);
        let quantized = if quantized.is_file() {
            Some(Arc::new(crate::quant::QuantizedLinears::read(
                &quantized, device,
            )?))
        } else {
            None
        };
        LlavaModel::from_parts(cfg, vb, quantized, Some(mapped))
    }
}

/// Reads and validates `dir/config.json`.
pub fn read_config(dir: &Path) -> Result<LlavaConfig> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| RuntimeError::Io {
        path: path.clone(),
        source,
    })?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| RuntimeError::Json { path, source })?;
    LlavaConfig::from_json_value(&value)
}

/// Where each component of the model sits in a checkpoint's tensor names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightLayout {
    vision: String,
    language: String,
    lm_head: String,
    projector: String,
}

impl WeightLayout {
    /// The hub layout, which the model code's names follow.
    pub fn hub() -> Self {
        WeightLayout {
            vision: VISION.to_string(),
            language: LANGUAGE.to_string(),
            lm_head: LM_HEAD.to_string(),
            projector: PROJECTOR.to_string(),
        }
    }

    /// Detects the layout from which tensor names exist. Each component must match exactly
    /// one candidate prefix, except the LM head, which tied checkpoints may lack.
    pub fn detect(has: impl Fn(&str) -> bool) -> Result<Self> {
        let find = |what: &str, candidates: &[&str], probe: &str| -> Result<Option<String>> {
            let found: Vec<&str> = candidates
                .iter()
                .copied()
                .filter(|p| has(&format!("{p}.{probe}")))
                .collect();
            match found.as_slice() {
                [] => Ok(None),
                [one] => Ok(Some(one.to_string())),
                many => Err(RuntimeError::WeightLayout(format!(
                    "{what} found under several prefixes: {}",
                    many.join(", ")
                ))),
            }
        };
        let required = |what: &str, candidates: &[&str], probe: &str| -> Result<String> {
            find(what, candidates, probe)?.ok_or_else(|| {
                let tried: Vec<String> = candidates
                    .iter()
                    .map(|p| format!("`{p}.{probe}`"))
                    .collect();
                RuntimeError::WeightLayout(format!(
                    "no {what} in the checkpoint: none of {} exists",
                    tried.join(", ")
                ))
            })
        };
        let vision = required("vision tower", &VISION_CANDIDATES, VISION_PROBE)?;
        let language = required("language model", &LANGUAGE_CANDIDATES, LANGUAGE_PROBE)?;
        let projector = required("projector", &PROJECTOR_CANDIDATES, PROJECTOR_PROBE)?;
        let lm_head = match find("lm head", &LM_HEAD_CANDIDATES, LM_HEAD_PROBE)? {
            Some(p) => p,
            // Absent: report a missing head under the name this layout would use.
            None if language == LANGUAGE => LM_HEAD.to_string(),
            None => "lm_head".to_string(),
        };
        Ok(WeightLayout {
            vision,
            language,
            lm_head,
            projector,
        })
    }

    /// Each component's hub-layout prefix and its prefix in this checkpoint.
    fn components(&self) -> [(&'static str, &String); 4] {
        [
            (VISION, &self.vision),
            (LANGUAGE, &self.language),
            (LM_HEAD, &self.lm_head),
            (PROJECTOR, &self.projector),
        ]
    }

    /// The name the model code uses for the tensor stored as `stored` (the inverse of
    /// [`WeightLayout::stored_name`]; the longest matching stored prefix wins).
    pub fn hub_name(&self, stored: &str) -> String {
        let mut best: Option<(&str, &str)> = None;
        for (canonical, prefix) in self.components() {
            let matches = stored
                .strip_prefix(prefix.as_str())
                .is_some_and(|r| r.starts_with('.'));
            if matches && best.is_none_or(|(_, p)| prefix.len() > p.len()) {
                best = Some((canonical, prefix));
            }
        }
        match best {
            Some((canonical, prefix)) => format!("{canonical}{}", &stored[prefix.len()..]),
            None => stored.to_string(),
        }
    }

    /// The stored name of the tensor the model code calls `name`.
    pub fn stored_name(&self, name: &str) -> String {
        for (canonical, stored) in self.components() {
            if let Some(rest) = name
                .strip_prefix(canonical)
                .and_then(|r| r.strip_prefix('.'))
            {
                return format!("{stored}.{rest}");
            }
        }
        name.to_string()
    }
}

/// The memory-mapped safetensors files of a model directory and their layout.
pub struct Checkpoint {
    files: Arc<MmapedSafetensors>,
    paths: Vec<PathBuf>,
    layout: WeightLayout,
}

impl Checkpoint {
    /// Maps `dir/model.safetensors`, or the shards listed by `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let paths = shard_paths(dir)?;
        let files = match unsafe { MmapedSafetensors::multi(&paths) } {
            Ok(files) => files,
            Err(err) => return Err(locate_open_error(&paths, err)),
        };
        // `concepts quantize` writes the hub layout, with the linear matrices (the
        // projector's probe among them) in its GGUF file rather than here.
        let layout = if dir.join(crate::quant::QUANTIZED_FILE).is_file() {
            WeightLayout::hub()
        } else {
            WeightLayout::detect(|name| files.get(name).is_ok())?
        };
        Ok(Checkpoint {
            files: Arc::new(files),
            paths,
            layout,
        })
    }

    pub fn layout(&self) -> &WeightLayout {
        &self.layout
    }

    /// The safetensors files, in index order.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// A `VarBuilder` serving hub-layout names from these files, converting to `dtype`.
    pub fn varbuilder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        let backend = LayoutBackend {
            files: self.files.clone(),
            layout: self.layout.clone(),
        };
        VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
    }

    /// The files as the model reads matrices from them in place (`model::matrix`).
    pub(crate) fn mapped_files(&self) -> MappedFiles {
        MappedFiles {
            files: self.files.clone(),
            layout: self.layout.clone(),
        }
    }

    /// The model-code (hub-layout) names of every tensor in the files, sorted.
    pub fn tensor_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .files
            .tensors()
            .into_iter()
            .map(|(stored, _)| self.layout.hub_name(&stored))
            .collect();
        names.sort();
        names
    }

    /// The stored dtype, shape and raw little-endian bytes of the tensor the model code
    /// calls `name`, without conversion.
    pub fn raw_tensor(&self, name: &str) -> Result<RawTensor<'_>> {
        let stored = self.layout.stored_name(name);
        let view = self
            .files
            .get(&stored)
            .map_err(|_| RuntimeError::MissingTensor { name: stored })?;
        Ok(RawTensor {
            dtype: view.dtype(),
            shape: view.shape().to_vec(),
            data: view.data(),
        })
    }
}

/// A checkpoint's memory-mapped files, from which the model uses matrices in place.
pub(crate) struct MappedFiles {
    files: Arc<MmapedSafetensors>,
    layout: WeightLayout,
}

impl MappedFiles {
    /// The `[rows, cols]` matrix the model code calls `name`, in place, to compute in
    /// `dtype`, if it is stored with that shape, in `dtype` or in half precision for an f32
    /// computation, is large enough to be worth it and is laid out as the kernels read it
    /// (`model::matrix`).
    pub(crate) fn matrix(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        dtype: DType,
    ) -> Option<MappedMatrix> {
        let view = self.files.get(&self.layout.stored_name(name)).ok()?;
        let stored = match view.dtype() {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            _ => return None,
        };
        if view.shape() != [rows, cols] || rows * cols < crate::model::MIN_MAPPED_ELEMENTS {
            return None;
        }
        MappedMatrix::new(self.files.clone(), view.data(), rows, cols, stored, dtype)
    }
}

/// A tensor as stored in a safetensors file.
pub struct RawTensor<'a> {
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

/// Written back as stored (`crate::quant` copies the tensors it does not quantize).
impl safetensors::View for &RawTensor<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(self.data)
    }

    fn data_len(&self) -> usize {
        self.data.len()
    }
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: std::collections::BTreeMap<String, String>,
}

fn shard_paths(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join(SAFETENSORS_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index_path = dir.join(SAFETENSORS_INDEX_FILE);
    let text = std::fs::read_to_string(&index_path).map_err(|source| RuntimeError::Io {
        path: index_path.clone(),
        source,
    })?;
    let index: ShardIndex = serde_json::from_str(&text).map_err(|source| RuntimeError::Json {
        path: index_path.clone(),
        source,
    })?;
    let names: BTreeSet<&str> = index.weight_map.values().map(String::as_str).collect();
    let mut paths = Vec::with_capacity(names.len());
    for name in names {
        if name.contains('/') || name.contains('\\') || name == ".." {
            return Err(RuntimeError::InvalidInput(format!(
                "`{}` names shard `{name}` outside the model directory",
                index_path.display()
            )));
        }
        let path = dir.join(name);
        if !path.is_file() {
            return Err(RuntimeError::Io {
                path,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "shard listed in the index",
                ),
            });
        }
        paths.push(path);
    }
    if paths.is_empty() {
        return Err(RuntimeError::InvalidInput(format!(
            "`{}` lists no shard",
            index_path.display()
        )));
    }
    Ok(paths)
}

/// Names the file behind a failed multi-file open.
fn locate_open_error(paths: &[PathBuf], err: candle_core::Error) -> RuntimeError {
    for path in paths {
        if let Err(e) = unsafe { MmapedSafetensors::new(path) } {
            return match e {
                candle_core::Error::SafeTensor(source) => RuntimeError::Safetensors {
                    path: path.clone(),
                    source,
                },
                candle_core::Error::Io(source) => RuntimeError::Io {
                    path: path.clone(),
                    source,
                },
                other => RuntimeError::Candle(other.with_path(path)),
            };
        }
    }
    RuntimeError::Candle(err)
}

/// Serves hub-layout names from memory-mapped files in another layout, checking shapes
/// before reading data.
struct LayoutBackend {
    files: Arc<MmapedSafetensors>,
    layout: WeightLayout,
}

impl LayoutBackend {
    fn view(
        &self,
        name: &str,
    ) -> candle_core::Result<(String, safetensors::tensor::TensorView<'_>)> {
        let stored = self.layout.stored_name(name);
        match self.files.get(&stored) {
            Ok(view) => Ok((stored, view)),
            Err(_) => Err(candle_core::Error::CannotFindTensor { path: stored }),
        }
    }
}

impl SimpleBackend for LayoutBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let (stored, view) = self.view(name)?;
        if view.shape() != s.dims() {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {stored}"),
                expected: s,
                got: view.shape().into(),
            });
        }
        let tensor = view.load(dev)?.to_dtype(dtype);
        release_pages(view.data());
        tensor
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let (_, view) = self.view(name)?;
        let tensor = view.load(dev)?.to_dtype(dtype);
        release_pages(view.data());
        tensor
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.files.get(&self.layout.stored_name(name)).is_ok()
    }
}

/// Drops the pages of `bytes`, a slice of a read-only file mapping whose tensor was just
/// copied out, from this process's resident set. The kernel keeps them in its page cache and
/// faults them back in if they are read again, so this changes no data; it only stops a model
/// being loaded from counting its checkpoint twice (mapped file plus converted tensors)
/// in its peak memory: a 7B f16 load would otherwise touch 14 GB of mapping on top of 14 GB
/// of tensors.
fn release_pages(bytes: &[u8]) {
    // SAFETY: `bytes` is a tensor's data in the checkpoint's read-only file mapping, which
    // stays mapped.
    unsafe { advise(bytes.as_ptr(), bytes.len(), Advice::DontNeed) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout_of(names: &[&str]) -> Result<WeightLayout> {
        WeightLayout::detect(|n| names.contains(&n))
    }

    #[test]
    fn detects_hub_layout() {
        let l = layout_of(&[
            "vision_tower.vision_model.encoder.layers.0.layer_norm1.weight",
            "language_model.model.embed_tokens.weight",
            "language_model.lm_head.weight",
            "multi_modal_projector.linear_1.weight",
        ])
        .unwrap();
        assert_eq!(l, WeightLayout::hub());
        let name = "language_model.model.layers.3.mlp.up_proj.weight";
        assert_eq!(l.stored_name(name), name);
    }

    #[test]
    fn detects_transformers5_layouts() {
        let l = layout_of(&[
            "model.vision_tower.vision_model.encoder.layers.0.layer_norm1.weight",
            "model.language_model.embed_tokens.weight",
            "lm_head.weight",
            "model.multi_modal_projector.linear_1.weight",
        ])
        .unwrap();
        let cases = [
            (
                "vision_tower.vision_model.pre_layrnorm.bias",
                "model.vision_tower.vision_model.pre_layrnorm.bias",
            ),
            (
                "language_model.model.layers.0.self_attn.q_proj.weight",
                "model.language_model.layers.0.self_attn.q_proj.weight",
            ),
            ("language_model.lm_head.weight", "lm_head.weight"),
            (
                "multi_modal_projector.linear_2.bias",
                "model.multi_modal_projector.linear_2.bias",
            ),
        ];
        for (canonical, stored) in cases {
            assert_eq!(l.stored_name(canonical), stored);
        }
        let l = layout_of(&[
            "vision_tower.encoder.layers.0.layer_norm1.weight",
            "model.language_model.embed_tokens.weight",
            "lm_head.weight",
            "model.multi_modal_projector.linear_1.weight",
        ])
        .unwrap();
        assert_eq!(
            l.stored_name("vision_tower.vision_model.embeddings.class_embedding"),
            "vision_tower.embeddings.class_embedding"
        );
    }

    #[test]
    fn missing_or_ambiguous_components_are_errors() {
        let err = layout_of(&["language_model.model.embed_tokens.weight"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("vision_tower.vision_model.encoder.layers.0.layer_norm1.weight"),
            "{err}"
        );
        let err = layout_of(&[
            "vision_tower.vision_model.encoder.layers.0.layer_norm1.weight",
            "model.vision_tower.encoder.layers.0.layer_norm1.weight",
            "language_model.model.embed_tokens.weight",
            "multi_modal_projector.linear_1.weight",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("several prefixes"), "{err}");
    }
}
