//! Stands in for `cuda.rs` in a build without the `cuda` feature: no GPU
//! opens, none has an identity or memory in use, and no rank joins NCCL.

use candle_core::Device;

use crate::comm::{Control, Nccl, WorldInfo};

/// This build runs on CPUs only.
pub const GPU_BUILD: bool = false;

const NO_GPU_SUPPORT: &str = "--device cuda: this build has no GPU support; rebuild with \
     `cargo build --release --features cuda` (see the README's GPU section), or use --device cpu";

pub fn visible_gpu_count() -> anyhow::Result<usize> {
    anyhow::bail!(NO_GPU_SUPPORT)
}

pub fn open_gpu(_ordinal: usize, _info: &WorldInfo) -> anyhow::Result<Device> {
    anyhow::bail!(NO_GPU_SUPPORT)
}

pub fn gpu_uuid(_device: &Device) -> anyhow::Result<Option<u128>> {
    Ok(None)
}

pub fn memory_in_use_mib(_device: &Device) -> f64 {
    0.0
}

pub fn pool_peak_mib(_device: &Device) -> Option<f64> {
    None
}

pub fn nccl_for(_device: &Device, _control: &Control, _own_stream: bool) -> anyhow::Result<Option<Nccl>> {
    Ok(None)
}
