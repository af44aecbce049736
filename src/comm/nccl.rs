//! The data plane on GPUs (feature `cuda`): NCCL's all-reduce of device
//! buffers on the CUDA stream candle computes on, or, with `--overlap`, on
//! one of its own beside it (so that a sum runs while backward computes),
//! bootstrapped by MPI.
//!
//! Rank 0 makes NCCL's unique id, the control plane agrees that it could and
//! broadcasts its 128 bytes, and every rank joins the communicator on its own
//! GPU. Everything that is not a gradient reduction stays with the control
//! plane. Note that NCCL sums f16 and bf16 in that type along its ring, so
//! unlike the MPI data planes it may round more than once.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use cudarc::nccl::{Comm, Id, NcclType, ReduceOp};

use super::control::Control;
use super::wire::{Reduce, WireBuf};

pub struct Nccl {
    comm: Comm,
    stream: Arc<CudaStream>,
}

/// NCCL's own words for a failure, and where to look next.
fn nccl_error(what: &str, e: cudarc::nccl::result::NcclError) -> anyhow::Error {
    // SAFETY: NCCL returns a static, NUL-terminated string for every result code.
    let text = unsafe { std::ffi::CStr::from_ptr(cudarc::nccl::sys::ncclGetErrorString(e.0)) };
    anyhow::anyhow!(
        "NCCL {what} failed: {} ({:?}); run with NCCL_DEBUG=WARN (or INFO) in the environment for NCCL's reasons",
        text.to_string_lossy(),
        e.0
    )
}

fn cuda_error(what: &str, e: cudarc::driver::DriverError) -> anyhow::Error {
    anyhow::anyhow!("CUDA {what} failed: {e}")
}

impl Nccl {
    /// Collective over the MPI world: joins the NCCL communicator on `stream`
    /// (candle's stream of this rank's GPU, or one of its own beside it). A rank that cannot join ends the
    /// job at once, naming itself: the others are inside NCCL's start, waiting
    /// for it, where no collective of the control plane can reach them.
    pub fn new(control: &Control, stream: Arc<CudaStream>) -> anyhow::Result<Self> {
        let info = control.info().clone();
        let made = match info.rank {
            0 => Id::new().map(|id| (*id.internal()).map(|c| c as u8)).map_err(|e| nccl_error("unique id", e)),
            _ => Ok([0u8; 128]),
        };
        let mut id_bytes = control.agree("NCCL unique id", made)?;
        control.broadcast_bytes(&mut id_bytes, 0)?;
        let joined = stream
            .context()
            .bind_to_thread()
            .map_err(|e| cuda_error("binding the GPU's context to this thread", e))
            .and_then(|()| {
                Comm::from_rank(
                    stream.clone(),
                    info.rank,
                    info.size,
                    Id::uninit(id_bytes.map(|b| b as std::ffi::c_char)),
                )
                .map_err(|e| nccl_error("communicator start (ncclCommInitRank)", e))
            });
        match joined {
            Ok(comm) => Ok(Self { comm, stream }),
            Err(e) if info.size > 1 => {
                eprintln!("rank {}: error: {e:#}", info.rank);
                control.abort(1)
            }
            Err(e) => Err(e),
        }
    }

    /// Sums a device buffer over all ranks, in place, then waits for the stream.
    pub fn all_reduce_sum_device<T: NcclType>(&self, buf: &mut CudaSlice<T>) -> anyhow::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.comm.all_reduce_in_place(buf, &ReduceOp::Sum).map_err(|e| nccl_error("all-reduce", e))?;
        self.stream.synchronize().map_err(|e| cuda_error("stream synchronize", e))?;
        Ok(())
    }

    /// Queues the sum of a device buffer over all ranks, in place, on NCCL's
    /// stream, without waiting: the buffer's next user on another stream
    /// waits for it (cudarc's event on the buffer).
    pub fn all_reduce_sum_device_queued<T: NcclType>(&self, buf: &mut CudaSlice<T>) -> anyhow::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.comm.all_reduce_in_place(buf, &ReduceOp::Sum).map_err(|e| nccl_error("all-reduce", e))?;
        Ok(())
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Host buffers go to the device, are summed there, and come back.
    fn host_round_trip<T: NcclType + cudarc::driver::DeviceRepr + Default + Clone>(
        &self,
        buf: &mut [T],
    ) -> anyhow::Result<()> {
        let mut dev = self.stream.clone_htod(buf).map_err(|e| cuda_error("copy to device", e))?;
        self.all_reduce_sum_device(&mut dev)?;
        self.stream.memcpy_dtoh(&dev, buf).map_err(|e| cuda_error("copy to host", e))?;
        Ok(())
    }
}

impl Reduce for Nccl {
    fn all_reduce_sum(&self, buf: WireBuf<'_>) -> anyhow::Result<()> {
        match buf {
            WireBuf::F16(b) => self.host_round_trip(b),
            WireBuf::Bf16(b) => self.host_round_trip(b),
            WireBuf::F32(b) => self.host_round_trip(b),
        }
    }
}
