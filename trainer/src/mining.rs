//! Stage 1: embedding the positives and the negative pool with the base model's own vision
//! tower (CLIP's pooled embedding), with an on-disk cache, and choosing negatives through the
//! [`NegativeMiner`] stage.
//!
//! The cache is one safetensors file per base model, `<cache dir>/<model key>.safetensors`:
//! an `embeddings` tensor (f32, one row per image) and the files' SHA-256 digests in the
//! metadata. The *model key* hashes the model fingerprint and the pooled embedding of a fixed
//! probe image, so it changes whenever the vision tower's output would. A precomputed pool
//! embedding file has the same layout plus the image paths (relative to the file).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Tensor};
use concept_format::ModelFingerprint;
use concepts_plugin_api::{MinedNegative, MiningParams, NegativeRole};
use concepts_runtime::preprocess::PreprocessConfig;
use concepts_runtime::LlavaModel;
use image::RgbImage;
use safetensors::tensor::TensorView;

use crate::error::{Result, TrainError};
use concepts_fs::sha256_hex;

use crate::images;
use crate::progress::{Phase, Progress};
use concepts_plugin_host::{EmbeddingMatrix, NegativeMiner};
use concepts_runtime::session::Engine;

/// The `format` metadata value of cache and pool embedding files.
pub const EMBEDDING_FILE_FORMAT: &str = "concepts-pool-embeddings/1";

/// Images embedded per vision-tower call.
const EMBED_BATCH: usize = 16;

/// Where the negative pool comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolSource {
    /// A folder of images, searched recursively.
    Dir(PathBuf),
    /// A precomputed embedding file (see the module docs).
    EmbeddingFile(PathBuf),
}

impl PoolSource {
    /// A folder is a [`PoolSource::Dir`]; a file an embedding file.
    pub fn from_path(path: &Path) -> PoolSource {
        if path.is_dir() {
            PoolSource::Dir(path.to_path_buf())
        } else {
            PoolSource::EmbeddingFile(path.to_path_buf())
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            PoolSource::Dir(p) | PoolSource::EmbeddingFile(p) => p,
        }
    }
}

/// One pool image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolEntry {
    pub path: PathBuf,
    pub sha256: String,
}

/// The embedded pool: entries and their embeddings, row for row.
#[derive(Debug, Clone)]
pub struct Pool {
    pub entries: Vec<PoolEntry>,
    pub embeddings: EmbeddingMatrix,
}

/// What embedding the pool took.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolReport {
    /// Image files found (or listed in the embedding file).
    pub listed: usize,
    /// Rows served from the cache or the embedding file.
    pub cache_hits: usize,
    /// Images run through the vision tower.
    pub embedded: usize,
    /// Files left out: unreadable, undecodable, too small, or identical to a positive.
    pub skipped: Vec<(PathBuf, String)>,
}

/// A key for embeddings of `model`: SHA-256 over the fingerprint and the bits of the pooled
/// embedding of a fixed probe image.
pub fn model_key(
    model: &LlavaModel,
    fingerprint: &ModelFingerprint,
    preprocess: &PreprocessConfig,
) -> Result<String> {
    let size = model.config().vision.image_size as u32;
    let probe = RgbImage::from_fn(size, size, |x, y| {
        image::Rgb([
            (x * 255 / size) as u8,
            (y * 255 / size) as u8,
            ((x ^ y) & 0xff) as u8,
        ])
    });
    let row = embed_images(model, preprocess, &[probe])?.remove(0);
    let mut text =
        serde_json::to_string(fingerprint).map_err(|e| TrainError::Input(e.to_string()))?;
    for v in row {
        text.push_str(&format!("{:08x}", v.to_bits()));
    }
    Ok(sha256_hex(text.as_bytes()))
}

/// CLIP pooled embeddings (f32 rows) of `images`, in batches.
pub fn embed_images(
    model: &LlavaModel,
    preprocess: &PreprocessConfig,
    images: &[RgbImage],
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(images.len());
    for chunk in images.chunks(EMBED_BATCH) {
        let mut px = Vec::with_capacity(chunk.len());
        for img in chunk {
            px.push(
                images::pixels(img, false, preprocess)?
                    .to_tensor(model.device())
                    .map_err(concepts_runtime::RuntimeError::from)?,
            );
        }
        let px = Tensor::cat(&px, 0)?.to_dtype(model.dtype())?;
        let pooled = model.pooled_image_embedding(&px)?.to_dtype(DType::F32)?;
        out.extend(pooled.to_vec2::<f32>()?);
    }
    Ok(out)
}

