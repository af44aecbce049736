//! The data plane on GPUs (feature `cuda`): NCCL's all-reduce of device
//! buffers on the CUDA stream candle computes on, bootstrapped by MPI.
//!
//! Rank 0 makes NCCL's unique id, the control plane broadcasts its 128 bytes,
//! and every rank joins the communicator on its own GPU (`local_rank`).
//! Everything that is not a gradient reduction stays with the control plane.
//! Note that NCCL sums f16 in f16 along its ring, so unlike the MPI data
//! planes it may round more than once.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use cudarc::nccl::{Comm, Id, NcclType, ReduceOp};

use super::control::Control;
use super::wire::{Reduce, WireBuf};

pub struct Nccl {
    comm: Comm,
    stream: Arc<CudaStream>,
}

fn nccl_error(what: &str, e: impl std::fmt::Debug) -> anyhow::Error {
    anyhow::anyhow!(
        "NCCL {what} failed: {e:?}. Is NCCL (libnccl.so.2) installed and does every rank see its GPU? \
         `--backend mpi` (or `--device cpu`) works without it"
    )
}

impl Nccl {
    /// Collective over the MPI world: joins the NCCL communicator on `stream`
    /// (candle's stream of this rank's GPU).
    pub fn new(control: &Control, stream: Arc<CudaStream>) -> anyhow::Result<Self> {
        let info = control.info().clone();
        let mut id_bytes = [0u8; 128];
        if info.rank == 0 {
            let id = Id::new().map_err(|e| nccl_error("unique id", e))?;
            for (b, c) in id_bytes.iter_mut().zip(id.internal()) {
                *b = *c as u8;
            }
        }
        control.broadcast_bytes(&mut id_bytes, 0)?;
        let mut internal = [0 as std::ffi::c_char; 128];
        for (c, b) in internal.iter_mut().zip(id_bytes) {
            *c = b as std::ffi::c_char;
        }
        let comm = Comm::from_rank(stream.clone(), info.rank, info.size, Id::uninit(internal))
            .map_err(|e| nccl_error("communicator start", e))?;
        Ok(Self { comm, stream })
    }

    /// Sums a device buffer over all ranks, in place, then waits for the stream.
    pub fn all_reduce_sum_device<T: NcclType>(&self, buf: &mut CudaSlice<T>) -> anyhow::Result<()> {
        if buf.len() == 0 {
            return Ok(());
        }
        self.comm.all_reduce_in_place(buf, &ReduceOp::Sum).map_err(|e| nccl_error("all-reduce", e))?;
        self.stream.synchronize().map_err(|e| nccl_error("stream synchronize", e))?;
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
        let mut dev = self.stream.clone_htod(buf).map_err(|e| nccl_error("copy to device", e))?;
        self.all_reduce_sum_device(&mut dev)?;
        self.stream.memcpy_dtoh(&dev, buf).map_err(|e| nccl_error("copy to host", e))?;
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
