//! The `candle-mpi` command line: parse, then call into the library.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use candle_mpi::allreduce::{self, AllreduceConfig};
use candle_mpi::bench::{self, BenchConfig, Mode};
use candle_mpi::bind::{self, BindMode};
use candle_mpi::comm::{Collective, MpiCollective, Transport, World};
use candle_mpi::exchange::GradDtype;
use candle_mpi::data::DataSpec;
use candle_mpi::device::{self, DeviceKind};
use candle_mpi::models::{summarize, ModelConfig, ModelKind, ModelSummary};
use candle_mpi::optim::{LrPlan, LrSchedule, SgdConfig};
use candle_mpi::train::{self, TrainConfig};
use candle_mpi::{output, report_table, threads};

/// Data-parallel CNN training with candle, and the speed-up study around it.
///
/// One worker process per GPU (or per CPU core group), started by mpirun, trains
/// the same network on its own shard of the data; after every backward pass the
/// workers average their gradients in half precision (NCCL on GPUs, MPI on CPUs).
///
/// Networks: AlexNet, VGG16, ResNet50 and GoogLeNet as torchvision defines them
/// (same parameter names and counts), plus a small CNN for tests.
///
/// Examples:
///   candle-mpi models                       the networks, their sizes and costs
///   candle-mpi models --image-size 64 --json
///   mpirun -np 2 candle-mpi allreduce --baseline --check
///                                           fp16 all-reduce bandwidth vs MPI f32
///   mpirun -np 2 candle-mpi train --model small --data mnist:tests/data/digits \
///       --image-size 8 --classes 10 --batch-size 16 --epochs 15
///                                           data-parallel training on 2 ranks
///   candle-mpi bench --models alexnet,resnet50 --workers 1,2,4,8 --image-size 64 --out runs/sweep
///                                           the speed-up sweep (starts mpirun itself)
///   candle-mpi report runs/sweep            tables and figures of a sweep
#[derive(Parser)]
#[command(name = "candle-mpi", version, about, long_about, verbatim_doc_comment)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct GlobalArgs {
    /// Compute threads per process [default: the host's cores divided by the
    /// processes of this job on the host, read from the MPI launcher]
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// List the networks: parameters, input size and forward cost per image.
    ///
    /// Each network is built at the given size and class count and run forward on
    /// one image; the multiply-adds of its convolutions and linear layers are
    /// counted from the shapes that pass produces (torchvision's "GFLOPS" column
    /// counts the same multiply-adds). Parameters exclude batch-norm running
    /// statistics, as torchvision's counts do.
    #[command(verbatim_doc_comment)]
    Models(ModelsArgs),
    /// Benchmark the gradient all-reduce, in the shape of nccl-tests' all_reduce_perf.
    ///
    /// Run under mpirun, one process per worker:
    ///   mpirun -np 2 candle-mpi allreduce --min-bytes 2M --max-bytes 128M --baseline --check
    ///
    /// For each size (bytes of the buffer in --dtype) it prints the mean time of
    /// one all-reduce on the slowest rank, the algorithm bandwidth algbw = bytes /
    /// time, and the bus bandwidth busbw = algbw * 2(n-1)/n (what each link
    /// carries in a ring; comparable across rank counts), then the average busbw.
    /// Half-precision sums are accumulated in f32 and rounded once.
    ///
    /// --check fills each rank's buffer with small integers whose sum is exact in
    /// every type and counts the elements off the expected sum (#wrong).
    /// --baseline times, in the same run and for the same element count: the full
    /// exchange (f32 gradients -> scaled f16 -> all-reduce -> f32), plain
    /// MPI_Allreduce of f32 sums, and a local memcpy of the same bytes; exch/f32
    /// is the ratio of the first two.
    #[command(verbatim_doc_comment)]
    Allreduce(AllreduceArgs),
    /// Train a network data-parallel: alone, or one process per worker under mpirun.
    ///
    /// Every rank builds the same network (same --seed), checks at start that
    /// every rank runs the same network, shapes, buckets and flags, takes rank
    /// 0's weights, reads its own shard of each epoch (shuffled identically on
    /// every rank), and after each backward pass averages gradients with the
    /// others in --grad-dtype (NCCL on GPUs, MPI on CPUs). A step whose averaged
    /// gradient holds inf or NaN is skipped on every rank and counted; a NaN
    /// loss, or more than --max-skips skips in a row, stops the run. A rank
    /// that waits longer than --collective-timeout for the others ends the job,
    /// naming the step and the ranks that never arrived.
    ///
    /// Times per step and rank: data (waiting for the loader thread), compute
    /// (forward, backward, optimizer), wait (the barrier before the exchange:
    /// how far ahead of the slowest rank), comm (the exchange). The first step
    /// is reported apart (warm-up). --out DIR writes config.json, steps.csv (one
    /// row per step and rank) and summary.json (step time of the slowest rank:
    /// median, mean, std; images/s; s per 5120 images; memory per rank;
    /// validation loss, top-1 and top-5).
    ///
    /// Example, 2 ranks on the digits shipped in tests/data:
    ///   mpirun -np 2 candle-mpi train --model small --data mnist:tests/data/digits \
    ///       --image-size 8 --classes 10 --batch-size 16 --epochs 15 --out runs/digits
    #[command(verbatim_doc_comment)]
    Train(TrainArgs),
    /// The speed-up sweep: one mpirun per network, worker count and repeat.
    ///
    /// For each network, each N of --workers and each repeat, starts
    ///   <launcher with {np}=N> [--oversubscribe] [--hostfile F] candle-mpi train ... --out OUT/runs/<run>
    /// on synthetic data (--warmup + --steps steps; the warm-up steps are left out
    /// of the step times). --oversubscribe is added only when N exceeds the host's
    /// cores, and such runs are marked in the records and the report.
    ///
    /// Beside each N > 1 it measures the host's ceiling: N independent
    /// single-process trainings started together, each with one rank's batch and
    /// share of the cores, no exchange. Their summed throughput is what this host
    /// could give N workers if communication were free (--no-ceiling skips it).
    ///
    /// A failed run is recorded with its stderr tail and the sweep goes on; running
    /// the same command again skips the runs already recorded as done, so an
    /// interrupted sweep resumes. Then run `candle-mpi report OUT`.
    ///
    /// Weak scaling (--mode weak, default) keeps --batch-size per worker; strong
    /// scaling (--mode strong) splits --global-batch over the workers.
    #[command(verbatim_doc_comment)]
    Bench(BenchArgs),
    /// Tables and figures of a sweep made by `bench`.
    ///
    /// Reads OUT/runs/*/ (run.json and the trainings' summary.json) and writes,
    /// into --out (default: the sweep directory): report.md (machine, tables per
    /// network, figures), runs.csv (every run; the columns of the seed's timing
    /// analysis, type,process,size_dataset,num_epochs,tot_time,iter_time, then
    /// ours), and speedup / breakdown / efficiency as SVG and PNG.
    #[command(verbatim_doc_comment)]
    Report(ReportArgs),
    /// Run a command bound to this rank's share of the host (numactl).
    ///
    /// Under mpirun, for each rank:
    ///   mpirun -np 8 candle-mpi bind --mode numa -- candle-mpi train ...
    /// core: local rank r of n gets the r-th equal slice of the host's cores;
    /// numa: CPUs and memory of the NUMA node of the rank's GPU (sysfs), or, on
    /// CPU runs (--cpu), ranks spread over the nodes. Prints what it did on stderr.
    /// scripts/bind.sh is the same for launch lines written by hand.
    #[command(verbatim_doc_comment)]
    Bind(BindArgs),
}

