//! The GPU half of the host (feature `cuda`): opening this rank's GPU, its
//! identity and memory figures, and NCCL for ranks on GPUs.

use candle_core::Device;
use cudarc::driver::{sys, CudaContext};

use crate::comm::{Control, Nccl, WorldInfo};

/// This build can run on GPUs.
pub const GPU_BUILD: bool = true;

const MIB: f64 = 1024.0 * 1024.0;

/// How many GPUs CUDA shows this process, or an error that says what is missing.
pub fn visible_gpu_count() -> anyhow::Result<usize> {
    let count = CudaContext::device_count().map_err(|e| {
        anyhow::anyhow!("--device cuda: the CUDA driver did not answer ({e}); is the NVIDIA driver installed? Use --device cpu without one")
    })?;
    Ok(count as usize)
}

/// Opens visible GPU `ordinal` for this rank.
pub fn open_gpu(ordinal: usize, info: &WorldInfo) -> anyhow::Result<Device> {
    Device::new_cuda(ordinal)
        .map_err(|e| anyhow::anyhow!("--device cuda: cannot open GPU {ordinal} on host {}: {e}", info.host))
}

fn context(device: &Device) -> Option<std::sync::Arc<CudaContext>> {
    device.as_cuda_device().ok().map(|d| d.cuda_stream().context().clone())
}

/// The GPU's UUID, which tells two ranks on one GPU apart from two GPUs; None on the CPU.
pub fn gpu_uuid(device: &Device) -> anyhow::Result<Option<u128>> {
    let Some(ctx) = context(device) else { return Ok(None) };
    let uuid =
        ctx.uuid().map_err(|e| anyhow::anyhow!("--device cuda: cannot read GPU {}'s UUID: {e}", ctx.ordinal()))?;
    Ok(Some(u128::from_le_bytes(uuid.bytes.map(|b| b as u8))))
}

/// Total minus free memory of `device`'s whole GPU, MiB (what nvidia-smi
/// shows: the CUDA context, cuBLAS's workspace and the memory pool's
/// reserve included); 0 on the CPU.
pub fn memory_in_use_mib(device: &Device) -> f64 {
    match context(device).map(|ctx| ctx.mem_get_info()) {
        Some(Ok((free, total))) => (total - free) as f64 / MIB,
        _ => 0.0,
    }
}

/// The high-water mark of the bytes allocated from the GPU's current memory
/// pool, MiB: where candle's tensors live, since cudarc allocates them
/// stream-ordered from that pool on every GPU that has pools (PyTorch's
/// max_memory_allocated, for this allocator). None on the CPU and on GPUs
/// without memory pools.
pub fn pool_peak_mib(device: &Device) -> Option<f64> {
    let ctx = context(device)?;
    if !ctx.has_async_alloc() {
        return None;
    }
    ctx.bind_to_thread().ok()?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: a live device of a bound context; the pool handle is written by the driver.
    unsafe { sys::cuDeviceGetMemPool(&mut pool, ctx.cu_device()) }.result().ok()?;
    let mut high: u64 = 0;
    let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH;
    // SAFETY: this attribute is a cuuint64_t, written into `high`.
    unsafe { sys::cuMemPoolGetAttribute(pool, attr, (&mut high as *mut u64).cast()) }.result().ok()?;
    Some(high as f64 / MIB)
}

/// Collective: NCCL carries the gradients of GPU ranks, on candle's stream,
/// or with `own_stream` on a stream of its own in the same context, so that
/// a sum can run beside backward's kernels (cudarc then orders the two
/// streams by events on every buffer, which costs host time per launch: only
/// `--overlap` asks for it); CPU ranks keep to MPI.
pub fn nccl_for(device: &Device, control: &Control, own_stream: bool) -> anyhow::Result<Option<Nccl>> {
    match device {
        Device::Cuda(d) if own_stream => {
            let stream = d
                .cuda_stream()
                .context()
                .new_stream()
                .map_err(|e| anyhow::anyhow!("CUDA: cannot create NCCL's stream on the GPU: {e}"))?;
            Ok(Some(Nccl::new(control, stream)?))
        }
        Device::Cuda(d) => Ok(Some(Nccl::new(control, d.cuda_stream())?)),
        _ => Ok(None),
    }
}
