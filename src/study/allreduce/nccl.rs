//! The sweep on NCCL (feature `cuda`): device buffers of `--dtype`, summed
//! in place on the GPU (time includes waiting for the stream). `--baseline`
//! is host-side and not offered here.

use half::{bf16, f16};

use super::common::{pattern, time_slowest, AllreduceConfig};
use super::table::AllreduceRow;
use crate::comm::{Comm, GradDtype, Nccl};

pub fn run(
    comm: &Comm,
    cfg: &AllreduceConfig,
    mut on_row: impl FnMut(&AllreduceRow),
) -> anyhow::Result<Vec<AllreduceRow>> {
    cfg.validate()?;
    anyhow::ensure!(!cfg.baseline, "--baseline times MPI on host memory; it is not offered with --backend nccl");
    let nccl = comm.nccl().ok_or_else(|| anyhow::anyhow!("--backend nccl: this rank has no NCCL communicator"))?;
    let mut rows = vec![];
    for bytes in cfg.sizes() {
        if bytes < cfg.dtype.size() {
            continue;
        }
        let row = match cfg.dtype {
            GradDtype::F16 => size::<f16>(comm, nccl, cfg, bytes, f16::from_f32, f16::to_f32)?,
            GradDtype::Bf16 => size::<bf16>(comm, nccl, cfg, bytes, bf16::from_f32, bf16::to_f32)?,
            GradDtype::F32 => size::<f32>(comm, nccl, cfg, bytes, |v| v, |v| v)?,
        };
        on_row(&row);
        rows.push(row);
    }
    Ok(rows)
}

fn size<T>(
    comm: &Comm,
    nccl: &Nccl,
    cfg: &AllreduceConfig,
    bytes: usize,
    from: fn(f32) -> T,
    to: fn(T) -> f32,
) -> anyhow::Result<AllreduceRow>
where
    T: cudarc::nccl::NcclType + cudarc::driver::DeviceRepr + Copy + Default,
{
    let control = comm.control();
    let n = comm.info().size;
    let me = comm.info().rank;
    let count = bytes / std::mem::size_of::<T>();
    let host: Vec<T> = (0..count).map(|i| from(pattern(me, i))).collect();
    let stream = nccl.stream();
    let mut dev = stream.clone_htod(&host).map_err(|e| anyhow::anyhow!("copy to GPU: {e:?}"))?;
    let time = time_slowest(control, cfg.warmup, cfg.iters, || nccl.all_reduce_sum_device(&mut dev))?;
    let wrong = if cfg.check {
        stream.memcpy_htod(&host, &mut dev).map_err(|e| anyhow::anyhow!("copy to GPU: {e:?}"))?;
        nccl.all_reduce_sum_device(&mut dev)?;
        let got = stream.clone_dtoh(&dev).map_err(|e| anyhow::anyhow!("copy from GPU: {e:?}"))?;
        let mine =
            got.iter().enumerate().filter(|(i, g)| to(**g) != (0..n).map(|r| pattern(r, *i)).sum::<f32>()).count();
        Some(control.all_gather_u64(mine as u64)?.iter().sum::<u64>() as usize)
    } else {
        None
    };
    Ok(AllreduceRow::timed(count * cfg.dtype.size(), count, cfg.dtype, n, "nccl", time, wrong))
}
