//! Quantized base models: [`quantize_model`] writes a model folder whose linear layers are
//! stored quantized (Q8_0 blocks, or for q4k Q4_K blocks with Q6_K where llama.cpp's Q4_K_M
//! puts them, in a GGUF file, run by candle's quantized kernels),
//! and [`QuantizedLinears`] loads them back for [`crate::LlavaModel::load`].
//!
//! A quantized folder is a llava-hf folder in which the matrices of the linear layers
//! (attention and MLP projections of the decoder and the vision tower, the projector) moved
//! from `model.safetensors` to [`QUANTIZED_FILE`], under their hub-layout names. Everything
//! else (token embeddings, LM head, norms, biases, the vision stem, `config.json`,
//! `tokenizer.json`) is kept byte for byte as the source stored it. The LM head (untied) is
//! also stored in Q8_0 in [`QUANTIZED_FILE`], whatever the format: the logits are computed
//! with that copy (LLaVA-7B's head: 0.14 GB resident while decoding instead of 0.26 GB in
//! f16; 8 bits, as llama.cpp's Q4_K_M keeps its output matrix at 6), while the kept copy is
//! what the fingerprint hashes and where concepts read the head's rows. The base-model
//! fingerprint hashes exactly those kept bytes (`crate::fingerprint`), so a quantized folder
//! has its source's fingerprint: a concept trained on the source loads into every quantized
//! folder made from it, and into no other model.
//!
//! Quantized blocks run along a matrix row (the input dimension): 32 values for Q8_0, 256
//! for Q4_K. A row whose width is not a multiple of the block is padded with zero columns
//! (the layer pads its input to match), so every linear layer is quantized in the format
//! asked for, on small models as on LLaVA-1.5-7B (whose widths need no padding).

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use candle_core::quantized::k_quants::{BlockQ4K, BlockQ6K, BlockQ8_0, GgmlType};
use candle_core::quantized::{gguf_file, GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::error::{Result, RuntimeError};
use crate::madvise::{advise, Advice};
use crate::weights::{read_config, Checkpoint, LM_HEAD, SAFETENSORS_FILE, SAFETENSORS_INDEX_FILE};

/// The quantized linear weights of a quantized model folder.
pub const QUANTIZED_FILE: &str = "quantized.gguf";

/// GGUF metadata key naming the format ([`QuantFormat::as_str`]).
const FORMAT_KEY: &str = "concepts.quantization";

/// Endings of the hub-layout names of linear-layer matrices: `*_proj` (attention and the
/// decoder's MLP), `fc1`/`fc2` (the vision MLP), `linear_1`/`linear_2` (the projector).
const LINEAR_SUFFIXES: [&str; 5] = [
    "_proj.weight",
    ".fc1.weight",
    ".fc2.weight",
    ".linear_1.weight",
    ".linear_2.weight",
];

/// A quantization format of `concepts quantize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantFormat {
    /// 8-bit values in blocks of 32 with one f16 scale: 8.5 bits per weight.
    Q8_0,
    /// llama.cpp's 4-bit k-quant, super-blocks of 256 with 6-bit sub-block scales: 4.5 bits
    /// per weight.
    Q4K,
}

impl QuantFormat {
    pub const ALL: [QuantFormat; 2] = [QuantFormat::Q8_0, QuantFormat::Q4K];

    /// The name on the command line and in the GGUF metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            QuantFormat::Q8_0 => "q8_0",
            QuantFormat::Q4K => "q4k",
        }
    }

    /// The block type of the linear matrix `hub` (a hub-layout name) in a model whose decoder
    /// has `decoder_layers` layers. q4k assigns types as llama.cpp's Q4_K_M does: Q4_K, except
    /// the value and down projections of the decoder layers [`more_bits`] picks, which are
    /// the most sensitive to rounding and get Q6_K (6.56 bits per weight).
    pub fn tensor_type(self, hub: &str, decoder_layers: usize) -> GgmlDType {
        match self {
            QuantFormat::Q8_0 => GgmlDType::Q8_0,
            QuantFormat::Q4K => {
                let sensitive =
                    hub.ends_with(".v_proj.weight") || hub.ends_with(".down_proj.weight");
                match decoder_layer(hub) {
                    Some(layer) if sensitive && more_bits(layer, decoder_layers) => GgmlDType::Q6K,
                    _ => GgmlDType::Q4K,
                }
            }
        }
    }
}

impl fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for QuantFormat {
    type Err = RuntimeError;

