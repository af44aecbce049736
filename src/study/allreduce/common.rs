//! What every backend's sweep shares: the configuration and its sizes, the
//! values each rank contributes, and the timing on the slowest rank.

use std::time::Instant;

use crate::comm::{Control, GradDtype, Transport};

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
        let elem = self.dtype.size();
        anyhow::ensure!(
            self.min_bytes >= elem,
            "--min-bytes {}: smaller than one {} element ({elem} bytes); give {elem} or more",
            self.min_bytes,
            self.dtype.name()
        );
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

/// Mean seconds per call of `f` on the slowest rank, after `warmup` calls.
pub(super) fn time_slowest(
    control: &Control,
    warmup: usize,
    iters: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    control.barrier()?;
    let t0 = Instant::now();
    for _ in 0..iters {
        f()?;
    }
    let mine = t0.elapsed().as_secs_f64() / iters as f64;
    Ok(control.all_gather_f64(mine)?.into_iter().fold(0.0, f64::max))
}

/// A small integer in [-4, 4]: sums over up to 8 ranks are exact in every wire type.
pub(super) fn pattern(rank: usize, i: usize) -> f32 {
    ((i * 3 + rank * 5 + i / 7) % 9) as f32 - 4.0
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
    let n: usize =
        digits.parse().map_err(|_| format!("'{s}' is not a size: use bytes, or a number with K, M or G (e.g. 64M)"))?;
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
        let cfg = AllreduceConfig {
            min_bytes: 1024,
            max_bytes: 8192,
            factor: 2,
            dtype: GradDtype::F16,
            iters: 1,
            warmup: 0,
            check: false,
            baseline: false,
            transport: Transport::Auto,
        };
        assert_eq!(cfg.sizes(), vec![1024, 2048, 4096, 8192]);
        let bad = AllreduceConfig { factor: 1, ..cfg.clone() };
        assert!(bad.validate().unwrap_err().to_string().contains("--factor 1"));
        let bad = AllreduceConfig { max_bytes: 10, ..cfg };
        assert!(bad.validate().unwrap_err().to_string().contains("--max-bytes 10"));
    }
}
