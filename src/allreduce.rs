//! `candle-mpi allreduce`: a collective benchmark in the shape of nccl-tests'
//! all_reduce_perf. For each size it times the all-reduce (slowest rank, mean
//! of `--iters` after `--warmup`), and reports algorithm bandwidth
//! (bytes / time) and bus bandwidth (algbw * 2(n-1)/n, the per-link load of a
//! ring, comparable across rank counts). `--baseline` adds, measured in the same
//! run, the full exchange path (f32 -> f16 pack, all-reduce, unpack), plain
//! MPI_Allreduce of f32 sums of the same element count, and a local memcpy of
//! the same bytes.

use std::time::Instant;

use serde::Serialize;

use crate::comm::{Collective, MpiCollective, Transport};
use crate::exchange::{GradDtype, WireBucket};

/// What the benchmark is asked to do.
#[derive(Clone, Debug)]
pub struct AllreduceConfig {
    pub min_bytes: usize,
    pub max_bytes: usize,
    pub factor: usize,
    pub dtype: GradDtype,
    pub iters: usize,
    pub warmup: usize,
    pub check: bool,
    pub baseline: bool,
    pub transport: Transport,
}

impl AllreduceConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.min_bytes >= 1, "--min-bytes {}: must be at least 1", self.min_bytes);
        anyhow::ensure!(
            self.max_bytes >= self.min_bytes,
            "--max-bytes {} is below --min-bytes {}",
            self.max_bytes,
            self.min_bytes
        );
        anyhow::ensure!(self.factor >= 2, "--factor {}: must be at least 2", self.factor);
        anyhow::ensure!(self.iters >= 1, "--iters {}: must be at least 1", self.iters);
        Ok(())
    }

    /// The sizes swept, in bytes: min, min*factor, ... up to max.
    pub fn sizes(&self) -> Vec<usize> {
        let mut sizes = vec![];
        let mut s = self.min_bytes;
        while s <= self.max_bytes {
            sizes.push(s);
            s = match s.checked_mul(self.factor) {
                Some(next) => next,
                None => break,
            };
        }
        sizes
    }
}

/// One line of the table (and of `--json`). Times in microseconds, bandwidths in GB/s.
#[derive(Clone, Debug, Serialize)]
pub struct AllreduceRow {
    pub bytes: usize,
    pub count: usize,
    pub dtype: &'static str,
    pub ranks: usize,
    /// "shared-memory" or "messages": how this row's buffers were reduced.
    pub transport: &'static str,
    pub time_us: f64,
    pub algbw_gbs: f64,
    pub busbw_gbs: f64,
    /// Elements off the expected sum (`--check`), else None.
    pub wrong: Option<usize>,
    /// pack f32 -> wire type, all-reduce, unpack (`--baseline`).
    pub exchange_us: Option<f64>,
    /// MPI_Allreduce of `count` f32 values (`--baseline`).
    pub mpi_f32_us: Option<f64>,
    /// Local memcpy of `bytes` bytes (`--baseline`).
    pub memcpy_us: Option<f64>,
}

impl AllreduceRow {
    /// A row from the mean time of one all-reduce of `bytes` on `ranks` ranks.
    fn timed(bytes: usize, count: usize, dtype: GradDtype, ranks: usize, transport: &'static str, time_s: f64, wrong: Option<usize>) -> Self {
        let algbw = bytes as f64 / time_s / 1e9;
        AllreduceRow {
            bytes,
            count,
            dtype: dtype.name(),
            ranks,
            transport,
            time_us: time_s * 1e6,
            algbw_gbs: algbw,
            busbw_gbs: algbw * 2.0 * (ranks as f64 - 1.0) / ranks as f64,
            wrong,
            exchange_us: None,
            mpi_f32_us: None,
            memcpy_us: None,
        }
    }
}

/// Mean seconds per call of `f` on the slowest rank, after `warmup` calls.
fn time_slowest(comm: &dyn Collective, warmup: usize, iters: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    comm.barrier()?;
    let t0 = Instant::now();
    for _ in 0..iters {
        f()?;
    }
    let mine = t0.elapsed().as_secs_f64() / iters as f64;
    Ok(comm.all_gather_f64(mine)?.into_iter().fold(0.0, f64::max))
}

/// A small integer in [-4, 4]: sums over up to 8 ranks are exact in every wire type.
fn pattern(rank: usize, i: usize) -> f32 {
    ((i * 3 + rank * 5 + i / 7) % 9) as f32 - 4.0
}

