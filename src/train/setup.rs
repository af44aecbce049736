//! A run before its first step: the network with rank 0's weights, the
//! data, the optimizer (restored from a checkpoint on `--resume`), the
//! start-up check, the exchange and the watchdog; and what the steps keep
//! between them.

use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Var};

use super::checkpoint::{self, RunState};
use super::config::TrainConfig;
use super::fault;
use super::handshake::handshake;
use super::watchdog::Watchdog;
use super::weights;
use crate::comm::{Comm, WorldInfo};
use crate::data::loader::{Loader, Plan};
use crate::data::{self, Dataset, Split};
use crate::exchange::GradExchange;
use crate::model::params::{self, ParamStore};
use crate::model::{ModelConfig, Network};
use crate::optim::Sgd;
use crate::record::steps::StepRecord;

/// A run under way. Fields are dropped in order: the loader's thread first,
/// then the watchdog's, then the exchange's buckets.
pub(super) struct Run<'a> {
    pub cfg: &'a TrainConfig,
    pub comm: &'a Comm,
    pub device: &'a Device,
    pub info: WorldInfo,
    pub loader: Loader,
    pub watchdog: Watchdog,
    pub exchange: GradExchange,
    pub net: Box<dyn Network>,
    pub params: Vec<(String, Var)>,
    pub sgd: Sgd,
    pub checkpoint: RunState,
    pub channels: usize,
    pub test_data: Option<Arc<dyn Dataset>>,
    /// The first step this process runs (after a resumed checkpoint's), and the end.
    pub first_step: usize,
    pub total_steps: usize,
    pub steps_per_epoch: usize,
    pub tally: Tally,
    /// The last step's loss on this rank.
    pub last_loss: f32,
}

/// What the steps count and time as they go.
pub(super) struct Tally {
    pub records: Vec<StepRecord>,
    pub skipped: usize,
    pub consecutive_skips: usize,
    /// (epochs completed, top-1) of every validation so far.
    pub val_history: Vec<(usize, f64)>,
    /// Time rank 0 spent writing checkpoints, all of it and by the end of the first step.
    pub checkpoint_s: f64,
    pub checkpoint_s_first: f64,
    /// Mid-run validations are not training: their time leaves the throughput.
    pub mid_val_s: f64,
    pub gpu_peak_mib: f64,
    /// When the first step ended (the start, until it has).
    pub after_first: Instant,
}

impl Tally {
    fn new(steps: usize) -> Self {
        Self {
            records: Vec::with_capacity(steps),
            skipped: 0,
            consecutive_skips: 0,
            val_history: vec![],
            checkpoint_s: 0.0,
            checkpoint_s_first: 0.0,
            mid_val_s: 0.0,
            gpu_peak_mib: 0.0,
            after_first: Instant::now(),
        }
    }
}

/// What a rank builds on its own before any collective: the data, the
/// network from the seed, its optimizer and the run's length.
struct Local {
    train_data: Arc<dyn Dataset>,
    test_data: Option<Arc<dyn Dataset>>,
    model_cfg: ModelConfig,
    store: ParamStore,
    net: Box<dyn Network>,
    params: Vec<(String, Var)>,
    sgd: Sgd,
    steps_per_epoch: usize,
    total_steps: usize,
}

impl Local {
    fn build(cfg: &TrainConfig, info: &WorldInfo, device: &Device) -> anyhow::Result<Self> {
        anyhow::ensure!(cfg.batch_size >= 1, "--batch-size {}: need at least 1 image per rank", cfg.batch_size);
        let open = |split| data::source::open(&cfg.data, split, cfg.classes, cfg.seed, cfg.synthetic_len);
        let train_data = open(Split::Train)?.expect("every data source has a training split");
        let test_data = open(Split::Test)?;
        let model_cfg = ModelConfig {
            in_channels: train_data.channels(),
            dropout: cfg.dropout,
            ..ModelConfig::new(cfg.classes, cfg.image_size)
        };
        let store = ParamStore::new(cfg.seed);
        let net = cfg.model.build(&model_cfg, store.var_builder(DType::F32, device))?;
        let params = store.trainable_sorted();
        crate::host::memory::check_room(&format!("--model {}", cfg.model), store.parameter_count(), info.local_size)?;
        let sgd = Sgd::new(params.clone(), cfg.sgd)?;
        let per_rank = train_data.len() / info.size;
        let steps_per_epoch = per_rank / cfg.batch_size;
        anyhow::ensure!(
            steps_per_epoch >= 1,
            "--batch-size {}: each of the {} rank(s) gets {} samples per epoch, fewer than one batch",
            cfg.batch_size,
            info.size,
            per_rank
        );
        let total_steps = cfg.steps.unwrap_or(steps_per_epoch * cfg.epochs);
        // A one-step run reports its only step; longer runs time what follows the warm-up.
        anyhow::ensure!(
            cfg.warmup_steps <= 1 || cfg.warmup_steps < total_steps,
            "--warmup-steps {}: the run has {total_steps} step(s); leave at least one step after the warm-up to time",
            cfg.warmup_steps
        );
        Ok(Self { train_data, test_data, model_cfg, store, net, params, sgd, steps_per_epoch, total_steps })
    }

