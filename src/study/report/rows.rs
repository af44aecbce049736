//! The report's numbers: each finished run's figures, and per network, mode
//! and worker count the row they reduce to (times per 5120 images and their
//! parts, speed-up and efficiency, the host ceiling, memory).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::ModelKind;
use crate::record::stats::{mean, Stat};
use crate::record::sweep::{Mode, RunKind};

/// The rows of each (network, mode), in the order they are drawn.
pub type Series = [((ModelKind, String), Vec<ScalingRow>)];

/// The figures of one finished run that the report uses.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunResult {
    pub model: ModelKind,
    pub mode: Mode,
    pub kind: RunKind,
    pub workers: usize,
    pub repeat: usize,
    pub oversubscribed: bool,
    pub global_batch: usize,
    /// Images per second: the run's, or the ceiling processes' sum.
    pub images_per_s: f64,
    pub step_s_median: f64,
    pub compute_s: f64,
    /// The exchange the step waited for, and all of it (more when overlapped with backward).
    pub comm_s: f64,
    pub exchange_s: f64,
    pub wait_s: f64,
    pub data_s: f64,
    pub peak_rss_mib: Vec<f64>,
    pub steps: usize,
    pub seconds: f64,
}

impl RunResult {
    pub fn s_per_5120(&self) -> f64 {
        5120.0 / self.images_per_s
    }
    /// A per-step time scaled to 5120 images.
    pub(super) fn per_5120(&self, step_part: f64) -> f64 {
        step_part * 5120.0 / self.global_batch as f64
    }
}

/// One row of a network's table: N workers over the repeats.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ScalingRow {
    pub workers: usize,
    pub repeats: usize,
    pub oversubscribed: bool,
    /// Seconds per 5120 images, and its parts (per step medians, scaled).
    pub s_per_5120: Stat,
    pub compute: f64,
    pub comm: f64,
    pub exchange: f64,
    pub wait: f64,
    pub data: f64,
    /// t1 / tN, one value per repeat of N against the mean of t1.
    pub speedup: Stat,
    pub efficiency: f64,
    /// The ceiling's throughput over one worker's: the most N could give here.
    pub ceiling_speedup: Option<f64>,
    /// speed-up / ceiling speed-up.
    pub efficiency_vs_ceiling: Option<f64>,
    pub slowest_step_s: f64,
    pub rss_per_rank_mib: f64,
    pub rss_total_mib: f64,
}

/// The rows of one network and mode, by worker count; None without a 1-worker run.
pub fn scaling_rows(results: &[RunResult], model: ModelKind, mode: Mode) -> Vec<ScalingRow> {
    let of = |kind: RunKind, n: usize| -> Vec<&RunResult> {
        results.iter().filter(|r| r.model == model && r.mode == mode && r.kind == kind && r.workers == n).collect()
    };
    let base: Vec<f64> = of(RunKind::Mpi, 1).iter().map(|r| r.s_per_5120()).collect();
    let t1 = (!base.is_empty()).then(|| mean(&base));
    let base_rate =
        (!base.is_empty()).then(|| mean(&of(RunKind::Mpi, 1).iter().map(|r| r.images_per_s).collect::<Vec<_>>()));
    let mut counts: Vec<usize> = results
        .iter()
        .filter(|r| r.model == model && r.mode == mode && r.kind == RunKind::Mpi)
        .map(|r| r.workers)
        .collect();
    counts.sort_unstable();
    counts.dedup();
    counts
        .into_iter()
        .map(|n| {
            let runs = of(RunKind::Mpi, n);
            let times: Vec<f64> = runs.iter().map(|r| r.s_per_5120()).collect();
            let part = |g: fn(&RunResult) -> f64| mean(&runs.iter().map(|r| r.per_5120(g(r))).collect::<Vec<_>>());
            let speedup = Stat::of(&t1.map(|t1| times.iter().map(|t| t1 / t).collect::<Vec<_>>()).unwrap_or_default());
            let ceiling_rate: Vec<f64> =
                if n == 1 { vec![] } else { of(RunKind::Ceiling, n).iter().map(|r| r.images_per_s).collect() };
            let ceiling_speedup = match (n, base_rate, ceiling_rate.is_empty()) {
                (1, Some(_), _) => Some(1.0),
                (_, Some(b), false) => Some(mean(&ceiling_rate) / b),
                _ => None,
            };
            let rss_max = |r: &&RunResult| r.peak_rss_mib.iter().fold(0.0f64, |a, b| a.max(*b));
            ScalingRow {
                workers: n,
                repeats: runs.len(),
                oversubscribed: runs.iter().any(|r| r.oversubscribed),
                s_per_5120: Stat::of(&times),
                compute: part(|r| r.compute_s),
                comm: part(|r| r.comm_s),
                exchange: part(|r| r.exchange_s),
                wait: part(|r| r.wait_s),
                data: part(|r| r.data_s),
                efficiency: speedup.mean / n as f64,
                efficiency_vs_ceiling: ceiling_speedup.filter(|_| speedup.n > 0).map(|c| speedup.mean / c),
                speedup,
                ceiling_speedup,
                slowest_step_s: mean(&runs.iter().map(|r| r.step_s_median).collect::<Vec<_>>()),
                rss_per_rank_mib: runs.iter().map(rss_max).fold(0.0, f64::max),
                rss_total_mib: runs.iter().map(|r| r.peak_rss_mib.iter().sum::<f64>()).fold(0.0, f64::max),
            }
        })
        .collect()
}

/// Everything the report shows, by (network, mode).
pub fn all_rows(results: &[RunResult]) -> BTreeMap<(ModelKind, String), Vec<ScalingRow>> {
    let mut out = BTreeMap::new();
    for r in results {
        let key = (r.model, format!("{:?}", r.mode).to_lowercase());
        out.entry(key).or_insert_with(|| scaling_rows(results, r.model, r.mode));
    }
    out
}