/// Embedding rows by file digest, loaded from and saved to one file.
pub struct EmbeddingCache {
    path: Option<PathBuf>,
    dim: usize,
    rows: HashMap<String, Vec<f32>>,
    dirty: bool,
}

impl EmbeddingCache {
    /// The cache for `key` under `dir`, or an in-memory one without a directory. A cache file
    /// that cannot be parsed is ignored (it will be rewritten).
    pub fn open(dir: Option<&Path>, key: &str, dim: usize) -> EmbeddingCache {
        let path = dir.map(|d| d.join(format!("{key}.safetensors")));
        let rows = path
            .as_deref()
            .and_then(|p| read_embedding_file(p, Some(key)).ok())
            .filter(|f| f.dim == dim)
            .map(|f| f.hashes.into_iter().zip(f.rows).collect())
            .unwrap_or_default();
        EmbeddingCache {
            path,
            dim,
            rows,
            dirty: false,
        }
    }

    /// The cache file, if the cache has a directory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn get(&self, sha256: &str) -> Option<&[f32]> {
        self.rows.get(sha256).map(Vec::as_slice)
    }

    pub fn insert(&mut self, sha256: String, row: Vec<f32>) {
        self.rows.insert(sha256, row);
        self.dirty = true;
    }

    /// Writes the cache file if rows were added (temp file + rename).
    pub fn save(&mut self, key: &str) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if !self.dirty {
            return Ok(());
        }
        let mut hashes: Vec<&String> = self.rows.keys().collect();
        hashes.sort();
        let rows: Vec<&[f32]> = hashes.iter().map(|h| self.rows[*h].as_slice()).collect();
        let hashes: Vec<String> = hashes.into_iter().cloned().collect();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| TrainError::io("creating", dir, e))?;
        }
        write_embedding_file(path, key, self.dim, &hashes, &rows, None)?;
        self.dirty = false;
        Ok(())
    }
}

/// The contents of an embedding file.
pub struct EmbeddingFile {
    pub dim: usize,
    pub model_key: String,
    pub hashes: Vec<String>,
    pub rows: Vec<Vec<f32>>,
    /// Image paths, resolved against the file's folder (precomputed pool files only).
    pub paths: Option<Vec<PathBuf>>,
}

