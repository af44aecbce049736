//! `candle-mpi eval`: a network's figures on a validation split.

use clap::Args;

use candle_mpi::data::DataSpec;
use candle_mpi::model::ModelKind;
use candle_mpi::train::eval::{self, EvalConfig};

#[derive(Args)]
pub struct EvalArgs {
    /// Network to evaluate
    #[arg(long, value_enum)]
    model: ModelKind,
    /// Its weights: a safetensors file under torchvision's names, or a candle-mpi checkpoint
    #[arg(long, value_name = "FILE")]
    init_from: std::path::PathBuf,
    /// Data whose validation split is read: mnist:DIR, cifar10:DIR, or folder:DIR with train/ and val/
    #[arg(long)]
    data: DataSpec,
    /// Input side in pixels [default: the network's own]
    #[arg(long, value_name = "PIXELS")]
    image_size: Option<usize>,
    /// Classes of the classifier
    #[arg(long, default_value_t = 1000, value_name = "K")]
    classes: usize,
    /// Images per forward pass on each rank
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
}

pub fn exec(args: &EvalArgs) -> anyhow::Result<()> {
    let image_size = args.image_size.unwrap_or(args.model.default_image_size());
    args.model.check(&candle_mpi::model::ModelConfig::new(args.classes, image_size))?;
    eval::eval(&EvalConfig {
        model: args.model,
        init_from: args.init_from.clone(),
        data: args.data.clone(),
        image_size,
        classes: args.classes,
        batch_size: args.batch_size,
    })
}
