//! `candle-mpi report`: tables and figures of a sweep.

use clap::Args;

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
}

pub fn exec(args: &ReportArgs) -> anyhow::Result<()> {
    let out = args.out.clone().unwrap_or_else(|| args.dir.clone());
    let path = report::write(&args.dir, &out, args.reference == Some(Reference::TheanoMpi))?;
    println!(
        "report written to {} (figures speedup, breakdown, efficiency as .svg and .png; runs.csv beside it)",
        path.display()
    );
    Ok(())
}