    /// What every rank must agree on about its data: kind, samples, channels.
    fn data_text(&self, cfg: &TrainConfig) -> String {
        let kind = cfg.data.to_string();
        let kind = kind.split(':').next().unwrap_or_default();
        let test = self.test_data.as_ref().map_or(0, |t| t.len());
        format!(
            "{kind}: {} training samples of {} channels, {test} test samples",
            self.train_data.len(),
            self.train_data.channels()
        )
    }
}

impl<'a> Run<'a> {
    /// Collective: everything before step 1, in the same order on every
    /// rank, each collective watched: first what a rank builds alone, then
    /// where the watchdog reads every rank's progress, the start-up check,
    /// the resumed checkpoint, rank 0's weights, the exchange's buckets.
    pub fn prepare(cfg: &'a TrainConfig, comm: &'a Comm, device: &'a Device) -> anyhow::Result<Self> {
        let info = comm.info().clone();
        let control = comm.control();
        let mut watchdog = Watchdog::start(&info, cfg.collective_timeout);
        let mut local = Local::build(cfg, &info, device)?;
        let data_text = local.data_text(cfg);
        watchdog.share_progress(control)?;
        fault::strike_process(cfg.fault, info.rank, 0)?;
        watchdog.watch(0, "the start-up check", || handshake(cfg, &local.params, &data_text, control))?;
        if let Some(path) = &cfg.init_from {
            let source = format!("--init-from {}", path.display());
            let read = match info.rank {
                0 => weights::read(path, "--init-from").and_then(|t| weights::apply(&t, &local.store, &source)),
                _ => Ok(()),
            };
            watchdog.watch(0, "reading --init-from (rank 0)", || control.agree(&source, read))?;
        }
        let first_step = if cfg.resume {
            let path = checkpoint::run_path(cfg.checkpoint_dir.as_deref())?;
            let (model, model_cfg, store, sgd) = (cfg.model, &local.model_cfg, &local.store, &mut local.sgd);
            let step = watchdog.watch(0, "resuming (rank 0 reads the checkpoint)", || {
                checkpoint::resume_run(&path, model, model_cfg, store, sgd, control)
            })?;
            anyhow::ensure!(
                step < local.total_steps,
                "--resume: the checkpoint in {} is at step {step} and this run ends at step {}: nothing left to train \
                 (ask for more --steps or --epochs)",
                path.display(),
                local.total_steps
            );
            step
        } else {
            0
        };
        watchdog.watch(0, "the broadcast of rank 0's weights", || broadcast_from_rank0(&local.store, comm, false))?;
        // Which stage finishes each gradient: the same on every rank, found alone.
        let stage_of = match cfg.overlap {
            true => {
                // Backward computes while the exchange waits: leave it the cores.
                crate::comm::waiting::poll_while_waiting(Some(crate::comm::waiting::BESIDE_COMPUTE));
                let shape = (1, local.train_data.channels(), cfg.image_size, cfg.image_size);
                Some(super::staged::stage_of_params(local.net.as_ref(), &local.params, shape)?)
            }
            false => None,
        };
        let exchange = watchdog.watch(0, "allocating the exchange's buckets", || match &stage_of {
            Some(stages) => {
                GradExchange::overlapped(&local.params, cfg.bucket_bytes, cfg.grad_dtype, comm, cfg.transport, stages)
            }
            None => GradExchange::new(&local.params, cfg.bucket_bytes, cfg.grad_dtype, comm, cfg.transport),
        })?;
        Self::assemble(cfg, comm, device, info, local, first_step, watchdog, exchange)
    }

    /// The run from its parts, the loader started at `first_step`.
    #[allow(clippy::too_many_arguments)]
    fn assemble(
        cfg: &'a TrainConfig,
        comm: &'a Comm,
        device: &'a Device,
        info: WorldInfo,
        local: Local,
        first_step: usize,
        watchdog: Watchdog,
        exchange: GradExchange,
    ) -> anyhow::Result<Self> {
        let Local { train_data, test_data, model_cfg, store, net, params, sgd, steps_per_epoch, total_steps } = local;
        let channels = train_data.channels();
        let plan = Plan {
            first_step,
            last_step: total_steps,
            steps_per_epoch,
            batch: cfg.batch_size,
            size: cfg.image_size,
            seed: cfg.seed,
            rank: info.rank,
            world: info.size,
        };
        let loader = Loader::spawn(train_data, plan);
        let checkpoint = RunState { model: cfg.model, model_cfg, store, config: serde_json::to_string(cfg)? };
        Ok(Self {
            cfg,
            comm,
            device,
            info,
            loader,
            watchdog,
            exchange,
            net,
            params,
            sgd,
            checkpoint,
            channels,
            test_data,
            first_step,
            total_steps,
            steps_per_epoch,
            tally: Tally::new(total_steps - first_step),
            last_loss: f32::NAN,
        })
    }
}

/// Copies every variable (parameters and buffers) of rank 0 to all ranks.
pub(super) fn broadcast_from_rank0(store: &ParamStore, comm: &Comm, only_buffers: bool) -> anyhow::Result<()> {
    for (name, var) in store.all_sorted() {
        if only_buffers && !params::is_buffer(&name) {
            continue;
        }
        var.set(&comm.control().broadcast_tensor(var.as_tensor())?)?;
    }
    Ok(())
}
