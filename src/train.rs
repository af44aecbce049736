//! The data-parallel step loop: the same code on one process or N under mpirun.
//!
//! Before step 1 rank 0's parameters and buffers are broadcast. Each step every
//! rank reads its shard of the global batch, runs forward and backward
//! (compute), waits at a barrier for the slowest rank (wait: the load imbalance
//! Theano-MPI calls wait), exchanges gradients (comm) and applies SGD, unless
//! the exchange found a non-finite value, in which case every rank skips it.

use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use serde::Serialize;

use crate::checkpoint;
use crate::comm::{broadcast_tensor, Collective, Transport};
use crate::data::loader::{Loader, Plan};
use crate::data::folder::ImageFolder;
use crate::data::{batch, load_cifar10, load_mnist, sampler::shard, to_tensors, DataSpec, Dataset, Split, Synthetic};
use crate::exchange::{bucket_layout, GradDtype, GradExchange};
use crate::models::{ModelConfig, ModelKind, Network};
use crate::optim::{LrPlan, Sgd, SgdConfig};
use crate::params::ParamStore;
use crate::device;
use crate::fault::{self, Fault, FaultKind};
use crate::watchdog::Watchdog;
use crate::record::{self, StepRecord, StepStats};

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
    pub seed: u64,
    #[serde(serialize_with = "crate::output::serialize_display")]
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

/// Collective: before any gradient travels, every rank compares what it is
/// about to run with rank 0 (a hash per field) and all stop, naming the ranks
/// and fields that differ: ranks that disagree on the network, the bucket
/// layout or the flags would otherwise exchange mismatched buffers.
fn handshake(cfg: &TrainConfig, params: &[(String, candle_core::Var)], comm: &dyn Collective) -> anyhow::Result<()> {
    // 52 bits of each field's hash travel exactly in an f64.
    let hash = |text: String| (crate::rng::hash_str(&text) & ((1 << 52) - 1)) as f64;
    let shapes: String = params.iter().map(|(n, v)| format!("{n}{:?};", v.dims())).collect();
    let fields: [(&str, String); 6] = [
        ("network", format!("{} {} classes {} px", cfg.model, cfg.classes, cfg.image_size)),
        ("parameter shapes", shapes),
        ("gradient dtype", format!("{:?}", cfg.grad_dtype)),
        ("bucket layout", bucket_layout(params, cfg.bucket_bytes, cfg.grad_dtype)),
        ("batch and steps", format!("{} {:?} {}", cfg.batch_size, cfg.steps, cfg.epochs)),
        ("optimizer and seed", format!("{:?} {:?} {}", cfg.lr, cfg.sgd, cfg.seed)),
    ];
    let mine: Vec<f64> = fields.iter().map(|(_, v)| hash(v.clone())).collect();
    let all = comm.all_gather_f64s(&mine)?;
    let n = fields.len();
    let mut differ = vec![];
    for (r, theirs) in all.chunks(n).enumerate().skip(1) {
        let names: Vec<&str> = (0..n).filter(|&i| theirs[i] != all[i]).map(|i| fields[i].0).collect();
        if !names.is_empty() {
            differ.push(format!("rank {r} ({})", names.join(", ")));
        }
    }
    anyhow::ensure!(
        differ.is_empty(),
        "start-up check: {} differ from rank 0; every rank must run the same command and build",
        differ.join("; ")
    );
    Ok(())
}

/// FNV-1a over the bits of every trainable parameter, in name order.
fn parameter_hash(params: &[(String, candle_core::Var)]) -> anyhow::Result<u64> {
    let mut h = crate::rng::Fnv1a::default();
    for (_, var) in params {
        let values: Vec<f32> = var.as_tensor().to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        for v in values {
            h.add(u64::from(v.to_bits()));
        }
    }
    Ok(h.finish())
}

/// Peak resident memory of this process in MiB (Linux VmHWM), 0 where unknown.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map_or(0.0, |kib| kib / 1024.0)
}

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
    /// Peak GPU memory in use on each rank's device, MiB (CUDA runs only).
    pub gpu_mem_peak_mib: Option<Vec<f64>>,
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

/// What a validation pass measured over the whole test split.
#[derive(Clone, Copy, Debug)]
struct Validation {
    loss: f64,
    top1: f64,
    top5: f64,
    images: usize,
}

/// L2 norm of all the parameters, accumulated in f64.
fn param_l2(params: &[(String, candle_core::Var)]) -> anyhow::Result<f64> {
    let mut sum = 0f64;
    for (_, var) in params {
        let values: Vec<f32> = var.as_tensor().to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        sum += values.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>();
    }
    Ok(sum.sqrt())
}