fn run_size(comm: &MpiCollective, cfg: &AllreduceConfig, bytes: usize) -> anyhow::Result<AllreduceRow> {
    let n = comm.info().size;
    let me = comm.info().rank;
    let count = bytes / cfg.dtype.size();
    let mut bucket = WireBucket::allocate(comm, cfg.dtype, &[count], cfg.transport)?.remove(0);
    let src: Vec<f32> = (0..count).map(|i| pattern(me, i)).collect();
    bucket.pack(0, &src, 1.0);

    let time = time_slowest(comm, cfg.warmup, cfg.iters, || bucket.all_reduce(comm))?;

    let wrong = if cfg.check {
        bucket.pack(0, &src, 1.0);
        bucket.all_reduce(comm)?;
        let mut got = vec![0f32; count];
        bucket.unpack(0, &mut got);
        let mine = got.iter().enumerate().filter(|(i, g)| **g != (0..n).map(|r| pattern(r, *i)).sum::<f32>()).count();
        Some(comm.all_gather_u64(mine as u64)?.iter().sum::<u64>() as usize)
    } else {
        None
    };

    let (mut exchange_us, mut mpi_f32_us, mut memcpy_us) = (None, None, None);
    if cfg.baseline {
        // The exchange as the trainer runs it: pack scaled f32, reduce, unpack to f32.
        let scale = 1.0 / n as f32;
        let mut grads = src.clone();
        let t = time_slowest(comm, cfg.warmup, cfg.iters, || {
            bucket.pack(0, &grads, scale);
            bucket.all_reduce(comm)?;
            bucket.unpack(0, &mut grads);
            Ok(())
        })?;
        exchange_us = Some(t * 1e6);
        let mut recv = vec![0f32; count];
        let t = time_slowest(comm, cfg.warmup, cfg.iters, || {
            comm.mpi_allreduce_f32(&src, &mut recv);
            Ok(())
        })?;
        mpi_f32_us = Some(t * 1e6);
        let from = vec![1u8; bytes];
        let mut to = vec![0u8; bytes];
        let t = time_slowest(comm, cfg.warmup, cfg.iters, || {
            to.copy_from_slice(std::hint::black_box(&from));
            std::hint::black_box(&mut to);
            Ok(())
        })?;
        memcpy_us = Some(t * 1e6);
    }

    let transport = if bucket.is_shared() { "shared-memory" } else { "messages" };
    Ok(AllreduceRow { exchange_us, mpi_f32_us, memcpy_us, ..AllreduceRow::timed(bytes, count, cfg.dtype, n, transport, time, wrong) })
}

