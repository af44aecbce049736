//! The `candle-mpi` command: parse the command line, run it, print its error.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    candle_mpi::host::memory::keep_freed_memory();
    match cli::Cli::parse().exec() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
