//! The GPU half of the host (feature `cuda`): opening this rank's GPU, its
//! memory in use, and NCCL for ranks on GPUs.

use candle_core::Device;

use crate::comm::{Control, Nccl, WorldInfo};

/// This build can run on GPUs.
pub const GPU_BUILD: bool = true;

/// GPU `local_rank` of this host, or an error that says what is missing.
pub fn open_gpu(info: &WorldInfo) -> anyhow::Result<Device> {
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "unset".to_string());
    let count = cudarc::driver::CudaContext::device_count().map_err(|e| {
        anyhow::anyhow!("--device cuda: the CUDA driver did not answer ({e:?}); is the NVIDIA driver installed? Use --device cpu without one")
    })? as usize;
    anyhow::ensure!(
        count >= info.local_size,
        "--device cuda: {} ranks on host {} but {count} GPU(s) visible (CUDA_VISIBLE_DEVICES={visible}); start at most {count} ranks per host",
        info.local_size,
        info.host
    );
    Device::new_cuda(info.local_rank)
        .map_err(|e| anyhow::anyhow!("--device cuda: cannot open GPU {} on host {}: {e}", info.local_rank, info.host))
}

/// Total minus free memory of `device`'s GPU, MiB; 0 on the CPU.
pub fn memory_in_use_mib(device: &Device) -> f64 {
    if let Ok(cuda) = device.as_cuda_device() {
        if let Ok((free, total)) = cuda.cuda_stream().context().mem_get_info() {
            return (total - free) as f64 / (1024.0 * 1024.0);
        }
    }
    0.0
}

/// Collective: NCCL carries the gradients of GPU ranks (joined on candle's
/// stream of the rank's GPU); CPU ranks keep to MPI.
pub fn nccl_for(device: &Device, control: &Control) -> anyhow::Result<Option<Nccl>> {
    match device {
        Device::Cuda(d) => Ok(Some(Nccl::new(control, d.cuda_stream())?)),
        _ => Ok(None),
    }
}