/// Runs the sweep; every rank gets the same rows. `on_row` sees each row as it is made.
pub fn run(comm: &MpiCollective, cfg: &AllreduceConfig, mut on_row: impl FnMut(&AllreduceRow)) -> anyhow::Result<Vec<AllreduceRow>> {
    cfg.validate()?;
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

/// The sweep on NCCL: device buffers of `--dtype`, summed in place on the GPU
/// (time includes waiting for the stream). `--baseline` is host-side and not
/// offered here.
#[cfg(feature = "cuda")]
pub fn run_nccl(comm: &crate::comm::NcclCollective, cfg: &AllreduceConfig, mut on_row: impl FnMut(&AllreduceRow)) -> anyhow::Result<Vec<AllreduceRow>> {
    use half::{bf16, f16};
    cfg.validate()?;
    anyhow::ensure!(!cfg.baseline, "--baseline times MPI on host memory; it is not offered with --backend nccl");
    let mut rows = vec![];
    for bytes in cfg.sizes() {
        if bytes < cfg.dtype.size() {
            continue;
        }
        let row = match cfg.dtype {
            GradDtype::F16 => nccl_size::<f16>(comm, cfg, bytes, f16::from_f32, f16::to_f32)?,
            GradDtype::Bf16 => nccl_size::<bf16>(comm, cfg, bytes, bf16::from_f32, bf16::to_f32)?,
            GradDtype::F32 => nccl_size::<f32>(comm, cfg, bytes, |v| v, |v| v)?,
        };
        on_row(&row);
        rows.push(row);
    }
    Ok(rows)
}

#[cfg(feature = "cuda")]
fn nccl_size<T>(comm: &crate::comm::NcclCollective, cfg: &AllreduceConfig, bytes: usize, from: fn(f32) -> T, to: fn(T) -> f32) -> anyhow::Result<AllreduceRow>
where
    T: cudarc::nccl::NcclType + cudarc::driver::DeviceRepr + Copy + Default,
{
    let n = comm.info().size;
    let me = comm.info().rank;
    let count = bytes / std::mem::size_of::<T>();
    let host: Vec<T> = (0..count).map(|i| from(pattern(me, i))).collect();
    let stream = comm.stream();
    let mut dev = stream.clone_htod(&host).map_err(|e| anyhow::anyhow!("copy to GPU: {e:?}"))?;
    let time = time_slowest(comm, cfg.warmup, cfg.iters, || comm.all_reduce_sum_device(&mut dev))?;
    let wrong = if cfg.check {
        stream.memcpy_htod(&host, &mut dev).map_err(|e| anyhow::anyhow!("copy to GPU: {e:?}"))?;
        comm.all_reduce_sum_device(&mut dev)?;
        let got = stream.clone_dtoh(&dev).map_err(|e| anyhow::anyhow!("copy from GPU: {e:?}"))?;
        let mine = got.iter().enumerate().filter(|(i, g)| to(**g) != (0..n).map(|r| pattern(r, *i)).sum::<f32>()).count();
        Some(comm.all_gather_u64(mine as u64)?.iter().sum::<u64>() as usize)
    } else {
        None
    };
    Ok(AllreduceRow::timed(bytes, count, cfg.dtype, n, "nccl", time, wrong))
}

/// Table header, in nccl-tests' order of columns.
pub fn header(baseline: bool) -> String {
    let mut h = format!(
        "{:>12} {:>12} {:>5} {:>11} {:>8} {:>8} {:>7}",
        "size(B)", "count(elts)", "type", "time(us)", "algbw", "busbw", "#wrong"
    );
    if baseline {
        h.push_str(&format!(" {:>11} {:>11} {:>11} {:>9}", "exch(us)", "mpi_f32(us)", "memcpy(us)", "exch/f32"));
    }
    h.push_str(&format!("\n{:>12} {:>12} {:>5} {:>11} {:>8} {:>8} {:>7}", "", "", "", "", "(GB/s)", "(GB/s)", ""));
    h
}

pub fn format_row(r: &AllreduceRow) -> String {
    let wrong = r.wrong.map_or("N/A".to_string(), |w| w.to_string());
    let mut line = format!(
        "{:>12} {:>12} {:>5} {:>11.1} {:>8.2} {:>8.2} {:>7}",
        r.bytes, r.count, r.dtype, r.time_us, r.algbw_gbs, r.busbw_gbs, wrong
    );
    if let (Some(e), Some(m), Some(c)) = (r.exchange_us, r.mpi_f32_us, r.memcpy_us) {
        line.push_str(&format!(" {:>11.1} {:>11.1} {:>11.1} {:>9.2}", e, m, c, e / m));
    }
    line
}

/// nccl-tests' closing figure: the mean bus bandwidth over all sizes.
pub fn average_busbw(rows: &[AllreduceRow]) -> f64 {
    if rows.is_empty() {
        return 0.0;
    }
    rows.iter().map(|r| r.busbw_gbs).sum::<f64>() / rows.len() as f64
}

/// Parses sizes the way nccl-tests does: a number with an optional K, M or G (powers of 2).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (digits, mult) = match t.chars().last() {
        Some('K') | Some('k') => (&t[..t.len() - 1], 1usize << 10),
        Some('M') | Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('G') | Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: usize = digits.parse().map_err(|_| format!("'{s}' is not a size: use bytes, or a number with K, M or G (e.g. 64M)"))?;
    n.checked_mul(mult).ok_or_else(|| format!("'{s}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_nccl_tests() {
        assert_eq!(parse_size("8").unwrap(), 8);
        assert_eq!(parse_size("1K").unwrap(), 1024);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert!(parse_size("12Q").unwrap_err().contains("not a size"));
    }

    #[test]
    fn sweep_sizes_go_by_factor() {
        let cfg = AllreduceConfig { min_bytes: 1024, max_bytes: 8192, factor: 2, dtype: GradDtype::F16, iters: 1, warmup: 0, check: false, baseline: false, transport: Transport::Auto };
        assert_eq!(cfg.sizes(), vec![1024, 2048, 4096, 8192]);
        let bad = AllreduceConfig { factor: 1, ..cfg.clone() };
        assert!(bad.validate().unwrap_err().to_string().contains("--factor 1"));
        let bad = AllreduceConfig { max_bytes: 10, ..cfg };
        assert!(bad.validate().unwrap_err().to_string().contains("--max-bytes 10"));
    }
}
