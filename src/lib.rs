//! candle-mpi: data-parallel training of CNNs with candle, gradients exchanged in
//! half precision over MPI (CPU) or NCCL (GPU), and the speed-up study around it.
//!
//! See `../shared/design.md` for the layout and data flow; `README.md` for use.

pub mod allreduce;
pub mod bench;
pub mod bind;
pub mod checkpoint;
pub mod comm;
pub mod cpu_slice;
pub mod data;
pub mod device;
pub mod exchange;
#[cfg(feature = "cuda")]
pub mod exchange_cuda;
pub mod fault;
pub mod gemm_cpu;
pub mod memory;
pub mod models;
pub mod optim;
pub mod output;
pub mod par;
pub mod params;
pub mod plots;
pub mod record;
pub mod report;
pub mod sgd_cpu;
pub mod report_table;
pub mod rng;
pub mod threads;
pub mod train;
pub mod watchdog;
