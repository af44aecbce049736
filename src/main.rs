//! The `candle-mpi` command line: parse, then call into the library.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use candle_mpi::allreduce::{self, AllreduceConfig};
use candle_mpi::comm::{Collective, MpiCollective, Transport, World};
use candle_mpi::exchange::GradDtype;
use candle_mpi::models::{summarize, ModelConfig, ModelKind, ModelSummary};
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
}

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = threads::configure(cli.global.threads).and_then(|_| match &cli.command {
        Command::Models(args) => run_models(args),
        Command::Allreduce(args) => run_allreduce(args),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
