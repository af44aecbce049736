//! What a training run reports: rank 0 writes it as summary.json.

use serde::Serialize;

use super::steps::{StepRecord, StepStats};
use crate::comm::GradDtype;
use crate::model::ModelKind;

/// What a run reports (rank 0 writes it as summary.json). Step times are the
/// slowest rank's; see `record::StepStats` for how each figure is taken.
#[derive(Clone, Debug, Serialize)]
pub struct TrainSummary {
    pub model: ModelKind,
    pub device: &'static str,
    pub world_size: usize,
    pub batch_per_rank: usize,
    pub global_batch: usize,
    pub image_size: usize,
    pub grad_dtype: GradDtype,
    /// Whether the exchange overlapped backward (`--overlap`, resolved).
    pub overlap: bool,
    /// The last step of the run (a resumed run counts from 0).
    pub steps: usize,
    /// The step a `--resume` run started from (0 for a fresh run).
    pub resumed_from_step: usize,
    /// Images this process trained on (all ranks).
    pub images: usize,
    /// Wall time of all steps but the first, validations and checkpoints left out.
    pub seconds: f64,
    #[serde(flatten)]
    pub times: StepStats,
    /// Global batch over the median step time.
    pub images_per_s: f64,
    /// The unit of Theano-MPI's tables: seconds to train 5120 images.
    pub s_per_5120_images: f64,
    /// Time rank 0 spent writing checkpoints.
    pub checkpoint_s: f64,
    /// Peak resident memory of each rank, MiB, in rank order.
    pub peak_rss_mib: Vec<f64>,
    /// Peak memory in use on each rank's whole GPU, MiB (CUDA runs only):
    /// total minus free, sampled after every step, so the CUDA context,
    /// cuBLAS's workspace and the memory pool's cached reserve are in it.
    pub gpu_mem_peak_mib: Option<Vec<f64>>,
    /// High-water mark of the memory candle's tensors took on each rank's
    /// GPU, MiB: the memory pool's own, exact between samples (CUDA runs on
    /// GPUs with memory pools only).
    pub gpu_tensor_peak_mib: Option<Vec<f64>>,
    pub skipped_steps: usize,
    pub final_loss: f32,
    /// L2 norm of all trainable parameters at the end.
    pub param_l2: f64,
    /// Mean loss, top-1 and top-5 fractions on the whole test split (data with one).
    pub val_loss: Option<f64>,
    pub val_top1: Option<f64>,
    pub val_top5: Option<f64>,
    pub val_images: usize,
    /// (epochs completed, top-1) of every validation, the final one included.
    pub val_history: Vec<(usize, f64)>,
    /// Every rank's steps, by step then rank (written to steps.csv, not into the summary).
    #[serde(skip)]
    pub records: Vec<StepRecord>,
}