/// Writes an embedding file atomically; `paths` are stored as given.
pub fn write_embedding_file(
    path: &Path,
    key: &str,
    dim: usize,
    hashes: &[String],
    rows: &[&[f32]],
    paths: Option<&[String]>,
) -> Result<()> {
    let bytes: Vec<u8> = rows
        .iter()
        .flat_map(|r| r.iter().flat_map(|v| v.to_le_bytes()))
        .collect();
    let view = TensorView::new(safetensors::Dtype::F32, vec![rows.len(), dim], &bytes)
        .map_err(|e| file_err(path, e))?;
    let json = |v: &[String]| serde_json::to_string(v).unwrap_or_default();
    let mut meta = HashMap::from([
        ("format".to_string(), EMBEDDING_FILE_FORMAT.to_string()),
        ("model_key".to_string(), key.to_string()),
        ("hashes".to_string(), json(hashes)),
    ]);
    if let Some(paths) = paths {
        meta.insert("paths".to_string(), json(paths));
    }
    let data = safetensors::serialize([("embeddings", view)], Some(meta))
        .map_err(|e| file_err(path, e))?;
    Ok(concepts_fs::write_atomic(path, &data)?)
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::File {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}

/// Reads an embedding file; with `expect_key`, a file made for another model is an error.
pub fn read_embedding_file(path: &Path, expect_key: Option<&str>) -> Result<EmbeddingFile> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io("reading", path, e))?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| file_err(path, e))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let field = |name: &str| {
        meta.get(name)
            .cloned()
            .ok_or_else(|| file_err(path, format!("no `{name}` in the metadata")))
    };
    if field("format")? != EMBEDDING_FILE_FORMAT {
        return Err(file_err(
            path,
            format!("not a `{EMBEDDING_FILE_FORMAT}` file"),
        ));
    }
    let model_key = field("model_key")?;
    if let Some(expect) = expect_key {
        if model_key != expect {
            return Err(file_err(
                path,
                "the embeddings were computed with another base model (or vision tower)",
            ));
        }
    }
    let hashes: Vec<String> =
        serde_json::from_str(&field("hashes")?).map_err(|e| file_err(path, e))?;
    let tensors = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| file_err(path, e))?;
    let view = tensors
        .tensor("embeddings")
        .map_err(|e| file_err(path, e))?;
    let (n, dim) = match view.shape() {
        [n, d] if view.dtype() == safetensors::Dtype::F32 => (*n, *d),
        other => {
            return Err(file_err(
                path,
                format!(
                    "`embeddings` is {:?} {other:?}, expected f32 [n, d]",
                    view.dtype()
                ),
            ))
        }
    };
    if n != hashes.len() {
        return Err(file_err(
            path,
            format!("{n} rows for {} hashes", hashes.len()),
        ));
    }
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let rows = if dim == 0 {
        vec![Vec::new(); n]
    } else {
        values.chunks_exact(dim).map(<[f32]>::to_vec).collect()
    };
    let paths = match meta.get("paths") {
        Some(p) => {
            let list: Vec<String> = serde_json::from_str(p).map_err(|e| file_err(path, e))?;
            if list.len() != n {
                return Err(file_err(path, format!("{} paths for {n} rows", list.len())));
            }
            let base = path.parent().unwrap_or(Path::new("."));
            Some(list.into_iter().map(|p| base.join(p)).collect())
        }
        None => None,
    };
    Ok(EmbeddingFile {
        dim,
        model_key,
        hashes,
        rows,
        paths,
    })
}

/// Everything embedding a pool needs from the model.
pub struct Embedder<'a> {
    pub model: &'a LlavaModel,
    pub preprocess: &'a PreprocessConfig,
    pub model_key: &'a str,
    pub min_side: u32,
}

