//! The sweep on MPI's data planes: host buffers of `--dtype` in wire
//! buckets (shared memory or messages, as `--transport` and the ranks'
//! hosts allow), with the `--baseline` comparisons.

use super::common::{pattern, time_slowest, AllreduceConfig};
use super::table::AllreduceRow;
use crate::comm::Comm;
use crate::exchange::WireBucket;

fn run_size(comm: &Comm, cfg: &AllreduceConfig, bytes: usize) -> anyhow::Result<AllreduceRow> {
    let n = comm.info().size;
    let me = comm.info().rank;
    let count = bytes / cfg.dtype.size();
    let mut bucket = WireBucket::allocate(comm, cfg.dtype, &[count], cfg.transport)?.remove(0);
    let src: Vec<f32> = (0..count).map(|i| pattern(me, i)).collect();
    bucket.pack(0, &src, 1.0);

    let control = comm.control();
    let time = time_slowest(control, cfg.warmup, cfg.iters, || bucket.all_reduce(comm))?;

    let wrong = if cfg.check {
        bucket.pack(0, &src, 1.0);
        bucket.all_reduce(comm)?;
        let mut got = vec![0f32; count];
        bucket.unpack(0, &mut got);
        let mine = got.iter().enumerate().filter(|(i, g)| **g != (0..n).map(|r| pattern(r, *i)).sum::<f32>()).count();
        Some(control.all_gather_u64(mine as u64)?.iter().sum::<u64>() as usize)
    } else {
        None
    };

    let (mut exchange_us, mut mpi_f32_us, mut memcpy_us) = (None, None, None);
    if cfg.baseline {
        // The exchange as the trainer runs it: pack scaled f32, reduce, unpack to f32.
        let scale = 1.0 / n as f32;
        let mut grads = src.clone();
        let t = time_slowest(control, cfg.warmup, cfg.iters, || {
            bucket.pack(0, &grads, scale);
            bucket.all_reduce(comm)?;
            bucket.unpack(0, &mut grads);
            Ok(())
        })?;
        exchange_us = Some(t * 1e6);
        let mut recv = vec![0f32; count];
        let t = time_slowest(control, cfg.warmup, cfg.iters, || {
            comm.messages().mpi_allreduce_f32(&src, &mut recv);
            Ok(())
        })?;
        mpi_f32_us = Some(t * 1e6);
        let from = vec![1u8; bytes];
        let mut to = vec![0u8; bytes];
        let t = time_slowest(control, cfg.warmup, cfg.iters, || {
            to.copy_from_slice(std::hint::black_box(&from));
            std::hint::black_box(&mut to);
            Ok(())
        })?;
        memcpy_us = Some(t * 1e6);
    }

    let transport = if bucket.is_shared() { "shared-memory" } else { "messages" };
    // Every rank is here: the window is freed together.
    WireBucket::release(vec![bucket])?;
    Ok(AllreduceRow {
        exchange_us,
        mpi_f32_us,
        memcpy_us,
        ..AllreduceRow::timed(count * cfg.dtype.size(), count, cfg.dtype, n, transport, time, wrong)
    })
}

/// Runs the sweep; every rank gets the same rows. `on_row` sees each row as it is made.
pub fn run(
    comm: &Comm,
    cfg: &AllreduceConfig,
    mut on_row: impl FnMut(&AllreduceRow),
) -> anyhow::Result<Vec<AllreduceRow>> {
    cfg.validate()?;
    comm.check_transport(cfg.transport)?;
    let mut rows = vec![];
    for bytes in cfg.sizes() {
        if bytes < cfg.dtype.size() {
            continue;
        }
        let row = run_size(comm, cfg, bytes)?;
        on_row(&row);
        rows.push(row);
    }
    Ok(rows)
}
