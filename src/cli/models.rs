//! `candle-mpi models`: the networks, their sizes and costs.

use clap::Args;

use candle_mpi::model::summary::{self, Listing};
use candle_mpi::model::ModelKind;

#[derive(Args)]
pub struct ModelsArgs {
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

pub fn exec(args: &ModelsArgs) -> anyhow::Result<()> {
    let kinds = if args.models.is_empty() { ModelKind::ALL.to_vec() } else { args.models.clone() };
    let listing = Listing { kinds, image_size: args.image_size, classes: args.classes, aux_logits: args.aux_logits };
    let summaries = summary::measure(&listing)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summaries)?);
    } else {
        print!("{}", summary::table(&summaries));
    }
    Ok(())
}