/// Embeds the pool of `source`, from `cache` where possible; pool files identical to one of
/// `exclude` (positive digests) are skipped.
pub fn embed_pool(
    embedder: &Embedder<'_>,
    source: &PoolSource,
    cache: &mut EmbeddingCache,
    exclude: &[String],
    progress: &mut dyn Progress,
    cancel: &AtomicBool,
) -> Result<(Pool, PoolReport)> {
    let mut report = PoolReport::default();
    let dim = embedder.model.config().vision.hidden_size;
    let mut entries = Vec::new();
    let mut data = Vec::new();
    match source {
        PoolSource::EmbeddingFile(path) => {
            let file = read_embedding_file(path, Some(embedder.model_key))?;
            let paths = file
                .paths
                .ok_or_else(|| file_err(path, "no `paths` in the metadata"))?;
            report.listed = paths.len();
            for ((p, h), row) in paths.into_iter().zip(file.hashes).zip(file.rows) {
                if exclude.contains(&h) {
                    report
                        .skipped
                        .push((p, "identical to a positive".to_string()));
                    continue;
                }
                report.cache_hits += 1;
                data.extend(row);
                entries.push(PoolEntry { path: p, sha256: h });
            }
        }
        PoolSource::Dir(dir) => {
            let files = images::list_images(dir, true)?;
            report.listed = files.len();
            progress.start(Phase::Mining, files.len() as u64);
            let mut pending: Vec<(PoolEntry, RgbImage)> = Vec::new();
            let flush = |pending: &mut Vec<(PoolEntry, RgbImage)>,
                         cache: &mut EmbeddingCache,
                         entries: &mut Vec<PoolEntry>,
                         data: &mut Vec<f32>,
                         report: &mut PoolReport|
             -> Result<()> {
                let imgs: Vec<RgbImage> = pending.iter().map(|(_, i)| i.clone()).collect();
                let rows = embed_images(embedder.model, embedder.preprocess, &imgs)?;
                for ((entry, _), row) in pending.drain(..).zip(rows) {
                    report.embedded += 1;
                    data.extend_from_slice(&row);
                    cache.insert(entry.sha256.clone(), row);
                    entries.push(entry);
                }
                Ok(())
            };
            for (i, path) in files.iter().enumerate() {
                if cancel.load(Ordering::Relaxed) {
                    cache.save(embedder.model_key)?;
                    return Err(TrainError::Interrupted { best: None });
                }
                let limits = &embedder.preprocess.limits;
                let bytes = match concepts_runtime::preprocess::read_image_file(path, limits) {
                    Ok(b) => b,
                    Err(e) => {
                        report
                            .skipped
                            .push((path.clone(), format!("cannot be read: {e}")));
                        continue;
                    }
                };
                let sha = sha256_hex(&bytes);
                if exclude.contains(&sha) {
                    report
                        .skipped
                        .push((path.clone(), "identical to a positive".to_string()));
                    continue;
                }
                if let Some(row) = cache.get(&sha) {
                    report.cache_hits += 1;
                    data.extend_from_slice(row);
                    entries.push(PoolEntry {
                        path: path.clone(),
                        sha256: sha,
                    });
                } else {
                    match images::decode_checked(
                        path,
                        &bytes,
                        embedder.preprocess,
                        embedder.min_side,
                    ) {
                        Ok(img) => pending.push((
                            PoolEntry {
                                path: path.clone(),
                                sha256: sha,
                            },
                            img.image,
                        )),
                        Err(e) => report.skipped.push((path.clone(), e.to_string())),
                    }
                    if pending.len() == EMBED_BATCH {
                        flush(&mut pending, cache, &mut entries, &mut data, &mut report)?;
                    }
                }
                progress.advance(Phase::Mining, i as u64 + 1);
            }
            flush(&mut pending, cache, &mut entries, &mut data, &mut report)?;
            cache.save(embedder.model_key)?;
        }
    }
    if entries.is_empty() {
        let detail = if report.skipped.is_empty() {
            String::new()
        } else {
            format!(
                " ({} file(s) skipped, e.g. {}: {})",
                report.skipped.len(),
                report.skipped[0].0.display(),
                report.skipped[0].1
            )
        };
        return Err(TrainError::EmptyPool {
            path: source.path().to_path_buf(),
            detail,
        });
    }
    let embeddings = EmbeddingMatrix::new(dim, data)
        .map_err(|e| file_err(source.path(), format!("pool embeddings: {e}")))?;
    if embeddings.rows() != entries.len() {
        return Err(file_err(
            source.path(),
            "pool embeddings do not match the model's vision width",
        ));
    }
    Ok((
        Pool {
            entries,
            embeddings,
        },
        report,
    ))
}

