//! `candle-mpi train`: data-parallel training, alone or under mpirun.

use std::time::Duration;

use clap::Args;

use candle_mpi::comm::{GradDtype, Transport};
use candle_mpi::data::DataSpec;
use candle_mpi::host::device::DeviceKind;
use candle_mpi::model::ModelKind;
use candle_mpi::optim::schedule::{LrPlan, LrSchedule};
use candle_mpi::optim::SgdConfig;
use candle_mpi::train::fault::Fault;
use candle_mpi::train::{self, Launch, Overlap, TrainConfig};

#[derive(Args, serde::Serialize)]
pub struct TrainArgs {
    /// Network to train
    #[arg(long, value_enum)]
    model: ModelKind,
    /// Where each rank computes
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
    /// Data: synthetic (generated from --seed), mnist:DIR (IDX files, raw or gzip)
    /// or cifar10:DIR (the binary version: data_batch_1..5.bin, test_batch.bin)
    #[arg(long, default_value = "synthetic")]
    #[serde(serialize_with = "candle_mpi::record::files::serialize_display")]
    data: DataSpec,
    /// Samples per epoch of synthetic data
    #[arg(long, default_value_t = 1024)]
    synthetic_size: usize,
    /// Images per rank per step [default: 32]
    #[arg(long, conflicts_with = "global_batch")]
    batch_size: Option<usize>,
    /// Images per step over all ranks, split evenly (strong scaling); must divide by the ranks
    #[arg(long, value_name = "G")]
    global_batch: Option<usize>,
    /// Input side in pixels [default: the network's own]
    #[arg(long, value_name = "PIXELS")]
    image_size: Option<usize>,
    /// Classes of the classifier
    #[arg(long, default_value_t = 10, value_name = "K")]
    classes: usize,
    /// Epochs to train
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Stop after this many steps instead
    #[arg(long)]
    steps: Option<usize>,
    /// Base learning rate (per global batch of this world, unless --scale-lr)
    #[arg(long, default_value_t = 0.1)]
    lr: f64,
    /// Multiply --lr by the number of ranks (the linear scaling rule)
    #[arg(long)]
    scale_lr: bool,
    #[arg(long, value_enum, default_value_t = LrSchedule::Const)]
    lr_schedule: LrSchedule,
    /// Epochs of linear warm-up from 0 to the learning rate
    #[arg(long, default_value_t = 0.0)]
    warmup_epochs: f64,
    /// SGD momentum
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// Nesterov momentum
    #[arg(long)]
    nesterov: bool,
    /// L2 weight decay (not on biases or norm parameters)
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f64,
    /// Dropout of the classifier [default: the network's own]
    #[arg(long)]
    dropout: Option<f32>,
    /// Element type gradients travel in
    #[arg(long, value_enum, default_value_t = GradDtype::F16)]
    grad_dtype: GradDtype,
    /// Size of a gradient bucket, in MiB
    #[arg(long, default_value_t = 25.0)]
    bucket_mb: f64,
    /// Which MPI data plane sums the gradients (CPU ranks)
    #[arg(long, value_enum, default_value_t = Transport::Auto)]
    transport: Transport,
    /// Send each bucket of gradients as soon as backward has finished it, while
    /// the earlier layers' backward still runs (PyTorch DDP's overlap): buckets
    /// in reverse order of the forward pass, the first one 1 MiB. On CPUs the
    /// same gradients bit for bit; on GPUs NCCL sums on its own stream while
    /// backward computes (NCCL's sums depend on the buckets, so not bit for
    /// bit). comm_s is then the exchange time left after backward, exchange_s
    /// all of it (on GPUs only what the host waits for: the same as comm_s).
    /// auto: on where the ranks span several hosts (CPU ranks), where it was
    /// measured to help; off on one host, where it gains about nothing and the
    /// barrier's wait is measured instead. A bare --overlap is on
    #[arg(long, value_enum, default_value_t = Overlap::Auto, num_args = 0..=1, default_missing_value = "on",
          value_name = "auto|on|off")]
    overlap: Overlap,
    /// Wait at a barrier before the exchange, to measure the load imbalance
    /// (wait_s); false saves that round trip, and the wait then shows up in comm_s
    /// [default: true, false when the exchange overlaps backward]
    #[arg(long, action = clap::ArgAction::Set, value_name = "true|false")]
    measure_wait: Option<bool>,
    /// Seed of weights, shuffling and synthetic data
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Every K steps, check that all ranks hold identical parameters (a hash
    /// all-gathered) and stop naming the ranks that differ
    #[arg(long, value_name = "K")]
    verify_sync: Option<usize>,
    /// Validate every N epochs as well as at the end (mnist and cifar10 data)
    #[arg(long, value_name = "N")]
    val_every: Option<usize>,
    /// Directory of checkpoint.safetensors (rank 0 writes it; --resume reads it)
    #[arg(long, value_name = "DIR")]
    checkpoint_dir: Option<std::path::PathBuf>,
    /// Write a checkpoint every N steps (and at the end) [default: only at the end]
    #[arg(long, value_name = "N")]
    checkpoint_every: Option<usize>,
    /// Continue from the checkpoint in --checkpoint-dir: weights, momentum and step
    #[arg(long)]
    resume: bool,
    /// Start from these weights: a safetensors file under torchvision's names
    /// (scripts/torchvision-export.py writes one) or a candle-mpi checkpoint;
    /// every parameter and batch-norm buffer must be there with its shape
    #[arg(long, value_name = "FILE")]
    init_from: Option<std::path::PathBuf>,
    /// Steps left out of the step-time statistics (warm-up); the first step is always reported apart
    #[arg(long, default_value_t = 1, value_name = "N")]
    warmup_steps: usize,
    /// Print a progress line every N steps (rank 0)
    #[arg(long, default_value_t = 10)]
    log_every: usize,
    /// Directory for the run's records: config.json, steps.csv (one row per
    /// step and rank) and summary.json. Created if missing; a directory that
    /// holds another run's records is refused unless --overwrite.
    #[arg(long, value_name = "DIR")]
    out: Option<std::path::PathBuf>,
    /// Replace the records of an earlier run in --out
    #[arg(long)]
    overwrite: bool,
    /// A rank that waits longer than this in a collective (a dead or stuck
    /// peer) ends the job, naming the step and the missing ranks; 0 waits for ever
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    collective_timeout: f64,
    /// Stop after this many consecutive steps skipped for a non-finite gradient
    #[arg(long, default_value_t = 10, value_name = "N")]
    max_skips: usize,
    /// Test aid: make rank RANK fail at step STEP (KIND: kill, hang, exit,
    /// overflow, nan, desync, ckpt-kill); also read from CANDLE_MPI_FAULT
    #[arg(long, value_name = "RANK:STEP:KIND")]
    #[serde(serialize_with = "serialize_debug")]
    fault_inject: Option<Fault>,
}

