//! The data-parallel training loop, the same code on one process or N under
//! mpirun. Before step 1 (`setup.rs`) rank 0's parameters and buffers are
//! broadcast and every rank checks it runs what rank 0 runs. Each step
//! (`step.rs`) every rank reads its shard of the global batch, runs forward
//! and backward (compute), waits at a barrier for the slowest rank (wait: the
//! load imbalance Theano-MPI calls wait), exchanges gradients (comm) and
//! applies SGD; with `--overlap` (`overlap.rs`, `staged.rs`) backward runs
//! stage by stage on a compute thread and each bucket is exchanged as soon
//! as its gradients exist; unless the exchange found a non-finite value, in which case
//! every rank skips it. After a step (`checks.rs`) come the checks every rank
//! makes together and the checkpoint; at the end (`finish.rs`) the last
//! validation (`validation.rs`) and the gathered records. `run.rs` puts the
//! phases in order, `config.rs` says what a run is asked to do, `launch.rs`
//! is the command's entry (start-up, progress, records on disk);
//! `handshake.rs`, `checkpoint.rs`, `watchdog.rs` (with `peers.rs`, its view
//! of other hosts) and `fault.rs` serve the
//! phases; `weights.rs` reads and writes weights under torchvision's names
//! (`--init-from`, `export`), and `eval.rs` measures weights on a data set.

pub mod checkpoint;
mod checks;
mod config;
pub mod eval;
pub mod fault;
mod finish;
mod handshake;
mod launch;
mod overlap;
mod peers;
mod progress;
mod run;
mod setup;
pub mod staged;
mod step;
mod validation;
pub mod watchdog;
pub mod weights;

pub use self::config::{Overlap, TrainConfig};
pub use self::launch::{launch, Launch};
pub use self::run::run;