/// One split of the data; None when the data has no such split (synthetic
/// data, or an image folder without train/ and val/ has no test split).
fn open_data(cfg: &TrainConfig, split: Split) -> anyhow::Result<Option<Arc<dyn Dataset>>> {
    if split == Split::Test && cfg.data == DataSpec::Synthetic {
        return Ok(None);
    }
    Ok(Some(match &cfg.data {
        DataSpec::Synthetic => Arc::new(Synthetic { len: cfg.synthetic_len, classes: cfg.classes, seed: cfg.seed }),
        DataSpec::Mnist(dir) => {
            let d = load_mnist(dir, split)?;
            d.check_labels(cfg.classes, &format!("--data mnist:{}", dir.display()))?;
            Arc::new(d)
        }
        DataSpec::Cifar10(dir) => {
            let d = load_cifar10(dir, split)?;
            d.check_labels(cfg.classes, &format!("--data cifar10:{}", dir.display()))?;
            Arc::new(d)
        }
        DataSpec::Folder(dir) => match ImageFolder::open(dir, split, cfg.seed)? {
            Some(d) => {
                d.check_classes(cfg.classes, &format!("--data folder:{}", dir.display()))?;
                Arc::new(d)
            }
            None => return Ok(None),
        },
    }))
}

/// Copies every variable (parameters and buffers) of rank 0 to all ranks.
fn broadcast_from_rank0(store: &ParamStore, comm: &dyn Collective, only_buffers: bool) -> anyhow::Result<()> {
    for (name, var) in store.all_sorted() {
        if only_buffers && !crate::params::is_buffer(&name) {
            continue;
        }
        var.set(&broadcast_tensor(comm, var.as_tensor())?)?;
    }
    Ok(())
}

fn checkpoint_path(cfg: &TrainConfig) -> anyhow::Result<std::path::PathBuf> {
    let dir = cfg.checkpoint_dir.as_ref().ok_or_else(|| anyhow::anyhow!("--resume needs --checkpoint-dir"))?;
    Ok(dir.join(checkpoint::FILE_NAME))
}

/// Loss, top-1 and top-5 on the test split, each rank on its shard; every
/// rank gets the totals. Top-5 is top-k with k = min(5, classes).
fn evaluate(net: &dyn Network, cfg: &TrainConfig, ds: &dyn Dataset, comm: &dyn Collective, device: &Device) -> anyhow::Result<Validation> {
    let info = comm.info();
    let mine = shard(ds.len(), 0, cfg.seed, info.rank, info.size, false);
    let k = cfg.classes.min(5);
    let (mut loss_sum, mut top1, mut top5) = (0f64, 0u64, 0u64);
    for chunk in mine.chunks(cfg.batch_size.max(1)) {
        let (x, y) = batch(ds, chunk, cfg.image_size, device)?;
        let logits = net.forward_t(&x, false)?;
        loss_sum += f64::from(candle_nn::loss::cross_entropy(&logits, &y)?.to_scalar::<f32>()?) * chunk.len() as f64;
        let logits: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
        let labels: Vec<u32> = y.to_vec1()?;
        for (row, &label) in logits.iter().zip(&labels) {
            let target = row[label as usize];
            // Rank of the true class: how many classes score above it (ties count against it).
            let above = row.iter().enumerate().filter(|&(c, &v)| v > target || (v == target && c < label as usize)).count();
            top1 += u64::from(above == 0);
            top5 += u64::from(above < k);
        }
    }
    let seen = (mine.len() * info.size).max(1) as f64;
    let sums = comm.all_gather_f64s(&[loss_sum, top1 as f64, top5 as f64])?;
    let total = |i: usize| sums.chunks(3).map(|c| c[i]).sum::<f64>();
    Ok(Validation { loss: total(0) / seen, top1: total(1) / seen, top5: total(2) / seen, images: mine.len() * info.size })
}

