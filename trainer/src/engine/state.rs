//! Saving after each epoch and resuming by replay (see the engine docs)

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use concepts_plugin_api::Recognition;
use safetensors::tensor::TensorView;
use serde::{Deserialize, Serialize};

use super::{Best, ConceptParams, History, TrainingEngine};
use crate::error::{Result, TrainError};

/// The `format` of state files.
pub const STATE_FORMAT: &str = "concepts-train-state/1";

#[derive(Debug, Clone)]
pub(super) struct Moments {
    pub(super) m_rows: Tensor,
    pub(super) v_rows: Tensor,
    pub(super) m_head: Tensor,
    pub(super) v_head: Tensor,
    pub(super) t: u64,
}

/// Saved state from a previous run, to resume from.
pub struct SavedState {
    meta: StateMeta,
    params: ConceptParams,
    moments: Moments,
    best: Option<ConceptParams>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StateMeta {
    pub(super) format: String,
    pub(super) job_key: String,
    pub(super) adam_t: u64,
    pub(super) history: History,
    pub(super) best_epoch: Option<u32>,
    pub(super) best_recognition: Option<Recognition>,
}

impl SavedState {
    /// Reads a state file written by [`TrainingEngine`] for the job `job_key`.
    pub fn read(path: &Path, job_key: &str, device: &Device) -> Result<SavedState> {
        let bad = |msg: String| TrainError::Resume {
            path: path.to_path_buf(),
            msg,
        };
        let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let meta = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("state"))
            .ok_or_else(|| bad("not a training state file".to_string()))?;
        let meta: StateMeta = serde_json::from_str(meta).map_err(|e| bad(e.to_string()))?;
        if meta.format != STATE_FORMAT {
            return Err(bad(format!(
                "format `{}`, expected `{STATE_FORMAT}`",
                meta.format
            )));
        }
        if meta.job_key != job_key {
            return Err(bad(
                "it belongs to another training job (the images, options, model or seed differ)"
                    .to_string(),
            ));
        }
        let tensors = candle_core::safetensors::load_buffer(&bytes, device)
            .map_err(|e| bad(e.to_string()))?;
        let get = |name: &str| {
            tensors
                .get(name)
                .cloned()
                .ok_or_else(|| bad(format!("no tensor `{name}`")))
        };
        let params = ConceptParams {
            rows: get("rows")?,
            head: get("head")?,
        };
        let moments = Moments {
            m_rows: get("m_rows")?,
            v_rows: get("v_rows")?,
            m_head: get("m_head")?,
            v_head: get("v_head")?,
            t: meta.adam_t,
        };
        let best = match meta.best_epoch {
            Some(_) => Some(ConceptParams {
                rows: get("best_rows")?,
                head: get("best_head")?,
            }),
            None => None,
        };
        Ok(SavedState {
            meta,
            params,
            moments,
            best,
        })
    }

    /// Epochs the saved run completed.
    pub fn epochs_done(&self) -> usize {
        self.meta.history.epochs.len()
    }
}

pub(super) struct Replay {
    pub(super) steps: usize,
    pub(super) evals: usize,
    pub(super) best_epoch: Option<u32>,
    pub(super) best: Option<ConceptParams>,
}

pub(super) enum Snapshot {
    Kept(ConceptParams, Moments),
    /// Taken while replaying an epoch whose parameters were not saved.
    Lost {
        epoch: u32,
    },
}

impl TrainingEngine<'_> {
    /// Continues from a saved state: its parameters and moments, and the record that the
    /// trainer stage's calls are answered from until the saved point
    pub(super) fn resume_from(&mut self, saved: SavedState) {
        self.params = saved.params;
        self.moments = saved.moments;
        self.replay = Some(Replay {
            steps: saved.meta.history.step_losses.len(),
            evals: saved.meta.history.epochs.len(),
            best_epoch: saved.meta.best_epoch,
            best: saved.best.clone(),
        });
        if let (Some(epoch), Some(params), Some(recognition)) = (
            saved.meta.best_epoch,
            saved.best,
            saved.meta.best_recognition,
        ) {
            self.best = Some(Best {
                epoch,
                params,
                recognition,
            });
        }
        self.history = saved.meta.history;
    }

    /// Save the state to `path` after every epoch, tagged with `job_key`.
    pub fn save_state_to(&mut self, path: &Path, job_key: &str) {
        self.state = Some((path.to_path_buf(), job_key.to_string()));
    }

    pub(super) fn replaying_steps(&self) -> Option<f32> {
        let r = self.replay.as_ref()?;
        (self.steps < r.steps).then(|| self.history.step_losses[self.steps])
    }

    pub(super) fn save_state(&self) -> Result<()> {
        let Some((path, job_key)) = &self.state else {
            return Ok(());
        };
        let meta = StateMeta {
            format: STATE_FORMAT.to_string(),
            job_key: job_key.clone(),
            adam_t: self.moments.t,
            history: self.history.clone(),
            best_epoch: self.best.as_ref().map(|b| b.epoch),
            best_recognition: self.best.as_ref().map(|b| b.recognition),
        };
        let mut named: Vec<(&str, &Tensor)> = vec![
            ("rows", &self.params.rows),
            ("head", &self.params.head),
            ("m_rows", &self.moments.m_rows),
            ("v_rows", &self.moments.v_rows),
            ("m_head", &self.moments.m_head),
            ("v_head", &self.moments.v_head),
        ];
        if let Some(best) = &self.best {
            named.push(("best_rows", &best.params.rows));
            named.push(("best_head", &best.params.head));
        }
        let mut data = Vec::new();
        for (name, t) in &named {
            let bytes: Vec<u8> = t
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            data.push((*name, t.dims().to_vec(), bytes));
        }
        let views = data
            .iter()
            .map(|(n, shape, bytes)| {
                TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes).map(|v| (*n, v))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| TrainError::File {
                path: path.clone(),
                msg: e.to_string(),
            })?;
        let meta = serde_json::to_string(&meta).map_err(|e| TrainError::File {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        let bytes =
            safetensors::serialize(views, Some(HashMap::from([("state".to_string(), meta)])))
                .map_err(|e| TrainError::File {
                    path: path.clone(),
                    msg: e.to_string(),
                })?;
        Ok(concepts_fs::write_atomic(path, &bytes)?)
    }
}
