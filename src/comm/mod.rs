//! Collectives: the `Collective` trait every backend implements, the element
//! types that travel on the wire, and the MPI world the job starts from.
//!
//! The MPI backend (`mpi.rs`, `shm.rs`) is always built; the NCCL backend
//! (`nccl.rs`) with the `cuda` feature. Everything around the call (bucketing, ordering, scaling,
//! casting, checking) lives in `crate::exchange`, once for both.

pub mod mpi;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod shm;
pub mod simd;
pub mod wire;
pub mod world;

use std::rc::Rc;

use half::{bf16, f16};

pub use self::mpi::MpiCollective;
#[cfg(feature = "cuda")]
pub use self::nccl::NcclCollective;
pub use self::shm::SharedWindow;
pub use self::wire::WireElem;
pub use self::world::{World, WorldInfo};

/// A buffer to all-reduce, in one of the wire types.
pub enum WireBuf<'a> {
    F16(&'a mut [f16]),
    Bf16(&'a mut [bf16]),
    F32(&'a mut [f32]),
}

/// What every rank of a data-parallel job calls, in the same order on every rank.
pub trait Collective {
    /// Who this process is in the job.
    fn info(&self) -> &WorldInfo;

    /// Sums `buf` element-wise over all ranks, in place; every rank ends with
    /// the same bits. Half-precision sums are accumulated in f32 and rounded once.
    fn all_reduce_sum(&self, buf: WireBuf<'_>) -> anyhow::Result<()>;

    /// Copies `buf` from rank `root` to every rank.
    fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> anyhow::Result<()>;

    /// Waits until every rank has arrived.
    fn barrier(&self) -> anyhow::Result<()>;

    /// One value from each rank, in rank order (for metrics and checks).
    fn all_gather_f64(&self, value: f64) -> anyhow::Result<Vec<f64>>;

    /// One value from each rank, in rank order (for hashes and counts).
    fn all_gather_u64(&self, value: u64) -> anyhow::Result<Vec<u64>>;

    /// `values` of every rank, concatenated in rank order; every rank must
    /// pass the same number of values (end-of-run records).
    fn all_gather_f64s(&self, values: &[f64]) -> anyhow::Result<Vec<f64>>;

    /// Collective: `bytes` per rank of memory every rank can read, when the
    /// backend has it (all ranks on one host); None means "use messages".
    fn shared_window(&self, _bytes: usize) -> anyhow::Result<Option<Rc<SharedWindow>>> {
        Ok(None)
    }

    /// Ends every rank of the job at once (a rank that fails alone must not
    /// leave the others waiting in a collective).
    fn abort(&self, code: i32) -> !;

    /// The NCCL communicator, for exchanges that stay on the GPU.
    #[cfg(feature = "cuda")]
    fn nccl(&self) -> Option<&NcclCollective> {
        None
    }
}

/// Rank 0's `t`, on every rank (same shape, dtype and device as `t`).
pub fn broadcast_tensor(comm: &dyn Collective, t: &candle_core::Tensor) -> anyhow::Result<candle_core::Tensor> {
    let mut values: Vec<f32> = t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?;
    comm.broadcast_f32(&mut values, 0)?;
    Ok(candle_core::Tensor::from_vec(values, t.shape(), &candle_core::Device::Cpu)?.to_device(t.device())?.to_dtype(t.dtype())?)
}

/// How ranks on one host exchange gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Shared memory when every rank is on one host, messages otherwise
    Auto,
    /// Always MPI messages (all-to-all + all-gather), as between hosts
    Messages,
}