/// Trains; `on_step(step, loss, skipped)` sees every step (rank 0 prints from it).
pub fn run(cfg: &TrainConfig, comm: &dyn Collective, device: &Device, mut on_step: impl FnMut(usize, usize, f32, bool)) -> anyhow::Result<TrainSummary> {
    anyhow::ensure!(cfg.batch_size >= 1, "--batch-size {}: need at least 1 image per rank", cfg.batch_size);
    let info = comm.info().clone();
    let train_data = open_data(cfg, Split::Train)?.expect("every data source has a training split");
    let model_cfg = ModelConfig {
        in_channels: train_data.channels(),
        dropout: cfg.dropout,
        ..ModelConfig::new(cfg.classes, cfg.image_size)
    };
    let store = ParamStore::new(cfg.seed);
    let net = cfg.model.build(&model_cfg, store.var_builder(DType::F32, device))?;
    let params = store.trainable_sorted();
    let mut sgd = Sgd::new(params.clone(), cfg.sgd)?;
    let start_step = if cfg.resume { checkpoint::resume_run(&checkpoint_path(cfg)?, cfg.model, &model_cfg, &store, &mut sgd, comm)? } else { 0 };
    broadcast_from_rank0(&store, comm, false)?;
    handshake(cfg, &params, comm)?;
    let config_json = serde_json::to_string(cfg)?;
    let run_state = checkpoint::RunState { model: cfg.model, model_cfg: &model_cfg, store: &store, config: config_json };
    let mut exchange = GradExchange::new(&params, cfg.bucket_bytes, cfg.grad_dtype, comm, cfg.transport)?;
    let mut watchdog = Watchdog::start(comm, cfg.collective_timeout)?;
    let fault = cfg.fault;
    let mut consecutive_skips = 0usize;

    let per_rank = train_data.len() / info.size;
    let steps_per_epoch = per_rank / cfg.batch_size;
    anyhow::ensure!(
        steps_per_epoch >= 1,
        "--batch-size {}: each of the {} rank(s) gets {} samples per epoch, fewer than one batch",
        cfg.batch_size,
        info.size,
        per_rank
    );
    let total_steps = cfg.steps.unwrap_or(steps_per_epoch * cfg.epochs.max(1));

    let (mut skipped, mut final_loss) = (0usize, f32::NAN);
    let channels = train_data.channels();
    let loader = Loader::spawn(
        train_data,
        Plan {
            first_step: start_step,
            last_step: total_steps,
            steps_per_epoch,
            batch: cfg.batch_size,
            size: cfg.image_size,
            seed: cfg.seed,
            rank: info.rank,
            world: info.size,
        },
    );
    let test_data = open_data(cfg, Split::Test)?;
    // Batch-norm statistics differ per rank: validate rank 0's, as DDP does.
    let validate = |net: &dyn Network| -> anyhow::Result<Option<Validation>> {
        let Some(test) = &test_data else { return Ok(None) };
        broadcast_from_rank0(&store, comm, true)?;
        Ok(Some(evaluate(net, cfg, test.as_ref(), comm, device)?))
    };
    let mut val_history = vec![];
    let (mut checkpoint_s, mut checkpoint_s_first, mut gpu_peak) = (0.0, 0.0, 0f64);
    // Mid-run validations are not training: their time leaves the throughput.
    let mut mid_val_s = 0.0;
    let start = Instant::now();
    let mut after_first = start;
    let mut records = Vec::with_capacity(total_steps.saturating_sub(start_step));
    for step in start_step..total_steps {
        let td = Instant::now();
        let host = loader.next()?;
        fault::strike_process(fault, info.rank, step + 1);
        let t0 = Instant::now();
        let (x, y) = to_tensors(host.pixels, host.labels, channels, cfg.image_size, device)?;
        let mut loss = candle_nn::loss::cross_entropy(&net.forward_t(&x, true)?, &y)?;
        if fault::hits(fault, FaultKind::Nan, info.rank, step + 1) {
            loss = (loss * f64::NAN)?;
        }
        let mut grads = loss.backward()?;
        if fault::hits(fault, FaultKind::Overflow, info.rank, step + 1) {
            let var = params[0].1.as_tensor();
            grads.insert(var, var.ones_like()?.affine(1e9, 0.0)?);
        }
        final_loss = loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        watchdog.enter(step + 1, "the barrier before the gradient exchange");
        comm.barrier()?;
        let t2 = Instant::now();
        let report = exchange.exchange(&mut grads, comm)?;
        watchdog.leave();
        let t3 = Instant::now();
        let lr = cfg.lr.at((step + 1) as f64 / steps_per_epoch as f64);
        if report.skipped() {
            skipped += 1;
            consecutive_skips += 1;
            // Every rank skips together, so every rank can afford this check.
            let losses = comm.all_gather_f64(f64::from(final_loss))?;
            let nan: Vec<usize> = (0..losses.len()).filter(|&r| !losses[r].is_finite()).collect();
            anyhow::ensure!(nan.is_empty(), "step {}: the loss became {} on rank(s) {nan:?}; stopping (the weights were not updated)", step + 1, losses[nan[0]]);
            anyhow::ensure!(
                consecutive_skips <= cfg.max_skips,
                "step {}: {consecutive_skips} steps in a row had a non-finite gradient after the exchange (--max-skips {}); stopping. \
                 A smaller --lr, or --grad-dtype bf16/f32, avoids half-precision overflow",
                step + 1,
                cfg.max_skips
            );
        } else {
            consecutive_skips = 0;
            sgd.step(&grads, lr)?;
        }
        let t4 = Instant::now();
        records.push(StepRecord {
            step: step + 1,
            rank: info.rank,
            epoch: step / steps_per_epoch,
            loss: final_loss,
            lr,
            data_s: (t0 - td).as_secs_f64(),
            compute_s: (t1 - t0).as_secs_f64() + (t4 - t3).as_secs_f64(),
            wait_s: (t2 - t1).as_secs_f64(),
            comm_s: (t3 - t2).as_secs_f64(),
            samples: cfg.batch_size,
            skipped: report.skipped(),
        });
        gpu_peak = gpu_peak.max(device::gpu_memory_in_use_mib(device));
        if fault::hits(fault, FaultKind::Desync, info.rank, step + 1) {
            let (_, var) = &params[0];
            var.set(&(var.as_tensor() + 1e-3)?)?;
        }
        if cfg.verify_sync.is_some_and(|k| k > 0 && (step + 1) % k == 0) {
            watchdog.enter(step + 1, "the --verify-sync check");
            let hashes = comm.all_gather_u64(parameter_hash(&params)?)?;
            watchdog.leave();
            let differ: Vec<usize> = (1..hashes.len()).filter(|&r| hashes[r] != hashes[0]).collect();
            anyhow::ensure!(
                differ.is_empty(),
                "--verify-sync: after step {} rank(s) {differ:?} hold parameters that differ from rank 0's; the ranks are out of lock-step",
                step + 1
            );
        }
        if info.rank == 0 && cfg.checkpoint_every.is_some_and(|k| k > 0 && (step + 1) % k == 0) {
            let tc = Instant::now();
            let crash = fault::hits(fault, FaultKind::CkptKill, 0, step + 1);
            checkpoint::write_run(&checkpoint_path(cfg)?, &run_state, &sgd, step + 1, crash)?;
            checkpoint_s += tc.elapsed().as_secs_f64();
        }
        if step == start_step {
            after_first = Instant::now();
            checkpoint_s_first = checkpoint_s;
        }
        on_step(step, total_steps, final_loss, report.skipped());
        let epochs_done = (step + 1) / steps_per_epoch;
        let epoch_end = (step + 1) % steps_per_epoch == 0 && step + 1 < total_steps;
        if epoch_end && cfg.val_every.is_some_and(|k| k > 0 && epochs_done % k == 0) {
            let tv = Instant::now();
            if let Some(v) = validate(net.as_ref())? {
                val_history.push((epochs_done, v.top1));
            }
            mid_val_s += tv.elapsed().as_secs_f64();
        }
    }
    let run_steps = total_steps.saturating_sub(start_step);
    if info.rank == 0 && cfg.checkpoint_dir.is_some() && run_steps > 0 {
        let tc = Instant::now();
        checkpoint::write_run(&checkpoint_path(cfg)?, &run_state, &sgd, total_steps, false)?;
        checkpoint_s += tc.elapsed().as_secs_f64();
    }
    let seconds = after_first.elapsed().as_secs_f64() - mid_val_s - (checkpoint_s - checkpoint_s_first);
    let validation = validate(net.as_ref())?;
    if let Some(v) = validation {
        val_history.push((total_steps / steps_per_epoch, v.top1));
    }
    watchdog.enter(total_steps, "gathering the step records");
    let records = record::gather(&records, comm)?;
    watchdog.leave();
    let times = record::step_stats(&records, info.size, cfg.warmup_steps);
    let global_batch = cfg.batch_size * info.size;
    let images_per_s = global_batch as f64 / times.step_s_median.max(1e-12);
    let peak_rss_mib = comm.all_gather_f64(peak_rss_mib())?;
    let gpu_mem_peak_mib = if device.is_cuda() { Some(comm.all_gather_f64(gpu_peak)?) } else { None };
    Ok(TrainSummary {
        model: cfg.model,
        device: if device.is_cuda() { "cuda" } else { "cpu" },
        world_size: info.size,
        batch_per_rank: cfg.batch_size,
        global_batch,
        image_size: cfg.image_size,
        grad_dtype: cfg.grad_dtype,
        steps: total_steps,
        resumed_from_step: start_step,
        images: run_steps * global_batch,
        seconds,
        times,
        images_per_s,
        s_per_5120_images: 5120.0 / images_per_s,
        checkpoint_s,
        peak_rss_mib,
        gpu_mem_peak_mib,
        skipped_steps: skipped,
        final_loss,
        param_l2: param_l2(&params)?,
        val_loss: validation.map(|v| v.loss),
        val_top1: validation.map(|v| v.top1),
        val_top5: validation.map(|v| v.top5),
        val_images: validation.map_or(0, |v| v.images),
        val_history,
        records,
    })
}
