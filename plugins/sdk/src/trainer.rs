//! The trainer role (world `trainer`).

use concepts_plugin_api::{
    EpochReport, Recognition, SampleCounts, SampleRef, Split, TrainParams, TrainSummary,
};

use crate::{Context, Result};

/// A training policy: data mix, template sampling, epochs, learning-rate schedule, early stopping
/// and the choice of checkpoint. The training itself happens on the host, through [`TrainingJob`].
pub trait Trainer {
    /// A fresh trainer; the host makes one per call.
    fn new() -> Self
    where
        Self: Sized;

    /// Runs a training job. When it returns, the host's parameters must be those of the epoch named
    /// by [`TrainSummary::best_epoch`].
    fn train(&mut self, job: &TrainingJob<'_>, params: TrainParams) -> Result<TrainSummary> {
        let _ = (job, params);
        Err("`train` not implemented".to_owned())
    }
}

/// A snapshot of the trainable parameters, held by the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Snapshot(pub u32);

/// Samples encoded by the host for a training step; dropping it frees them.
pub struct Batch<'a> {
    #[cfg(target_arch = "wasm32")]
    inner: crate::__private::wasm::bindings::concepts::plugin::training_host::Batch,
    #[cfg(target_arch = "wasm32")]
    _job: core::marker::PhantomData<&'a ()>,
    #[cfg(not(target_arch = "wasm32"))]
    backend: &'a dyn crate::backend::TrainingBackend,
    #[cfg(not(target_arch = "wasm32"))]
    handle: u32,
}

impl Batch<'_> {
    /// Number of samples in the batch.
    pub fn len(&self) -> u32 {
        #[cfg(target_arch = "wasm32")]
        return self.inner.len();
        #[cfg(not(target_arch = "wasm32"))]
        return self.backend.batch_len(self.handle);
    }

    /// Whether the batch has no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Drop for Batch<'_> {
    fn drop(&mut self) {
        self.backend.drop_batch(self.handle);
    }
}

/// One training job: the host's training engine and services.
pub struct TrainingJob<'a> {
    cx: Context<'a>,
    #[cfg(not(target_arch = "wasm32"))]
    backend: &'a dyn crate::backend::TrainingBackend,
}

impl<'a> TrainingJob<'a> {
    #[cfg(target_arch = "wasm32")]
    pub(crate) fn new() -> TrainingJob<'a> {
        TrainingJob { cx: Context::new() }
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn new(backend: &'a dyn crate::backend::TrainingBackend) -> TrainingJob<'a> {
        TrainingJob {
            cx: Context::new(backend.as_host()),
            backend,
        }
    }

    /// The sizes of the sample lists.
    pub fn counts(&self) -> SampleCounts {
        #[cfg(target_arch = "wasm32")]
        return crate::__private::wasm::counts();
        #[cfg(not(target_arch = "wasm32"))]
        return self.backend.counts();
    }

    /// Encodes `samples` into a batch.
    pub fn build_batch(&self, samples: &[SampleRef]) -> Result<Batch<'a>> {
        #[cfg(target_arch = "wasm32")]
        return crate::__private::wasm::build_batch(samples).map(|inner| Batch {
            inner,
            _job: core::marker::PhantomData,
        });
        #[cfg(not(target_arch = "wasm32"))]
        return self.backend.build_batch(samples).map(|handle| Batch {
            backend: self.backend,
            handle,
        });
    }

    /// One optimiser step on `batch`; returns the batch loss before the step.
    pub fn train_step(&self, batch: &Batch<'_>, learning_rate: f32) -> Result<f32> {
        #[cfg(target_arch = "wasm32")]
        return crate::__private::wasm::train_step(&batch.inner, learning_rate);
        #[cfg(not(target_arch = "wasm32"))]
        return self.backend.train_step(batch.handle, learning_rate);
    }

    /// Evaluates recognition on `split` without changing parameters.
    pub fn evaluate_recognition(&self, split: Split) -> Result<Recognition> {
        #[cfg(target_arch = "wasm32")]
        return crate::__private::wasm::evaluate_recognition(split);
        #[cfg(not(target_arch = "wasm32"))]
        return self.backend.evaluate_recognition(split);
    }

    /// Copies the trainable parameters.
    pub fn snapshot(&self) -> Result<Snapshot> {
        #[cfg(target_arch = "wasm32")]
        return crate::__private::wasm::snapshot().map(Snapshot);
        #[cfg(not(target_arch = "wasm32"))]
        return self.backend.snapshot().map(Snapshot);
    }

    /// Restores the trainable parameters from `snapshot`.
    pub fn restore(&self, snapshot: Snapshot) -> Result<()> {
        #[cfg(target_arch = "wasm32")]
        return crate::__private::wasm::restore(snapshot.0);
        #[cfg(not(target_arch = "wasm32"))]
        return self.backend.restore(snapshot.0);
    }

    /// Records an epoch's outcome.
    pub fn report_epoch(&self, report: &EpochReport) {
        #[cfg(target_arch = "wasm32")]
        crate::__private::wasm::report_epoch(report);
        #[cfg(not(target_arch = "wasm32"))]
        self.backend.report_epoch(report);
    }
}

impl<'a> core::ops::Deref for TrainingJob<'a> {
    type Target = Context<'a>;

    fn deref(&self) -> &Context<'a> {
        &self.cx
    }
}
