//! The `candle-mpi` command line: parse, then call into the library.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use candle_mpi::models::{summarize, ModelConfig, ModelKind, ModelSummary};
use candle_mpi::{report_table, threads};

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = threads::configure(cli.global.threads).and_then(|_| match &cli.command {
        Command::Models(args) => run_models(args),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
