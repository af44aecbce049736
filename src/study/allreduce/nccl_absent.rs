//! Stands in for `nccl.rs` in a build without the `cuda` feature.

use super::common::AllreduceConfig;
use super::table::AllreduceRow;
use crate::comm::Comm;

pub fn run(
    _comm: &Comm,
    _cfg: &AllreduceConfig,
    _on_row: impl FnMut(&AllreduceRow),
) -> anyhow::Result<Vec<AllreduceRow>> {
    anyhow::bail!("--backend nccl: this build has no GPU support (rebuild with `cargo build --release --features cuda`); use --backend mpi")
}