#[derive(Args)]
struct BenchArgs {
    /// Networks, comma separated
    #[arg(long, value_delimiter = ',', required = true, value_name = "NAMES")]
    models: Vec<ModelKind>,
    /// Worker counts, comma separated
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8", value_name = "N,...")]
    workers: Vec<usize>,
    /// weak: --batch-size per worker; strong: --global-batch split over the workers
    #[arg(long, value_enum, default_value_t = Mode::Weak)]
    mode: Mode,
    /// Images per worker per step (weak scaling)
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Images per step over all workers (strong scaling); must divide by every worker count
    #[arg(long, value_name = "G")]
    global_batch: Option<usize>,
    /// Input side in pixels [default: the network's own]
    #[arg(long, value_name = "PIXELS")]
    image_size: Option<usize>,
    /// Classes of the classifier
    #[arg(long, default_value_t = 1000, value_name = "K")]
    classes: usize,
    /// Timed steps per run
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Steps before the timed ones (left out of the step times)
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Runs of each network and worker count (speed-ups get a mean and std)
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Where each rank computes
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
    /// Element type gradients travel in
    #[arg(long, value_enum, default_value_t = GradDtype::F16)]
    grad_dtype: GradDtype,
    /// Pin each rank with numactl (see `candle-mpi bind --help`)
    #[arg(long, value_enum, default_value_t = BindMode::None)]
    bind: BindMode,
    /// How to start N workers; {np} is replaced by N, the train command is appended
    #[arg(long, default_value = "mpirun -np {np}", value_name = "TEMPLATE")]
    launcher: String,
    /// Passed to the launcher as --hostfile F (several hosts)
    #[arg(long, value_name = "FILE")]
    hostfile: Option<std::path::PathBuf>,
    /// Data of every run (see `train --help`)
    #[arg(long, default_value = "synthetic")]
    data: DataSpec,
    /// Skip the host-ceiling runs
    #[arg(long)]
    no_ceiling: bool,
    /// Kill a run that takes longer than this, in seconds (recorded as failed)
    #[arg(long, default_value_t = 1800, value_name = "S")]
    run_timeout: u64,
    /// Directory of the sweep (created; an interrupted sweep there resumes)
    #[arg(long, value_name = "DIR")]
    out: std::path::PathBuf,
}

