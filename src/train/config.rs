//! What a training run is asked to do, every setting resolved.

use serde::Serialize;

use super::fault::Fault;
use crate::comm::{GradDtype, Transport};
use crate::data::DataSpec;
use crate::model::ModelKind;
use crate::optim::schedule::LrPlan;
use crate::optim::SgdConfig;

/// Whether the exchange overlaps backward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    /// On where the ranks span several hosts (CPU ranks), off on one host
    Auto,
    On,
    Off,
}

/// Everything a run is asked to do.
#[derive(Clone, Debug, Serialize)]
pub struct TrainConfig {
    pub model: ModelKind,
    pub image_size: usize,
    pub classes: usize,
    /// Images per rank per step.
    pub batch_size: usize,
    pub epochs: usize,
    /// Stop after this many steps, whatever the epochs.
    pub steps: Option<usize>,
    pub lr: LrPlan,
    pub sgd: SgdConfig,
    pub grad_dtype: GradDtype,
    pub bucket_bytes: usize,
    pub transport: Transport,
    /// A barrier before each exchange, so that the wait for the slowest rank
    /// is measured apart (resolved by `launch` from `--measure-wait` and the overlap).
    pub measure_wait: bool,
    /// Exchange each bucket as soon as backward has finished its gradients,
    /// while backward goes on (resolved by `launch` from `--overlap`).
    pub overlap: bool,
    pub seed: u64,
    #[serde(serialize_with = "crate::record::files::serialize_display")]
    pub data: DataSpec,
    /// Samples per epoch of synthetic data.
    pub synthetic_len: usize,
    pub dropout: Option<f32>,
    /// Every this many steps, check that all ranks hold identical parameters.
    pub verify_sync: Option<usize>,
    /// Where rank 0 writes `checkpoint.safetensors` (every `checkpoint_every`
    /// steps and at the end), and where `resume` reads it.
    pub checkpoint_dir: Option<std::path::PathBuf>,
    pub checkpoint_every: Option<usize>,
    pub resume: bool,
    /// Parameters and batch-norm buffers to start from (torchvision's names;
    /// a candle-mpi checkpoint too), read by rank 0.
    pub init_from: Option<std::path::PathBuf>,
    /// Validate every this many epochs as well as at the end (data with a test split).
    pub val_every: Option<usize>,
    /// Steps left out of the step-time statistics (at least the first).
    pub warmup_steps: usize,
    /// A rank waiting longer than this in a collective ends the job (zero: never).
    pub collective_timeout: std::time::Duration,
    /// Consecutive skipped steps after which the run stops.
    pub max_skips: usize,
    /// Test aid: a fault to inject (see fault.rs).
    #[serde(skip)]
    pub fault: Option<Fault>,
}
