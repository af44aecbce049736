//! Which device a rank computes on: the CPU, or GPU `local_rank` (one rank per
//! GPU, as mpirun places them; CUDA_VISIBLE_DEVICES is respected, since CUDA
//! numbers only the GPUs it shows).

use candle_core::Device;

use crate::comm::WorldInfo;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// The host's cores (see --threads)
    Cpu,
    /// GPU number `local rank` on each host; needs a build with --features cuda
    Cuda,
}

/// The device for this rank, or an error that says what is missing.
pub fn select(kind: DeviceKind, info: &WorldInfo) -> anyhow::Result<Device> {
    match kind {
        DeviceKind::Cpu => Ok(Device::Cpu),
        DeviceKind::Cuda => cuda_device(info),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_info: &WorldInfo) -> anyhow::Result<Device> {
    anyhow::bail!(
        "--device cuda: this build has no GPU support; rebuild with `cargo build --release --features cuda` \
         (see the README's GPU section), or use --device cpu"
    )
}

#[cfg(feature = "cuda")]
fn cuda_device(info: &WorldInfo) -> anyhow::Result<Device> {
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

/// GPU memory in use on `device`'s GPU now, MiB (total - free, as nvidia-smi
/// shows it: one rank per GPU, so this is the rank's memory plus the CUDA
/// context); 0 on the CPU. The trainer samples it after every step and keeps
/// the peak, since candle's allocator keeps no statistics of its own.
pub fn gpu_memory_in_use_mib(device: &Device) -> f64 {
    #[cfg(feature = "cuda")]
    if let Ok(cuda) = device.as_cuda_device() {
        if let Ok((free, total)) = cuda.cuda_stream().context().mem_get_info() {
            return (total - free) as f64 / (1024.0 * 1024.0);
        }
    }
    let _ = device;
    0.0
}

#[cfg(all(test, not(feature = "cuda")))]
mod tests {
    use super::*;

    #[test]
    fn cpu_build_refuses_cuda_and_says_how_to_get_it() {
        let info = WorldInfo { rank: 0, size: 1, local_rank: 0, local_size: 1, host: "h".into() };
        let err = select(DeviceKind::Cuda, &info).unwrap_err().to_string();
        assert!(err.contains("--device cuda") && err.contains("--features cuda") && err.contains("--device cpu"), "{err}");
        assert!(select(DeviceKind::Cpu, &info).unwrap().is_cpu());
    }
}
