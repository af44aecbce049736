//! Which device a rank computes on: the CPU, or GPU `local_rank` (one rank per
//! GPU, as mpirun places them; CUDA_VISIBLE_DEVICES is respected, since CUDA
//! numbers only the GPUs it shows). The GPU half lives in `cuda.rs`.

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

impl DeviceKind {
    /// The name the command line uses.
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
        }
    }
}

/// The device for this rank, or an error that says what is missing.
pub fn select(kind: DeviceKind, info: &WorldInfo) -> anyhow::Result<Device> {
    match kind {
        DeviceKind::Cpu => Ok(Device::Cpu),
        DeviceKind::Cuda => super::cuda::open_gpu(info),
    }
}

/// GPU memory in use on `device`'s GPU now, MiB (total - free, as nvidia-smi
/// shows it: one rank per GPU, so this is the rank's memory plus the CUDA
/// context); 0 on the CPU. The trainer samples it after every step and keeps
/// the peak, since candle's allocator keeps no statistics of its own.
pub fn gpu_memory_in_use_mib(device: &Device) -> f64 {
    super::cuda::memory_in_use_mib(device)
}

#[cfg(all(test, not(feature = "cuda")))]
mod tests {
    use super::*;

    #[test]
    fn cpu_build_refuses_cuda_and_says_how_to_get_it() {
        let info = WorldInfo { rank: 0, size: 1, local_rank: 0, local_size: 1, host: "h".into() };
        let err = select(DeviceKind::Cuda, &info).unwrap_err().to_string();
        assert!(
            err.contains("--device cuda") && err.contains("--features cuda") && err.contains("--device cpu"),
            "{err}"
        );
        assert!(select(DeviceKind::Cpu, &info).unwrap().is_cpu());
    }
}
