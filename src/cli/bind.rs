//! `candle-mpi bind`: run a command pinned to this rank's share of the host.

use clap::Args;

use candle_mpi::host::bind::{self, BindMode};

#[derive(Args)]
pub struct BindArgs {
    #[arg(long, value_enum)]
    mode: BindMode,
    /// Bind as a CPU run even if the host has GPUs
    #[arg(long)]
    cpu: bool,
    /// The command to run, after --
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

pub fn exec(args: &BindArgs) -> anyhow::Result<()> {
    match bind::exec_bound(args.mode, args.cpu, &args.command)? {}
}