#[derive(Args)]
struct ReportArgs {
    /// The --out directory of a `bench` sweep
    #[arg(value_name = "DIR")]
    dir: std::path::PathBuf,
    /// Where to write the report [default: DIR]
    #[arg(long, value_name = "DIR")]
    out: Option<std::path::PathBuf>,
    /// Add a published reference to the speed-up figure and the report
    #[arg(long, value_enum)]
    reference: Option<Reference>,
}

/// Published figures a report can be drawn against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Reference {
    /// Theano-MPI on 8 K80 GPUs with NCCL, fp16 (arXiv 1605.08325)
    TheanoMpi,
}

#[derive(Args)]
struct BindArgs {
    #[arg(long, value_enum)]
    mode: BindMode,
    /// Bind as a CPU run even if the host has GPUs
    #[arg(long)]
    cpu: bool,
    /// The command to run, after --
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Args, serde::Serialize)]
struct TrainArgs {
    /// Network to train
    #[arg(long, value_enum)]
    model: ModelKind,
    /// Where each rank computes
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
    /// Data: synthetic (generated from --seed), mnist:DIR (IDX files, raw or gzip)
    /// or cifar10:DIR (the binary version: data_batch_1..5.bin, test_batch.bin)
    #[arg(long, default_value = "synthetic")]
    #[serde(serialize_with = "output::serialize_display")]
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
    /// How ranks on one host exchange
    #[arg(long, value_enum, default_value_t = Transport::Auto)]
    transport: Transport,
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
    fault_inject: Option<candle_mpi::fault::Fault>,
}

fn serialize_debug<T: std::fmt::Debug, S: serde::Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format!("{value:?}"))
}


/// The files `train --out` writes.
const RECORD_FILES: [&str; 3] = ["config.json", "steps.csv", "summary.json"];

/// Which library carries the collectives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Backend {
    /// MPI on host memory (CPU clusters); always built
    Mpi,
    /// NCCL on GPU memory; needs a build with --features cuda
    Nccl,
}

