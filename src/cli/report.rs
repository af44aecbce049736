//! `candle-mpi report`: tables and figures of a sweep.

use clap::Args;

use candle_mpi::study::predict::collective::Algorithm;
use candle_mpi::study::predict::inputs::fit_link;
use candle_mpi::study::predict::presets;
use candle_mpi::study::predict::request::LinkFrom;
use candle_mpi::study::report::predicted::PredictOptions;
use candle_mpi::study::report::{self, Reference};

#[derive(Args)]
pub struct ReportArgs {
    /// The --out directory of a `bench` sweep
    #[arg(value_name = "DIR")]
    dir: std::path::PathBuf,
    /// Where to write the report [default: DIR]
    #[arg(long, value_name = "DIR")]
    out: Option<std::path::PathBuf>,
    /// Add a published reference to the speed-up figure and the report
    #[arg(long, value_enum)]
    reference: Option<Reference>,
    /// Draw `predict`'s curve for each network from the sweep's 1-worker runs,
    /// with this link between hosts (a preset: `candle-mpi predict --list-links`)
    #[arg(long, value_name = "PRESET", group = "predict_between")]
    predict_link: Option<String>,
    /// As --predict-link, the link fitted to an `allreduce --json` record
    #[arg(long, value_name = "FILE", group = "predict_between")]
    predict_link_from: Option<std::path::PathBuf>,
    /// The link inside a host for the prediction, fitted to an `allreduce --json`
    /// record [default: the link between hosts]
    #[arg(long, value_name = "FILE")]
    predict_inside_from: Option<std::path::PathBuf>,
    /// Workers per host in the prediction
    #[arg(long, default_value_t = 8, value_name = "G")]
    predict_gpus_per_host: usize,
    /// How the prediction sums across hosts
    #[arg(long, value_enum, default_value_t = Algorithm::Ring)]
    predict_algorithm: Algorithm,
    /// The largest worker count the prediction draws
    #[arg(long, default_value_t = 64, value_name = "N")]
    predict_to: usize,
}

pub fn exec(args: &ReportArgs) -> anyhow::Result<()> {
    let out = args.out.clone().unwrap_or_else(|| args.dir.clone());
    // Checked here, so that an error names this command's flags.
    let between = match (&args.predict_link, &args.predict_link_from) {
        (Some(name), _) => {
            presets::named(name, "--predict-link")?;
            Some(LinkFrom::Preset(name.clone()))
        }
        (_, Some(path)) => {
            fit_link(path, "--predict-link-from")?;
            Some(LinkFrom::Fitted(path.clone()))
        }
        _ => None,
    };
    if let Some(path) = &args.predict_inside_from {
        fit_link(path, "--predict-inside-from")?;
    }
    anyhow::ensure!(
        between.is_some() || args.predict_inside_from.is_none(),
        "--predict-inside-from needs --predict-link or --predict-link-from (the link between hosts)"
    );
    let predict = between.map(|between| PredictOptions {
        between,
        inside: args.predict_inside_from.clone().map(LinkFrom::Fitted),
        per_host: args.predict_gpus_per_host,
        algorithm: args.predict_algorithm,
        up_to: args.predict_to,
    });
    let path = report::write(&args.dir, &out, args.reference == Some(Reference::TheanoMpi), predict.as_ref())?;
    println!(
        "report written to {} (figures speedup, breakdown, efficiency as .svg and .png; runs.csv beside it)",
        path.display()
    );
    Ok(())
}