    fn from_str(s: &str) -> Result<Self> {
        QuantFormat::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                RuntimeError::Unsupported(format!(
                    "quantization format `{s}`: expected q8_0 or q4k"
                ))
            })
    }
}

/// The decoder layer whose matrix `hub` is (`language_model…layers.{i}.…`), `None` for the
/// vision tower, the projector and the head.
fn decoder_layer(hub: &str) -> Option<usize> {
    let (_, rest) = hub.split_once("language_model.")?;
    let (_, rest) = rest.split_once("layers.")?;
    rest.split('.').next()?.parse().ok()
}

/// llama.cpp's `use_more_bits` (`llama-quant.cpp`): the decoder layers whose value and down
/// projections Q4_K_M stores in Q6_K, the first and last eighth and every third layer between
/// them (16 of LLaVA-7B's 32 layers, 2 of the toy model's 4).
fn more_bits(layer: usize, layers: usize) -> bool {
    let eighth = layers / 8;
    layer < eighth || layer >= 7 * layers / 8 || (layer - eighth) % 3 == 2
}

/// Whether the tensor the model code calls `hub_name` is a linear layer's matrix, which a
/// quantized folder stores quantized.
pub fn is_linear_weight(hub_name: &str, shape: &[usize]) -> bool {
    shape.len() == 2 && LINEAR_SUFFIXES.iter().any(|s| hub_name.ends_with(s))
}

/// `w` (`[out, in]`, any float dtype) quantized by rows in `dtype`, its rows padded with zero
/// columns to a whole number of blocks; `true` when padding was needed.
pub fn quantize_matrix(w: &Tensor, dtype: GgmlDType) -> Result<(QTensor, bool)> {
    let (_, cols) = w.dims2()?;
    let w = w.to_dtype(DType::F32)?;
    let block = dtype.block_size();
    let padded = cols.div_ceil(block) * block;
    let w = if padded > cols {
        w.pad_with_zeros(1, 0, padded - cols)?
    } else {
        w
    };
    Ok((QTensor::quantize(&w, dtype)?, padded > cols))
}

