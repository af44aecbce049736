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
/// rank that has already given up), then joins NCCL where the device is a
/// GPU.
pub fn start_rank(kind: DeviceKind) -> anyhow::Result<Rank> {
    let control = Control::new(World::init()?);
    let device = device::select(kind, control.info());
    let ready = control.all_gather_u64(u64::from(device.is_ok()))?;
    let device = device?;
    if let Some(r) = ready.iter().position(|&ok| ok == 0) {
        anyhow::bail!("--device {}: rank {r} could not open its device (its error says why)", kind.name());
    }
    let nccl = cuda::nccl_for(&device, &control)?;
    Ok(Rank { comm: Comm::new(control, nccl), device })
}
