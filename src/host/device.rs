//! Which device a rank computes on: the CPU, or GPU `local_rank` (one rank per
//! GPU, as mpirun places them; CUDA_VISIBLE_DEVICES is respected, since CUDA
//! numbers only the GPUs it shows), or the one GPU a launcher left each rank.
//! The GPU half lives in `cuda.rs`.

use candle_core::Device;

use crate::comm::{Control, WorldInfo};

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
        DeviceKind::Cuda => {
            let visible = std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "unset".to_string());
            let ordinal = gpu_ordinal(super::cuda::visible_gpu_count()?, info, &visible)?;
            super::cuda::open_gpu(ordinal, info)
        }
    }
}

/// Which of `visible` GPUs a rank opens: the only one, where a launcher gave
/// each rank its own (Slurm `--gpus-per-task=1`, `CUDA_VISIBLE_DEVICES=$LOCAL_RANK`
/// wrappers), else GPU `local_rank`, which needs a GPU for each rank of the host.
pub fn gpu_ordinal(visible: usize, info: &WorldInfo, cuda_visible_devices: &str) -> anyhow::Result<usize> {
    match visible {
        0 => anyhow::bail!(
            "--device cuda: no GPU visible on host {} (CUDA_VISIBLE_DEVICES={cuda_visible_devices}); use --device cpu",
            info.host
        ),
        1 => Ok(0),
        n if n >= info.local_size => Ok(info.local_rank),
        n => anyhow::bail!(
            "--device cuda: {} ranks on host {} but {n} GPUs visible (CUDA_VISIBLE_DEVICES={cuda_visible_devices}); \
             start at most {n} ranks per host, or give each rank one GPU of its own",
            info.local_size,
            info.host
        ),
    }
}

/// The first two ranks, in rank order, whose GPUs have one identity.
pub fn first_shared_gpu(ids: &[u128]) -> Option<(usize, usize)> {
    (1..ids.len()).find_map(|b| (0..b).find(|&a| ids[a] == ids[b]).map(|a| (a, b)))
}

/// Collective: refuses a job in which two ranks opened one GPU (NCCL cannot
/// sum between them, and their figures would share the chip), naming both.
pub fn check_one_rank_per_gpu(control: &Control, device: &Device) -> anyhow::Result<()> {
    if device.is_cpu() {
        return Ok(()); // every rank agreed on one kind of device
    }
    let mine = control.agree("--device cuda", super::cuda::gpu_uuid(device))?;
    let Some(uuid) = mine else { return Ok(()) };
    let low = control.all_gather_u64(uuid as u64)?;
    let high = control.all_gather_u64((uuid >> 64) as u64)?;
    let ids: Vec<u128> = low.iter().zip(&high).map(|(&l, &h)| u128::from(h) << 64 | u128::from(l)).collect();
    match first_shared_gpu(&ids) {
        Some((a, b)) => anyhow::bail!(
            "--device cuda: ranks {a} and {b} opened the same GPU; start one rank per GPU \
             (each rank sees one GPU, or its host has a GPU for each of its ranks)"
        ),
        None => Ok(()),
    }
}

/// GPU memory in use on `device`'s whole GPU now, MiB (total - free, as
/// nvidia-smi shows it: the rank's memory plus the CUDA context, cuBLAS's
/// workspace and the pool's cached reserve); 0 on the CPU. The trainer
/// samples it after every step and keeps the peak.
pub fn gpu_memory_in_use_mib(device: &Device) -> f64 {
    super::cuda::memory_in_use_mib(device)
}

/// The high-water mark of the memory candle's tensors took on `device`'s GPU,
/// MiB (the memory pool's, read once at the end); None on the CPU and on
/// GPUs without memory pools.
pub fn gpu_tensor_peak_mib(device: &Device) -> Option<f64> {
    super::cuda::pool_peak_mib(device)
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

#[cfg(test)]
mod ordinal_tests {
    use super::*;

    fn on_host(local_rank: usize, local_size: usize) -> WorldInfo {
        WorldInfo { rank: local_rank, size: local_size, local_rank, local_size, host: "h".into() }
    }

    #[test]
    fn one_visible_gpu_is_the_ranks_own_whatever_its_local_rank() {
        assert_eq!(gpu_ordinal(1, &on_host(3, 4), "3").unwrap(), 0);
        assert_eq!(gpu_ordinal(1, &on_host(0, 1), "unset").unwrap(), 0);
    }

    #[test]
    fn several_visible_gpus_are_shared_out_by_local_rank() {
        assert_eq!(gpu_ordinal(8, &on_host(5, 8), "unset").unwrap(), 5);
        assert_eq!(gpu_ordinal(4, &on_host(1, 2), "unset").unwrap(), 1);
        let e = gpu_ordinal(2, &on_host(0, 4), "0,1").unwrap_err().to_string();
        assert!(e.contains("4 ranks on host h but 2 GPUs visible") && e.contains("CUDA_VISIBLE_DEVICES=0,1"), "{e}");
        let e = gpu_ordinal(0, &on_host(0, 1), "").unwrap_err().to_string();
        assert!(e.contains("no GPU visible on host h") && e.contains("--device cpu"), "{e}");
    }

    #[test]
    fn two_ranks_on_one_gpu_are_found_in_rank_order() {
        assert_eq!(first_shared_gpu(&[7, 8, 9]), None);
        assert_eq!(first_shared_gpu(&[7]), None);
        assert_eq!(first_shared_gpu(&[7, 8, 9, 8, 7]), Some((1, 3)));
        assert_eq!(first_shared_gpu(&[5, 5]), Some((0, 1)));
    }
}