#[derive(Args)]
struct AllreduceArgs {
    /// Smallest buffer, in bytes (K, M, G suffixes: powers of 2)
    #[arg(long, default_value = "1K", value_parser = allreduce::parse_size, value_name = "BYTES")]
    min_bytes: usize,
    /// Largest buffer, in bytes
    #[arg(long, default_value = "64M", value_parser = allreduce::parse_size, value_name = "BYTES")]
    max_bytes: usize,
    /// Each size is the previous one times this
    #[arg(long, default_value_t = 2)]
    factor: usize,
    /// Element type on the wire
    #[arg(long, value_enum, default_value_t = GradDtype::F16)]
    dtype: GradDtype,
    /// Timed iterations per size
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Untimed iterations before timing
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Collective library
    #[arg(long, value_enum, default_value_t = Backend::Mpi)]
    backend: Backend,
    /// How ranks on one host exchange: shared memory when all ranks share a host (auto), or MPI messages
    #[arg(long, value_enum, default_value_t = Transport::Auto)]
    transport: Transport,
    /// Verify the sums and report elements that are off (#wrong)
    #[arg(long)]
    check: bool,
    /// Also time the full f16 exchange, MPI_Allreduce of f32, and memcpy, in the same run
    #[arg(long)]
    baseline: bool,
    /// Write the rows as JSON to this file (refuses to overwrite)
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
}

#[derive(Args)]
struct ModelsArgs {
    /// Networks to list, comma separated [default: all]
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    models: Vec<ModelKind>,
    /// Input side in pixels [default: each network's own, 224 for the ImageNet networks]
    #[arg(long, value_name = "PIXELS")]
    image_size: Option<usize>,
    /// Number of classes of the classifier
    #[arg(long, default_value_t = 1000, value_name = "K")]
    classes: usize,
    /// Include GoogLeNet's two auxiliary classifiers
    #[arg(long)]
    aux_logits: bool,
    /// Print JSON (one object per network) instead of a table
    #[arg(long)]
    json: bool,
}

fn run_models(args: &ModelsArgs) -> anyhow::Result<()> {
    let kinds = if args.models.is_empty() { ModelKind::ALL.to_vec() } else { args.models.clone() };
    let configs: Vec<(ModelKind, ModelConfig)> = kinds
        .iter()
        .map(|&kind| {
            let mut cfg = ModelConfig::new(args.classes, args.image_size.unwrap_or(kind.default_image_size()));
            cfg.aux_logits = args.aux_logits;
            kind.check(&cfg).map(|_| (kind, cfg))
        })
        .collect::<anyhow::Result<_>>()?;
    let summaries: Vec<ModelSummary> =
        configs.iter().map(|(kind, cfg)| summarize(*kind, cfg, 0)).collect::<anyhow::Result<_>>()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summaries)?);
    } else {
        print!("{}", report_table::models_table(&summaries));
    }
    Ok(())
}

fn run_allreduce(args: &AllreduceArgs) -> anyhow::Result<()> {
    let cfg = AllreduceConfig {
        min_bytes: args.min_bytes,
        max_bytes: args.max_bytes,
        factor: args.factor,
        dtype: args.dtype,
        iters: args.iters,
        warmup: args.warmup,
        check: args.check,
        baseline: args.baseline,
        transport: args.transport,
    };
    cfg.validate()?;
    if args.backend == Backend::Nccl {
        if !cfg!(feature = "cuda") {
            anyhow::bail!("--backend nccl: this build has no GPU support (rebuild with `cargo build --release --features cuda`); use --backend mpi");
        }
        anyhow::ensure!(!cfg.baseline, "--baseline times MPI on host memory; it is not offered with --backend nccl");
    }
    if let Some(path) = &args.json {
        output::check_new_file(path, "--json")?;
    }
    let mpi = MpiCollective::new(World::init()?);
    let info = mpi.info().clone();
    let lead = info.rank == 0;
    let print_row = |row: &allreduce::AllreduceRow| {
        if lead {
            println!("{}", allreduce::format_row(row));
        }
    };
    let print_header = |transport: &str| {
        if !lead {
            return;
        }
        println!(
            "# candle-mpi allreduce: {} rank(s), {} on rank 0's host {} ({} cores); dtype {}; warmup {}, iters {}",
            info.size, info.local_size, info.host, threads::host_cores(), cfg.dtype.name(), cfg.warmup, cfg.iters
        );
        if info.local_size > threads::host_cores() {
            println!("# oversubscribed: {} ranks share {} core(s) on this host; times include waiting for a core", info.local_size, threads::host_cores());
        }
        println!("# time: mean per call on the slowest rank; busbw = algbw * 2(n-1)/n");
        println!("# transport: {transport}");
        println!("{}", allreduce::header(cfg.baseline));
    };
    let rows = match args.backend {
        Backend::Mpi => {
            print_header(match (args.transport, info.size > 1 && info.local_size == info.size) {
                (Transport::Auto, true) => "MPI, shared memory (every rank on this host)",
                (Transport::Auto, false) if info.size == 1 => "none (one rank)",
                _ => "MPI messages (all-to-all + all-gather)",
            });
            allreduce::run(&mpi, &cfg, print_row)?
        }
        Backend::Nccl => run_allreduce_nccl(mpi, &cfg, &print_header, print_row)?,
    };
    if lead {
        println!("# Out of bounds values : {}", rows.iter().filter_map(|r| r.wrong).sum::<usize>());
        println!("# Avg bus bandwidth    : {:.3} GB/s", allreduce::average_busbw(&rows));
        if let Some(path) = &args.json {
            output::write_atomic(path, serde_json::to_string_pretty(&rows)?.as_bytes())?;
            println!("# rows written to {}", path.display());
        }
    }
    Ok(())
}

