//! candle-mpi: data-parallel training of CNNs with candle, gradients exchanged in
//! half precision over MPI (CPU) or NCCL (GPU), and the speed-up study around it.
//!
//! The modules in the order one step runs through them: `host` (the process
//! before step 1), `data`, `model` and `ops` (forward and backward), `exchange`
//! over `comm` (mean gradients), `optim` (the update), `record` (what was
//! measured); `train` is the loop over them, `study` the experiments around
//! it. See `../shared/design.md` for the data flow; `README.md` for use.

pub mod comm;
pub mod data;
pub mod exchange;
pub mod host;
pub mod model;
pub mod ops;
pub mod optim;
pub mod record;
pub mod rng;
pub mod study;
pub mod train;
