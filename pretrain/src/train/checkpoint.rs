//! The resumable state of a run: written atomically (a sibling directory filled, fsynced and
//! swapped in), read back to continue exactly; and the file helpers the corpus writer shares

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{io_err, PretrainError, Result};
use crate::eval::EvalReport;
use crate::model::Params;
use crate::optim::{AdamW, Moments};

use super::{TrainConfig, Trainer};

/// Version of the training-state directory layout.
pub const STATE_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    step: u64,
    config: TrainConfig,
    /// AdamW update count per parameter.
    adam_t: BTreeMap<String, u64>,
}

pub(super) fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    dir.with_file_name(name)
}

/// The directory holding the latest complete state: `dir`, or `dir.old` if a save was cut
/// off between its renames.
pub(super) fn existing_state(dir: &Path) -> Option<PathBuf> {
    [dir.to_path_buf(), sibling(dir, "old")]
        .into_iter()
        .find(|d| d.join("state.json").is_file())
}

pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = sibling(path, "tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

pub(crate) fn save_tensors(tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), None)
        .map_err(|e| PretrainError::State {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    write_synced(path, &bytes)
}

pub(super) fn load_tensors(path: &Path, device: &Device) -> Result<BTreeMap<String, Tensor>> {
    let map = candle_core::safetensors::load(path, device).map_err(|e| PretrainError::State {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(map.into_iter().collect())
}

pub(super) fn append_jsonl(path: &Path, report: &EvalReport) -> Result<()> {
    use std::io::Write;
    let line = serde_json::to_string(report).map_err(|source| PretrainError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err(path))?;
    writeln!(f, "{line}").map_err(io_err(path))
}

impl Trainer {
    /// Resumes from `state_dir` (see [`Trainer::save`]); `cfg` must equal the saved config.
    pub fn resume(cfg: TrainConfig, state_dir: &Path, device: &Device) -> Result<Trainer> {
        let mut t = Trainer::new(cfg, device)?;
        let dir = existing_state(state_dir).ok_or_else(|| PretrainError::State {
            path: state_dir.to_path_buf(),
            message: "no saved state".to_string(),
        })?;
        let state_path = dir.join("state.json");
        let text = std::fs::read_to_string(&state_path).map_err(io_err(&state_path))?;
        let state: StateFile =
            serde_json::from_str(&text).map_err(|source| PretrainError::Json {
                path: state_path.clone(),
                source,
            })?;
        let fail = |message: String| PretrainError::State {
            path: dir.clone(),
            message,
        };
        if state.version != STATE_VERSION {
            return Err(fail(format!(
                "layout version {}, expected {STATE_VERSION}",
                state.version
            )));
        }
        if state.config != t.cfg {
            return Err(fail(format!(
                "saved for another run configuration: {}",
                serde_json::to_string(&state.config).unwrap_or_default()
            )));
        }
        t.load_weights(&dir.join("weights.safetensors"))?;
        let moments = load_tensors(&dir.join("optimizer.safetensors"), device)?;
        let mut restored = BTreeMap::new();
        for (name, &count) in &state.adam_t {
            let get = |k: &str| {
                moments
                    .get(&format!("{k}.{name}"))
                    .cloned()
                    .ok_or_else(|| fail(format!("moment `{k}.{name}` missing")))
            };
            restored.insert(
                name.clone(),
                Moments {
                    m: get("m")?,
                    v: get("v")?,
                    t: count,
                },
            );
        }
        t.opt = AdamW::from_moments(restored);
        t.step = state.step;
        Ok(t)
    }

    /// Replaces the model and stage-0 head weights with those in the safetensors file at
    /// `path` (hub-layout names plus `head.*`, as [`Trainer::save`] and the accelerated
    /// trainer write them). Every weight must be present with its shape; extra tensors
    /// are an error too, so a file for another model cannot half-load.
    pub fn load_weights(&mut self, path: &Path) -> Result<()> {
        let device = self.params.device();
        let weights = load_tensors(path, &device)?;
        let fail = |message: String| PretrainError::State {
            path: path.to_path_buf(),
            message,
        };
        let checked = |name: &str, var: &Var| -> Result<Tensor> {
            let w = weights
                .get(name)
                .ok_or_else(|| fail(format!("weight `{name}` missing")))?;
            if w.dims() != var.dims() {
                return Err(fail(format!(
                    "weight `{name}` has shape {:?}, expected {:?}",
                    w.dims(),
                    var.dims()
                )));
            }
            Ok(w.clone())
        };
        let mut model = BTreeMap::new();
        for (name, var) in self.params.named() {
            let w = checked(&name, &var)?;
            model.insert(name, w);
        }
        for (name, var) in &self.heads {
            checked(name, var)?;
        }
        let known = model.len() + self.heads.len();
        if weights.len() != known {
            let extra: Vec<&String> = weights
                .keys()
                .filter(|k| !model.contains_key(*k) && !self.heads.iter().any(|(h, _)| h == *k))
                .take(3)
                .collect();
            return Err(fail(format!("unexpected weights {extra:?}")));
        }
        self.params = Params::from_tensors(&self.llava, model)?;
        for (name, var) in &self.heads {
            var.set(&weights[name].to_dtype(DType::F32)?)?;
        }
        Ok(())
    }

    /// Resumes from `state_dir` if it holds a state, else starts fresh.
    pub fn resume_or_new(cfg: TrainConfig, state_dir: &Path, device: &Device) -> Result<Trainer> {
        if existing_state(state_dir).is_some() {
            Trainer::resume(cfg, state_dir, device)
        } else {
            Trainer::new(cfg, device)
        }
    }

    /// Writes the resumable state to `dir` atomically: a sibling `*.tmp` directory is filled
    /// and fsynced, then swapped in by renames.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let tmp = sibling(dir, "tmp");
        let old = sibling(dir, "old");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        save_tensors(&self.weights()?, &tmp.join("weights.safetensors"))?;
        let mut moments = BTreeMap::new();
        let mut adam_t = BTreeMap::new();
        for (name, m) in self.opt.moments() {
            moments.insert(format!("m.{name}"), m.m.clone());
            moments.insert(format!("v.{name}"), m.v.clone());
            adam_t.insert(name.clone(), m.t);
        }
        save_tensors(&moments, &tmp.join("optimizer.safetensors"))?;
        let state = StateFile {
            version: STATE_VERSION,
            step: self.step,
            config: self.cfg.clone(),
            adam_t,
        };
        let json = serde_json::to_string_pretty(&state).map_err(|source| PretrainError::Json {
            path: tmp.join("state.json"),
            source,
        })?;
        write_synced(&tmp.join("state.json"), json.as_bytes())?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
        }
        if dir.exists() {
            std::fs::rename(dir, &old).map_err(io_err(dir))?;
        }
        std::fs::rename(&tmp, dir).map_err(io_err(dir))?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
        }
        Ok(())
    }
}