#[cfg(feature = "cuda")]
fn run_allreduce_nccl(
    mpi: MpiCollective,
    cfg: &AllreduceConfig,
    print_header: &dyn Fn(&str),
    print_row: impl FnMut(&allreduce::AllreduceRow),
) -> anyhow::Result<Vec<allreduce::AllreduceRow>> {
    let device = candle_mpi::device::select(candle_mpi::device::DeviceKind::Cuda, mpi.info())?;
    let stream = device.as_cuda_device()?.cuda_stream();
    let nccl = candle_mpi::comm::NcclCollective::new(mpi, stream)?;
    print_header("NCCL, device buffers (one GPU per rank)");
    allreduce::run_nccl(&nccl, cfg, print_row)
}

#[cfg(not(feature = "cuda"))]
fn run_allreduce_nccl(
    _mpi: MpiCollective,
    _cfg: &AllreduceConfig,
    _print_header: &dyn Fn(&str),
    _print_row: impl FnMut(&allreduce::AllreduceRow),
) -> anyhow::Result<Vec<allreduce::AllreduceRow>> {
    unreachable!("refused before MPI starts in a build without the cuda feature")
}

fn run_train(args: &TrainArgs) -> anyhow::Result<()> {
    let image_size = args.image_size.unwrap_or(args.model.default_image_size());
    args.model.check(&ModelConfig { dropout: args.dropout, ..ModelConfig::new(args.classes, image_size) })?;
    anyhow::ensure!(args.bucket_mb > 0.0, "--bucket-mb {}: must be above 0", args.bucket_mb);
    anyhow::ensure!(args.lr > 0.0, "--lr {}: must be above 0", args.lr);
    anyhow::ensure!(
        args.collective_timeout >= 0.0 && args.collective_timeout.is_finite(),
        "--collective-timeout {}: give seconds, 0 or more (0 waits for ever)",
        args.collective_timeout
    );
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("--out {}: cannot create the directory: {e}", dir.display()))?;
        if !args.overwrite {
            if let Some(name) = RECORD_FILES.iter().find(|n| dir.join(n).exists()) {
                anyhow::bail!("--out {}: holds another run's records ({name}); choose another directory, or pass --overwrite to replace them", dir.display());
            }
        }
        output::check_writable_dir(dir, "--out")?;
    }
    anyhow::ensure!(!args.resume || args.checkpoint_dir.is_some(), "--resume needs --checkpoint-dir DIR");
    anyhow::ensure!(args.checkpoint_every.is_none() || args.checkpoint_dir.is_some(), "--checkpoint-every needs --checkpoint-dir DIR");
    if let Some(dir) = &args.checkpoint_dir {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("--checkpoint-dir {}: cannot create the directory: {e}", dir.display()))?;
    }
    let mpi = MpiCollective::new(World::init()?);
    let info = mpi.info().clone();
    let batch_size = match args.global_batch {
        Some(g) => {
            anyhow::ensure!(
                g % info.size == 0 && g >= info.size,
                "--global-batch {g} does not divide by the {} rank(s) of this run; use a multiple of {}",
                info.size,
                info.size
            );
            g / info.size
        }
        None => args.batch_size.unwrap_or(32),
    };
    // Every rank learns whether every rank has its device, so that none goes
    // on to wait for a rank that has already given up.
    let dev = device::select(args.device, &info);
    let ready = mpi.all_gather_u64(u64::from(dev.is_ok()))?;
    let dev = dev?;
    if let Some(r) = ready.iter().position(|&ok| ok == 0) {
        anyhow::bail!("--device {}: rank {r} could not open its device (its error says why)", format!("{:?}", args.device).to_lowercase());
    }
    let comm = collective_for(&dev, mpi)?;
    let lr = if args.scale_lr { args.lr * info.size as f64 } else { args.lr };
    let cfg = TrainConfig {
        model: args.model,
        image_size,
        classes: args.classes,
        batch_size,
        epochs: args.epochs,
        steps: args.steps,
        lr: LrPlan::new(lr, args.lr_schedule, args.warmup_epochs, args.epochs as f64),
        sgd: SgdConfig { momentum: args.momentum, nesterov: args.nesterov, weight_decay: args.weight_decay },
        grad_dtype: args.grad_dtype,
        bucket_bytes: (args.bucket_mb * 1024.0 * 1024.0) as usize,
        transport: args.transport,
        seed: args.seed,
        data: args.data.clone(),
        synthetic_len: args.synthetic_size,
        dropout: args.dropout,
        verify_sync: args.verify_sync,
        checkpoint_dir: args.checkpoint_dir.clone(),
        checkpoint_every: args.checkpoint_every,
        resume: args.resume,
        val_every: args.val_every,
        warmup_steps: args.warmup_steps,
        collective_timeout: std::time::Duration::from_secs_f64(args.collective_timeout),
        max_skips: args.max_skips,
        fault: candle_mpi::fault::resolve(args.fault_inject)?,
    };
    let lead = info.rank == 0;
    if lead {
        println!(
            "training {} on {} rank(s) x {} images, {} px, {} classes, lr {lr}, gradients in {}",
            cfg.model, info.size, cfg.batch_size, cfg.image_size, cfg.classes, cfg.grad_dtype.name()
        );
    }
    let log_every = args.log_every.max(1);
    // A bar on a terminal, plain lines in logs and pipes.
    let mut bar: Option<indicatif::ProgressBar> = None;
    let on_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let images_per_step = (cfg.batch_size * info.size) as f64;
    let result = train::run(&cfg, comm.as_ref(), &dev, |step, total, loss, skipped| {
        if lead && on_terminal {
            let b = bar.get_or_insert_with(|| {
                let b = indicatif::ProgressBar::new(total as u64);
                b.set_style(
                    indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} steps  eta {eta}  {msg}")
                        .expect("valid progress template"),
                );
                b.set_position(step as u64);
                b
            });
            b.set_position(step as u64 + 1);
            let rate = (step + 1) as f64 * images_per_step / b.elapsed().as_secs_f64().max(1e-9);
            b.set_message(format!("loss {loss:.4}  {rate:.0} images/s"));
        } else if lead && ((step + 1) % log_every == 0 || step + 1 == total) {
            println!("step {:>6}/{total}  loss {loss:.4}{}", step + 1, if skipped { "  (skipped: non-finite gradient)" } else { "" });
        }
        if lead && skipped {
            eprintln!("step {} skipped: non-finite gradient after the exchange (weights not updated)", step + 1);
        }
        if skipped && !lead {
            eprintln!("rank {}: step {} skipped: non-finite gradient after the exchange", info.rank, step + 1);
        }
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let s = match result {
        Ok(s) => s,
        // One rank's error leaves the others waiting in a collective: end them all.
        Err(e) if info.size > 1 => {
            eprintln!("rank {}: error: {e:#}", info.rank);
            comm.abort(1)
        }
        Err(e) => return Err(e),
    };
    if lead {
        for (epoch, acc) in s.val_history.iter().take(s.val_history.len().saturating_sub(1)) {
            println!("validation after epoch {epoch}: top-1 {:.1}%", acc * 100.0);
        }
        let t = &s.times;
        let busy = (t.compute_s + t.wait_s + t.comm_s + t.data_s).max(1e-12);
        let val = match (s.val_top1, s.val_top5, s.val_loss) {
            (Some(top1), Some(top5), Some(loss)) => {
                format!(", validation top-1 {:.1}% top-5 {:.1}% loss {loss:.4} on {} images", top1 * 100.0, top5 * 100.0, s.val_images)
            }
            _ => String::new(),
        };
        if s.resumed_from_step > 0 {
            println!("resumed from step {}", s.resumed_from_step);
        }
        println!(
            "done: {} steps in {:.1} s, {:.1} images/s at the median step of {} (compute {:.0}%, wait {:.0}%, comm {:.0}%, data {:.0}%), {} skipped, final loss {:.4}{val}",
            s.steps - s.resumed_from_step, s.seconds + t.first_step_s, s.images_per_s, report_table::duration(t.step_s_median),
            100.0 * t.compute_s / busy, 100.0 * t.wait_s / busy, 100.0 * t.comm_s / busy, 100.0 * t.data_s / busy, s.skipped_steps, s.final_loss
        );
        let peak = s.peak_rss_mib.iter().fold(0.0f64, |a, b| a.max(*b));
        println!("peak resident memory: {peak:.0} MiB on the largest of {} rank(s)", s.peak_rss_mib.len());
        if let Some(dir) = &args.out {
            let config = serde_json::json!({ "args": args, "world_size": info.size, "rank0_host": info.host, "ranks_on_rank0_host": info.local_size, "host_cores": threads::host_cores(), "version": env!("CARGO_PKG_VERSION") });
            output::write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(&config)?.as_bytes())?;
            output::write_atomic(&dir.join("steps.csv"), candle_mpi::record::to_csv(&s.records).as_bytes())?;
            output::write_atomic(&dir.join("summary.json"), serde_json::to_string_pretty(&s)?.as_bytes())?;
            println!("records written to {}: config.json, steps.csv, summary.json", dir.display());
        }
    }
    Ok(())
}

