//! `candle-mpi allreduce`: a collective benchmark in the shape of nccl-tests'
//! all_reduce_perf, with nccl-tests' split of the common part (`common.rs`:
//! the configuration, the timing on the slowest rank; the command here)
//! from the per-backend sweeps (`host.rs` for MPI's data planes, `nccl.rs` for NCCL)
//! and the table (`table.rs`). For each size it times the all-reduce
//! (slowest rank, mean of `--iters` after `--warmup`), and reports algorithm
//! bandwidth (bytes / time) and bus bandwidth (algbw * 2(n-1)/n, the
//! per-link load of a ring, comparable across rank counts). `--baseline`
//! adds, measured in the same run, the full exchange path (f32 -> f16 pack,
//! all-reduce, unpack), plain MPI_Allreduce of f32 sums of the same element
//! count, and a local memcpy of the same bytes.

mod common;
mod host;
#[cfg(feature = "cuda")]
mod nccl;
#[cfg(not(feature = "cuda"))]
#[path = "nccl_absent.rs"]
mod nccl;
pub mod table;

use std::path::Path;

use crate::comm::{Transport, WorldInfo};
use crate::host::device::DeviceKind;
use crate::host::{cuda::GPU_BUILD, start_rank, threads};
use crate::record::files::{check_new_file, write_atomic};

pub use self::common::{parse_size, AllreduceConfig};
pub use self::table::AllreduceRow;

/// Which library carries the collectives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// MPI on host memory (CPU clusters); always built
    Mpi,
    /// NCCL on GPU memory; needs a build with --features cuda
    Nccl,
}

/// Collective: the benchmark as `candle-mpi allreduce` runs it: checks,
/// starts the rank, prints the table on rank 0 as rows are made, closes with
/// nccl-tests' two summary lines, and writes `--json` whole.
pub fn run_command(cfg: &AllreduceConfig, backend: Backend, json: Option<&Path>) -> anyhow::Result<()> {
    cfg.validate()?;
    if backend == Backend::Nccl {
        anyhow::ensure!(
            GPU_BUILD,
            "--backend nccl: this build has no GPU support (rebuild with `cargo build --release --features cuda`); use --backend mpi"
        );
        anyhow::ensure!(!cfg.baseline, "--baseline times MPI on host memory; it is not offered with --backend nccl");
    }
    if let Some(path) = json {
        check_new_file(path, "--json")?;
    }
    let rank = start_rank(
        match backend {
            Backend::Mpi => DeviceKind::Cpu,
            Backend::Nccl => DeviceKind::Cuda,
        },
        false,
    )?;
    let info = rank.comm.info().clone();
    let lead = info.rank == 0;
    let print_row = |row: &AllreduceRow| {
        if lead {
            println!("{}", table::format_row(row));
        }
    };
    let rows = rank.or_abort(match backend {
        Backend::Mpi => {
            let transport = match (cfg.transport, info.size > 1 && info.local_size == info.size) {
                (Transport::Auto, true) => "MPI, shared memory (every rank on this host)",
                (Transport::Auto, false) if info.size == 1 => "none (one rank)",
                _ if rank.comm.is_hierarchical(cfg.transport) => {
                    "MPI messages, hierarchical (inside each host, then one host's share between hosts)"
                }
                _ => "MPI messages (all-to-all + all-gather)",
            };
            print_header(lead, &info, cfg, transport);
            host::run(&rank.comm, cfg, print_row)
        }
        Backend::Nccl => {
            print_header(lead, &info, cfg, "NCCL, device buffers (one GPU per rank)");
            nccl::run(&rank.comm, cfg, print_row)
        }
    })?;
    if lead {
        println!("# Out of bounds values : {}", rows.iter().filter_map(|r| r.wrong).sum::<usize>());
        println!("# Avg bus bandwidth    : {:.3} GB/s", table::average_busbw(&rows));
        if let Some(path) = json {
            rank.or_abort(write_atomic(path, serde_json::to_string_pretty(&rows)?.as_bytes()))?;
            println!("# rows written to {}", path.display());
        }
    }
    Ok(())
}

/// The lines above the table (rank 0 only): the job, oversubscription, units, transport.
fn print_header(lead: bool, info: &WorldInfo, cfg: &AllreduceConfig, transport: &str) {
    if !lead {
        return;
    }
    let cores = threads::host_cores();
    println!(
        "# candle-mpi allreduce: {} rank(s), {} on rank 0's host {} ({} cores); dtype {}; warmup {}, iters {}",
        info.size,
        info.local_size,
        info.host,
        cores,
        cfg.dtype.name(),
        cfg.warmup,
        cfg.iters
    );
    if info.local_size > cores {
        println!(
            "# oversubscribed: {} ranks share {} core(s) on this host; times include waiting for a core",
            info.local_size, cores
        );
    }
    println!("# time: mean per call on the slowest rank; busbw = algbw * 2(n-1)/n");
    println!("# transport: {transport}");
    println!("{}", table::header(cfg.baseline));
}
