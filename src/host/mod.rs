//! The process before step 1: its compute threads (`threads.rs`) and the
//! host's CPUs (`cpus.rs`), allocator settings (`memory.rs`), pinning to a
//! share of the host (`bind.rs`), the machine a sweep records
//! (`machine.rs`), and the device each rank computes on, agreed across the
//! ranks (`device.rs`, with its CUDA half in `cuda.rs`). `start_rank` puts
//! them together into what a rank needs to train.

pub mod bind;
pub mod cpus;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "cuda_absent.rs"]
pub mod cuda;
pub mod device;
pub mod machine;
pub mod memory;
pub mod threads;

use candle_core::Device;

use crate::comm::{Comm, Control, World};

use self::device::DeviceKind;

/// A started rank: its place in the job, its device, and its communicators.
pub struct Rank {
    pub comm: Comm,
    pub device: Device,
}

/// Collective: starts MPI, opens this rank's `kind` of device and agrees
/// with every rank that all of them have one (none goes on to wait for a
/// rank that has already given up) and that no two share a GPU, then joins
/// NCCL where the device is a GPU: on candle's stream, or, where its sums
/// are to run beside backward (`nccl_own_stream`), on a stream of its own.
pub fn start_rank(kind: DeviceKind, nccl_own_stream: bool) -> anyhow::Result<Rank> {
    let control = Control::new(World::init()?);
    let device = control.agree(&format!("--device {}", kind.name()), device::select(kind, control.info()))?;
    device::check_one_rank_per_gpu(&control, &device)?;
    let nccl = cuda::nccl_for(&device, &control, nccl_own_stream)?;
    Ok(Rank { comm: Comm::new(control, nccl)?, device })
}

impl Rank {
    /// This rank's `result`, unless it is an error on one rank of several:
    /// then the error is printed as `rank R: error: ...` and the whole job
    /// ends at once (MPI_Abort), since the other ranks would wait for this
    /// one in their next collective. Call it while what the work allocated
    /// collectively is still alive, and before the rank itself is dropped.
    pub fn or_abort<T>(&self, result: anyhow::Result<T>) -> anyhow::Result<T> {
        match result {
            Err(e) if self.comm.info().size > 1 => {
                eprintln!("rank {}: error: {e:#}", self.comm.info().rank);
                self.comm.control().abort(1)
            }
            r => r,
        }
    }
}