/// NCCL carries the gradients of GPU ranks; MPI those of CPU ranks.
#[cfg(feature = "cuda")]
fn collective_for(dev: &candle_core::Device, mpi: MpiCollective) -> anyhow::Result<Box<dyn Collective>> {
    match dev {
        candle_core::Device::Cuda(d) => Ok(Box::new(candle_mpi::comm::NcclCollective::new(mpi, d.cuda_stream())?)),
        _ => Ok(Box::new(mpi)),
    }
}

#[cfg(not(feature = "cuda"))]
fn collective_for(_dev: &candle_core::Device, mpi: MpiCollective) -> anyhow::Result<Box<dyn Collective>> {
    Ok(Box::new(mpi))
}

fn run_bench(args: &BenchArgs) -> anyhow::Result<()> {
    let cfg = BenchConfig {
        exe: std::env::current_exe()?,
        models: args.models.clone(),
        workers: args.workers.clone(),
        mode: args.mode,
        batch_size: args.batch_size,
        global_batch: args.global_batch,
        image_size: args.image_size,
        classes: args.classes,
        steps: args.steps,
        warmup: args.warmup,
        repeat: args.repeat,
        device: args.device,
        grad_dtype: args.grad_dtype,
        bind: args.bind,
        launcher: args.launcher.clone(),
        hostfile: args.hostfile.clone(),
        data: args.data.to_string(),
        ceiling: !args.no_ceiling,
        run_timeout: std::time::Duration::from_secs(args.run_timeout),
        out: args.out.clone(),
    };
    cfg.validate()?;
    std::fs::create_dir_all(&cfg.out).map_err(|e| anyhow::anyhow!("--out {}: cannot create the directory: {e}", cfg.out.display()))?;
    output::check_writable_dir(&cfg.out, "--out")?;
    let machine = bench::MachineInfo::detect();
    output::write_atomic(&cfg.out.join("machine.json"), serde_json::to_string_pretty(&machine)?.as_bytes())?;
    let plan = cfg.plan();
    let todo: Vec<&bench::RunSpec> = plan.iter().filter(|s| !bench::recorded_ok(&cfg.out, s)).collect();
    println!(
        "sweep of {} run(s) on {} ({} cores) into {}: {} already recorded, {} to run",
        plan.len(), machine.host, machine.cores, cfg.out.display(), plan.len() - todo.len(), todo.len()
    );
    if cfg.workers.iter().any(|&n| n > machine.cores) {
        println!("note: runs of more workers than the host's {} cores are oversubscribed (marked in the records); they cannot speed up", machine.cores);
    }
    let on_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = indicatif::ProgressBar::new(todo.len() as u64);
    if on_terminal {
        bar.set_style(indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} runs  {elapsed_precise} elapsed, eta {eta}  {msg}").expect("valid template"));
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let start = std::time::Instant::now();
    let mut failed = 0;
    for spec in &todo {
        bar.set_message(spec.name());
        let rec = bench::execute(&cfg, spec)?;
        let line = if rec.ok {
            format!("{:<40} done in {:.1} s", spec.name(), rec.wall_s)
        } else {
            failed += 1;
            format!("{:<40} FAILED after {:.1} s: {}", spec.name(), rec.wall_s, rec.error.as_deref().unwrap_or("").lines().last().unwrap_or(""))
        };
        bar.println(&line);
        if !on_terminal {
            println!("{line}");
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!(
        "sweep done: {} run(s) in {}, {failed} failed; records in {}. Next: candle-mpi report {}",
        todo.len(), report_table::duration(start.elapsed().as_secs_f64()), cfg.out.display(), cfg.out.display()
    );
    anyhow::ensure!(failed == 0, "{failed} run(s) failed (see above and runs/*/run.json); the others are recorded, and running the same command again retries only the failed ones");
    Ok(())
}

fn run_report(args: &ReportArgs) -> anyhow::Result<()> {
    let out = args.out.clone().unwrap_or_else(|| args.dir.clone());
    let path = candle_mpi::report::write(&args.dir, &out, args.reference == Some(Reference::TheanoMpi))?;
    println!("report written to {} (figures speedup, breakdown, efficiency as .svg and .png; runs.csv beside it)", path.display());
    Ok(())
}

fn run_bind(args: &BindArgs) -> anyhow::Result<()> {
    let topo = bind::Topology::read(std::path::Path::new("/sys"));
    let (local_rank, local_size) = bind::local_rank_and_size();
    let gpu = (!args.cpu && !topo.gpu_nodes.is_empty()).then(|| bind::gpu_of(local_rank));
    let (numactl_args, said) = bind::plan(&topo, args.mode, local_rank, local_size, gpu);
    let have_numactl = std::process::Command::new("numactl").arg("--show").output().is_ok_and(|o| o.status.success());
    let mut cmd = if numactl_args.is_empty() || !have_numactl {
        if !numactl_args.is_empty() {
            eprintln!("bind: numactl is not installed (scripts/setup.sh installs it); running unbound");
        }
        let mut c = std::process::Command::new(&args.command[0]);
        c.args(&args.command[1..]);
        c
    } else {
        eprintln!("bind: {said}: numactl {}", numactl_args.join(" "));
        let mut c = std::process::Command::new("numactl");
        c.args(&numactl_args).args(&args.command);
        c
    };
    let err = std::os::unix::process::CommandExt::exec(&mut cmd);
    anyhow::bail!("bind: cannot run `{}`: {err}", args.command[0])
}

fn main() -> ExitCode {
    candle_mpi::memory::keep_freed_memory();
    let cli = Cli::parse();
    let result = threads::configure(cli.global.threads).and_then(|_| match &cli.command {
        Command::Models(args) => run_models(args),
        Command::Allreduce(args) => run_allreduce(args),
        Command::Train(args) => run_train(args),
        Command::Bench(args) => run_bench(args),
        Command::Report(args) => run_report(args),
        Command::Bind(args) => run_bind(args),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