/// The format of the quantized folder `dir`, or `None` for a plain llava-hf folder. Reads the
/// GGUF header only.
pub fn folder_format(dir: &Path) -> Result<Option<QuantFormat>> {
    let path = dir.join(QUANTIZED_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let file = File::open(&path).map_err(|source| RuntimeError::Io {
        path: path.clone(),
        source,
    })?;
    let content = gguf_file::Content::read(&mut BufReader::new(file)).map_err(|source| {
        RuntimeError::Quantized {
            path: path.clone(),
            source: Box::new(source),
        }
    })?;
    format_of(&content, &path).map(Some)
}

/// The SHA-256 of the quantized folder `dir`'s [`QUANTIZED_FILE`] (lowercase hex), or `None`
/// for a plain folder. Every quantized folder made from one source has the source's
/// fingerprint (so concepts carry over between them), yet their weights differ with the
/// format and with the block type [`quantize_model`] chose for each matrix: what caches the
/// results of a computation (trained concepts) keys on, beside the fingerprint.
pub fn quantized_digest(dir: &Path) -> Result<Option<String>> {
    let path = dir.join(QUANTIZED_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    concepts_fs::sha256_file(&path)
        .map(Some)
        .map_err(|source| RuntimeError::Io { path, source })
}

/// The format a GGUF file's metadata names; an error for a file `concepts quantize` did not
/// write.
fn format_of(content: &gguf_file::Content, path: &Path) -> Result<QuantFormat> {
    match content.metadata.get(FORMAT_KEY) {
        Some(gguf_file::Value::String(s)) => s.parse(),
        _ => Err(RuntimeError::Quantized {
            path: path.to_path_buf(),
            source: Box::new(candle_core::Error::Msg(format!(
                "no `{FORMAT_KEY}` metadata: not written by `concepts quantize`"
            ))),
        }),
    }
}

/// The quantized linear weights of a model folder, by hub-layout name.
pub struct QuantizedLinears {
    tensors: HashMap<String, Arc<QTensor>>,
}

impl QuantizedLinears {
    /// The linear matrices among `tensors` (hub-layout names, e.g. a
    /// `testing::RandomWeights` record) quantized in `dtype`; other tensors are
    /// ignored. `GgmlDType::F32` gives "quantized" weights that compute exactly, which the
    /// gradient tests use to check the quantized path's backward by finite differences.
    pub fn quantize<'t>(
        tensors: impl IntoIterator<Item = (&'t str, &'t Tensor)>,
        dtype: GgmlDType,
    ) -> Result<Self> {
        let mut out = HashMap::new();
        for (name, t) in tensors {
            if is_linear_weight(name, t.dims()) {
                out.insert(name.to_string(), Arc::new(quantize_matrix(t, dtype)?.0));
            }
        }
        Ok(QuantizedLinears { tensors: out })
    }

    /// Reads `path` (a [`QUANTIZED_FILE`]) onto `device`.
    pub fn read(path: &Path, device: &Device) -> Result<Self> {
        let fail = |source: candle_core::Error| RuntimeError::Quantized {
            path: path.to_path_buf(),
            source: Box::new(source),
        };
        let file = File::open(path).map_err(|source| RuntimeError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut reader = BufReader::new(file);
        let content = gguf_file::Content::read(&mut reader).map_err(fail)?;
        format_of(&content, path)?;
        let file_size = reader
            .seek(SeekFrom::End(0))
            .map_err(|source| RuntimeError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        let mut tensors = HashMap::with_capacity(content.tensor_infos.len());
        for (name, info) in &content.tensor_infos {
            let start = content.tensor_data_offset.saturating_add(info.offset);
            let t = match (device, info.ggml_dtype) {
                (Device::Cpu, GgmlDType::Q8_0) => {
                    read_blocks::<BlockQ8_0>(&mut reader, info, start, file_size)
                }
                (Device::Cpu, GgmlDType::Q4K) => {
                    read_blocks::<BlockQ4K>(&mut reader, info, start, file_size)
                }
                (Device::Cpu, GgmlDType::Q6K) => {
                    read_blocks::<BlockQ6K>(&mut reader, info, start, file_size)
                }
                _ => content.tensor(&mut reader, name, device),
            }
            .map_err(|e| fail(e.context(format!("tensor `{name}`"))))?;
            tensors.insert(name.clone(), Arc::new(t));
        }
        Ok(QuantizedLinears { tensors })
    }

    /// The quantized matrix the model code calls `name` (e.g.
    /// `language_model.model.layers.0.mlp.down_proj.weight`).
    pub fn get(&self, name: &str) -> Option<Arc<QTensor>> {
        self.tensors.get(name).cloned()
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Bytes of quantized data.
    pub fn bytes(&self) -> usize {
        self.tensors
            .values()
            .map(|t| t.storage_size_in_bytes())
            .sum()
    }
}

/// What [`quantize_model`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantizeReport {
    pub format: QuantFormat,
    /// Linear matrices quantized, how many of them in Q6_K (q4k's rule,
    /// [`QuantFormat::tensor_type`]), and how many matrices needed zero padding.
    pub quantized: usize,
    pub six_bit: usize,
    pub padded: usize,
    /// Whether the LM head was stored in Q8_0 as well (an untied head; see the module docs).
    pub lm_head_q8_0: bool,
    /// Tensors kept as stored (the LM head among them).
    pub kept: usize,
    /// Bytes of tensor data in the source and in the output.
    pub source_bytes: u64,
    pub output_bytes: u64,
}

/// Reads the CPU tensor `info` (blocks of `T`, starting at byte `start` of a file of
/// `file_size` bytes) straight into the block vector the model keeps. candle's own
/// `TensorInfo::read` reads a byte buffer and copies it into the blocks (twice each tensor at
/// once). Reading in place also lets the vector's pages be advised before they are first
/// touched: mimalloc asks for transparent huge pages on its arenas, and the partly filled
/// 2 MiB pages at the ends of a LLaVA-7B's 370 matrices were resident in full (Q4_K: 4.12 GiB
/// resident after loading 3.73 GiB of blocks; 3.74 GiB with small pages).
fn read_blocks<T: GgmlType + 'static>(
    reader: &mut (impl Read + Seek),
    info: &gguf_file::TensorInfo,
    start: u64,
    file_size: u64,
) -> candle_core::Result<QTensor> {
    let elems = info.shape.elem_count();
    if T::DTYPE != info.ggml_dtype
        || !elems.is_multiple_of(T::BLCK_SIZE)
        || std::mem::size_of::<T>() != T::DTYPE.type_size()
    {
        candle_core::bail!(
            "{:?} tensor of {elems} elements read as {:?} blocks of {}",
            info.ggml_dtype,
            T::DTYPE,
            T::BLCK_SIZE
        );
    }
    let n_blocks = elems / T::BLCK_SIZE;
    let bytes = n_blocks * std::mem::size_of::<T>();
    if start.saturating_add(bytes as u64) > file_size {
        candle_core::bail!(
            "needs {bytes} bytes at offset {start}, the file has {file_size}: truncated"
        );
    }
    let mut blocks: Vec<T> = Vec::with_capacity(n_blocks);
    // Before the first write, so the pages come in as small pages: these blocks are kept for
    // the model's life, and huge pages they fill only in part would be resident in full.
    // SAFETY: the vector's own allocation, of at least `bytes` bytes.
    unsafe { advise(blocks.as_ptr().cast::<u8>(), bytes, Advice::NoHugePages) };
    blocks.resize(n_blocks, T::zeros());
    // SAFETY: the blocks are plain old data (`#[repr(C)]` structs of f16 scales and byte
    // arrays, in which every bit pattern is a value), `bytes` long as checked above; the
    // slice is the vector's own memory and is dropped before the vector is used again.
    let raw = unsafe { std::slice::from_raw_parts_mut(blocks.as_mut_ptr().cast::<u8>(), bytes) };
    reader.seek(SeekFrom::Start(start))?;
    reader.read_exact(raw)?;
    QTensor::new(QStorage::Cpu(Box::new(blocks)), info.shape.clone())
}

/// Progress of [`quantize_model`]: tensors done, tensors in all.
pub type QuantizeProgress<'a> = &'a mut dyn FnMut(usize, usize);

/// Writes a quantized copy of the llava-hf folder `source` to `out` (which must not exist):
/// the linear matrices in `format`, everything else as stored, the LM head also in Q8_0 (see
/// the module docs). `out` appears whole or not at all: it is written under a temporary name
/// beside it and renamed.
pub fn quantize_model(
    source: &Path,
    format: QuantFormat,
    out: &Path,
    progress: QuantizeProgress<'_>,
) -> Result<QuantizeReport> {
    let config = read_config(source)?;
    if source.join(QUANTIZED_FILE).exists() {
        return Err(RuntimeError::Unsupported(format!(
            "`{}` is already quantized; quantize the folder it was made from",
            source.display()
        )));
    }
    if out.exists() {
        return Err(RuntimeError::InvalidConfig(format!(
            "`{}` exists; quantize into a new folder",
            out.display()
        )));
    }
    let checkpoint = Checkpoint::open(source)?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RuntimeError::Io { path, source }
    };
    let staging = tempfile::Builder::new()
        .prefix(".quantize-")
        .tempdir_in(&parent)
        .map_err(io(&parent))?;

    let names = checkpoint.tensor_names();
    let mut report = QuantizeReport {
        format,
        quantized: 0,
        six_bit: 0,
        padded: 0,
        lm_head_q8_0: false,
        kept: 0,
        source_bytes: 0,
        output_bytes: 0,
    };
    let mut quantized: Vec<(String, QTensor)> = Vec::new();
    let mut kept = Vec::new();
    for (i, hub) in names.iter().enumerate() {
        let raw = checkpoint.raw_tensor(hub)?;
        report.source_bytes += raw.data.len() as u64;
        // The LM head in Q8_0 whatever the format (see the module docs), and kept as stored.
        let head = hub.strip_suffix(".weight") == Some(LM_HEAD) && raw.shape.len() == 2;
        let quantize_as = if head {
            Some(GgmlDType::Q8_0)
        } else if is_linear_weight(hub, &raw.shape) {
            Some(format.tensor_type(hub, config.text.num_hidden_layers))
        } else {
            None
        };
        if let Some(dtype) = quantize_as {
            let w = Tensor::from_raw_buffer(
                raw.data,
                candle_dtype(raw.dtype, hub)?,
                &raw.shape,
                &Device::Cpu,
            )?;
            let (q, padded) = quantize_matrix(&w, dtype)?;
            report.padded += usize::from(padded);
            report.six_bit += usize::from(dtype == GgmlDType::Q6K);
            report.output_bytes += q.storage_size_in_bytes() as u64;
            quantized.push((hub.clone(), q));
        }
        if quantize_as.is_none() || head {
            report.lm_head_q8_0 |= head;
            report.output_bytes += raw.data.len() as u64;
            kept.push((hub.clone(), raw));
        }
        progress(i + 1, names.len());
    }
    report.quantized = quantized.len() - usize::from(report.lm_head_q8_0);
    report.kept = kept.len();

    let st_path = staging.path().join(SAFETENSORS_FILE);
    safetensors::serialize_to_file(
        kept.iter().map(|(n, raw)| (n.as_str(), raw)),
        None,
        &st_path,
    )
    .map_err(|source| RuntimeError::Safetensors {
        path: st_path.clone(),
        source,
    })?;

    let gguf_path = staging.path().join(QUANTIZED_FILE);
    let file = File::create(&gguf_path).map_err(io(&gguf_path))?;
    let mut writer = BufWriter::new(file);
    let format_value = gguf_file::Value::String(format.as_str().to_string());
    let refs: Vec<(&str, &QTensor)> = quantized.iter().map(|(n, t)| (n.as_str(), t)).collect();
    gguf_file::write(&mut writer, &[(FORMAT_KEY, &format_value)], &refs).map_err(|source| {
        RuntimeError::Quantized {
            path: gguf_path.clone(),
            source: Box::new(source),
        }
    })?;
    let file = writer.into_inner().map_err(|e| RuntimeError::Io {
        path: gguf_path.clone(),
        source: e.into_error(),
    })?;
    drop(file);
    drop(quantized);

    // The rest of the folder: config, tokenizer, preprocessor and whatever else it holds.
    let entries = std::fs::read_dir(source).map_err(io(source))?;
    for entry in entries {
        let entry = entry.map_err(io(source))?;
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        let skip = name_str.ends_with(".safetensors") || name_str == SAFETENSORS_INDEX_FILE;
        if skip || !entry.file_type().map_err(io(&entry.path()))?.is_file() {
            continue;
        }
        let dest = staging.path().join(&name);
        std::fs::copy(entry.path(), &dest).map_err(io(&entry.path()))?;
    }
    // Durable before visible: every file's bytes reach the disk before the rename publishes
    // the folder.
    for entry in std::fs::read_dir(staging.path()).map_err(io(staging.path()))? {
        let path = entry.map_err(io(staging.path()))?.path();
        File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(io(&path))?;
    }
    let staged = staging.keep();
    if let Err(source) = std::fs::rename(&staged, out) {
        let _ = std::fs::remove_dir_all(&staged);
        return Err(RuntimeError::Io {
            path: out.to_path_buf(),
            source,
        });
    }
    let _ = concepts_fs::sync_dir(&parent);
    Ok(report)
}

fn candle_dtype(dtype: safetensors::Dtype, name: &str) -> Result<DType> {
    Ok(match dtype {
        safetensors::Dtype::F32 => DType::F32,
        safetensors::Dtype::F16 => DType::F16,
        safetensors::Dtype::BF16 => DType::BF16,
        safetensors::Dtype::F64 => DType::F64,
        other => {
            return Err(RuntimeError::Unsupported(format!(
                "tensor `{name}` is stored as {other:?}; linear weights must be a float type"
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4k_stores_the_layers_q4_k_m_picks_in_six_bits() {
        let picked = |layers| {
            (0..layers)
                .filter(|&i| more_bits(i, layers))
                .collect::<Vec<_>>()
        };
        // llama.cpp's choice for a 32-layer Llama (LLaVA-1.5-7B) and for the toy model's 4.
        let seven_b = [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31];
        assert_eq!(picked(32), seven_b);
        assert_eq!(picked(4), [2, 3]);
        assert_eq!(picked(2), [1]);

        let q4k = |hub: &str| QuantFormat::Q4K.tensor_type(hub, 32);
        let decoder = "language_model.model.layers";
        let expected = [
            (
                format!("{decoder}.6.self_attn.v_proj.weight"),
                GgmlDType::Q6K,
            ),
            (format!("{decoder}.31.mlp.down_proj.weight"), GgmlDType::Q6K),
            (
                format!("{decoder}.6.self_attn.q_proj.weight"),
                GgmlDType::Q4K,
            ),
            (format!("{decoder}.5.mlp.down_proj.weight"), GgmlDType::Q4K),
            // transformers' newer layout names the same layers.
            (
                "model.language_model.layers.0.self_attn.v_proj.weight".to_string(),
                GgmlDType::Q6K,
            ),
            // The vision tower's layers share the names but not the rule; nor does the projector.
            (
                "vision_tower.vision_model.encoder.layers.0.self_attn.v_proj.weight".to_string(),
                GgmlDType::Q4K,
            ),
            (
                "multi_modal_projector.linear_2.weight".to_string(),
                GgmlDType::Q4K,
            ),
        ];
        for (hub, dtype) in expected {
            assert_eq!(q4k(&hub), dtype, "{hub}");
        }
        let q8 = QuantFormat::Q8_0.tensor_type(&format!("{decoder}.6.self_attn.v_proj.weight"), 32);
        assert_eq!(q8, GgmlDType::Q8_0);
    }
}