fn serialize_debug<T: std::fmt::Debug, S: serde::Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format!("{value:?}"))
}

pub fn exec(args: &TrainArgs) -> anyhow::Result<()> {
    let config = TrainConfig {
        model: args.model,
        image_size: args.image_size.unwrap_or(args.model.default_image_size()),
        classes: args.classes,
        batch_size: args.batch_size.unwrap_or(32),
        epochs: args.epochs,
        steps: args.steps,
        lr: LrPlan::new(args.lr, args.lr_schedule, args.warmup_epochs, args.epochs as f64),
        sgd: SgdConfig { momentum: args.momentum, nesterov: args.nesterov, weight_decay: args.weight_decay },
        grad_dtype: args.grad_dtype,
        bucket_bytes: (args.bucket_mb * 1024.0 * 1024.0) as usize,
        transport: args.transport,
        // Resolved by `launch`, which knows the hosts.
        measure_wait: true,
        overlap: false,
        seed: args.seed,
        data: args.data.clone(),
        synthetic_len: args.synthetic_size,
        dropout: args.dropout,
        verify_sync: args.verify_sync,
        checkpoint_dir: args.checkpoint_dir.clone(),
        checkpoint_every: args.checkpoint_every,
        resume: args.resume,
        init_from: args.init_from.clone(),
        val_every: args.val_every,
        warmup_steps: args.warmup_steps,
        // Checked by `launch` from the seconds given.
        collective_timeout: Duration::try_from_secs_f64(args.collective_timeout).unwrap_or_default(),
        max_skips: args.max_skips,
        fault: args.fault_inject,
    };
    train::launch(&Launch {
        config,
        global_batch: args.global_batch,
        scale_lr: args.scale_lr,
        bucket_mb: args.bucket_mb,
        collective_timeout_s: args.collective_timeout,
        device: args.device,
        log_every: args.log_every,
        out: args.out.clone(),
        overwrite: args.overwrite,
        args: serde_json::to_value(args)?,
        overlap: args.overlap,
        measure_wait: args.measure_wait,
    })
}
