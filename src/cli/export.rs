//! `candle-mpi export`: weights out under torchvision's names.

use clap::Args;

use candle_mpi::model::ModelKind;
use candle_mpi::train::weights::{self, Export};

#[derive(Args)]
pub struct ExportArgs {
    /// [CHECKPOINT] OUT: the candle-mpi checkpoint to export (leave it out and
    /// give --model for a network's initial weights), and the safetensors file
    /// to write (never overwritten)
    #[arg(value_name = "[CHECKPOINT] OUT", num_args = 1..=2, required = true)]
    paths: Vec<std::path::PathBuf>,
    /// Export the initial weights `train --seed` starts this network from
    #[arg(long, value_enum)]
    model: Option<ModelKind>,
    /// Classes of the classifier (with --model)
    #[arg(long, default_value_t = 1000, value_name = "K")]
    classes: usize,
    /// Input side the network is built for (with --model) [default: the network's own]
    #[arg(long, value_name = "PIXELS")]
    image_size: Option<usize>,
    /// Seed of the initial weights (with --model)
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the first N images and labels of `--data synthetic` with this seed to --batch-out
    #[arg(long, value_name = "N", requires = "batch_out", requires = "model")]
    batch: Option<usize>,
    /// Where --batch goes (a safetensors file of `images` and `labels`)
    #[arg(long, value_name = "FILE", requires = "batch")]
    batch_out: Option<std::path::PathBuf>,
}

pub fn exec(args: &ExportArgs) -> anyhow::Result<()> {
    let (checkpoint, out) = match args.paths.as_slice() {
        [out] => (None, out),
        [checkpoint, out] => (Some(checkpoint), out),
        _ => unreachable!("clap takes one or two paths"),
    };
    let what = match (checkpoint, args.model) {
        (Some(_), Some(_)) => {
            anyhow::bail!("export: --model is for initial weights; a CHECKPOINT names its own network")
        }
        (Some(path), None) => Export::Checkpoint { path: path.clone() },
        (None, Some(model)) => {
            let image_size = args.image_size.unwrap_or(model.default_image_size());
            model.check(&candle_mpi::model::ModelConfig::new(args.classes, image_size))?;
            let batch = args.batch.zip(args.batch_out.clone());
            Export::Initial { model, classes: args.classes, image_size, seed: args.seed, batch }
        }
        (None, None) => {
            anyhow::bail!("export: give a CHECKPOINT to export, or --model for a network's initial weights")
        }
    };
    println!("{}", weights::export(&what, out)?);
    Ok(())
}