/// Writes a precomputed pool embedding file for the images under `dir` (paths stored relative
/// to the file's folder when possible).
pub fn write_pool_file(
    embedder: &Embedder<'_>,
    dir: &Path,
    out: &Path,
    cache: &mut EmbeddingCache,
    progress: &mut dyn Progress,
    cancel: &AtomicBool,
) -> Result<PoolReport> {
    let (pool, report) = embed_pool(
        embedder,
        &PoolSource::Dir(dir.to_path_buf()),
        cache,
        &[],
        progress,
        cancel,
    )?;
    let base = out.parent().unwrap_or(Path::new("."));
    let base = std::fs::canonicalize(if base.as_os_str().is_empty() {
        Path::new(".")
    } else {
        base
    })
    .map_err(|e| TrainError::io("resolving", base, e))?;
    let paths: Vec<String> = pool
        .entries
        .iter()
        .map(|e| {
            let abs = std::fs::canonicalize(&e.path).unwrap_or_else(|_| e.path.clone());
            abs.strip_prefix(&base)
                .map(Path::to_path_buf)
                .unwrap_or(abs)
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let hashes: Vec<String> = pool.entries.iter().map(|e| e.sha256.clone()).collect();
    let rows: Vec<&[f32]> = (0..pool.embeddings.rows())
        .map(|r| pool.embeddings.row(r))
        .collect();
    write_embedding_file(
        out,
        embedder.model_key,
        pool.embeddings.dim(),
        &hashes,
        &rows,
        Some(&paths),
    )?;
    Ok(report)
}

/// Negatives chosen by the miner, as pool rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Mined {
    pub hard: Vec<usize>,
    pub easy: Vec<usize>,
}

/// Runs the miner stage over the embedded positives and pool.
pub fn mine(
    miner: &mut dyn NegativeMiner,
    positives: &EmbeddingMatrix,
    pool: &Pool,
    params: MiningParams,
) -> Result<Mined> {
    let mined: Vec<MinedNegative> =
        miner
            .mine(positives, &pool.embeddings, params)
            .map_err(|source| TrainError::Stage {
                role: "miner",
                source: Box::new(source),
            })?;
    // The host's miners check their answers; a miner from elsewhere is checked here.
    concepts_plugin_host::check_mined(miner.id(), pool.entries.len(), &mined).map_err(
        |source| TrainError::Stage {
            role: "miner",
            source: Box::new(source),
        },
    )?;
    let rows = |role| {
        mined
            .iter()
            .filter(|m| m.role == role)
            .map(|m| m.pool_row as usize)
            .collect()
    };
    Ok(Mined {
        hard: rows(NegativeRole::Hard),
        easy: rows(NegativeRole::Easy),
    })
}

/// Stage 1's result: the loaded hard and easy negatives, and what the pool held
pub(crate) struct Negatives {
    pub(crate) hard: Vec<images::LoadedImage>,
    pub(crate) easy: Vec<images::LoadedImage>,
    pub(crate) report: PoolReport,
    /// Pool images that could be embedded
    pub(crate) usable: usize,
}

/// Stage 1: embeds the positives and the pool (through the cache), lets the miner stage choose
/// hard and easy negatives, and loads them (refusing any that changed since it was embedded)
#[allow(clippy::too_many_arguments)]
pub(crate) fn mine_negatives(
    session: &Engine,
    source: &PoolSource,
    cache_dir: Option<&Path>,
    params: MiningParams,
    positives: &[images::LoadedImage],
    model_key: &str,
    min_side: u32,
    miner: &mut dyn NegativeMiner,
    progress: &mut dyn Progress,
    cancel: &AtomicBool,
) -> Result<Negatives> {
    let pos_images: Vec<image::RgbImage> = positives.iter().map(|p| p.image.clone()).collect();
    let pos_rows = embed_images(session.model(), session.preprocess_config(), &pos_images)?;
    let dim = session.model().config().vision.hidden_size;
    let pos_matrix = EmbeddingMatrix::new(dim, pos_rows.concat())
        .map_err(|e| TrainError::Input(format!("the positives' embeddings: {e}")))?;
    let mut cache = EmbeddingCache::open(cache_dir, model_key, dim);
    let embedder = Embedder {
        model: session.model(),
        preprocess: session.preprocess_config(),
        model_key,
        min_side,
    };
    let exclude: Vec<String> = positives.iter().map(|p| p.sha256.clone()).collect();
    let (pool, pool_report) =
        embed_pool(&embedder, source, &mut cache, &exclude, progress, cancel)?;
    let mined = mine(miner, &pos_matrix, &pool, params)?;
    tracing::debug!(
        hard = ?mined.hard.iter().map(|&r| pool.entries[r].path.display().to_string()).collect::<Vec<_>>(),
        "hard negatives"
    );
    let load = |rows: &[usize]| -> Result<Vec<images::LoadedImage>> {
        rows.iter()
            .map(|&r| {
                let img = images::load_checked(
                    &pool.entries[r].path,
                    session.preprocess_config(),
                    min_side,
                )?;
                if img.sha256 != pool.entries[r].sha256 {
                    return Err(TrainError::Image {
                        path: img.path,
                        msg: "changed since its embedding was computed".into(),
                    });
                }
                Ok(img)
            })
            .collect()
    };
    let hard_negatives = load(&mined.hard)?;
    let easy_negatives = load(&mined.easy)?;
    progress.finish(Phase::Mining);

    Ok(Negatives {
        hard: hard_negatives,
        easy: easy_negatives,
        usable: pool.entries.len(),
        report: pool_report,
    })
}
