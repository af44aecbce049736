//! What a prediction starts from, each read or measured here: one worker's
//! step (from a training's or a sweep's records, or given), the network's
//! gradients and the stage that finishes each (from its definition), and a
//! link fitted to an `allreduce --json` record.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use super::collective::Link;
use crate::model::layers::count_macs;
use crate::model::params::ParamStore;
use crate::model::{ModelConfig, ModelKind};
use crate::record::sweep::{Mode, RunKind};
use crate::study::report;
use crate::train::staged;

/// One worker's step, split as the records split it.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerStep {
    /// Forward, backward and update.
    pub compute_s: f64,
    /// Waiting for data.
    pub data_s: f64,
    /// The exchange's own work on one worker (pack, unpack: no peer), which
    /// every worker count pays.
    pub local_s: f64,
    /// The step's standard deviation, for the wait for the slowest of N.
    pub std_s: f64,
    /// Images per step.
    pub batch: usize,
    pub source: String,
}

impl WorkerStep {
    pub fn given(step_s: f64, batch: usize, source: &str) -> Self {
        Self { compute_s: step_s, data_s: 0.0, local_s: 0.0, std_s: 0.0, batch, source: source.into() }
    }

    /// From `dir`: a training's `--out` (summary.json) or a sweep's (its
    /// 1-worker runs of `model`, medians over the repeats).
    pub fn from_records(dir: &Path, model: ModelKind) -> anyhow::Result<Self> {
        let summary = dir.join("summary.json");
        if summary.is_file() {
            let text = std::fs::read_to_string(&summary)?;
            let s: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", summary.display()))?;
            let f = |k: &str| {
                s[k].as_f64().ok_or_else(|| anyhow::anyhow!("--from {}: summary.json lacks {k}", dir.display()))
            };
            let recorded = s["model"].as_str().unwrap_or_default();
            anyhow::ensure!(
                recorded == model.to_string(),
                "--from {}: these records are of {recorded}, not of --model {model}",
                dir.display()
            );
            return Ok(Self {
                compute_s: f("compute_s")?,
                data_s: f("data_s")?,
                local_s: f("comm_s")?,
                std_s: f("step_s_std")?,
                batch: s["batch_per_rank"].as_u64().unwrap_or(0) as usize,
                source: format!("{} (world of {})", summary.display(), s["world_size"]),
            });
        }
        let (results, _) = report::load(dir).map_err(|e| {
            anyhow::anyhow!("--from {}: neither a training's records (summary.json) nor a sweep's: {e}", dir.display())
        })?;
        let ones: Vec<_> = results
            .iter()
            .filter(|r| r.model == model && r.workers == 1 && r.kind == RunKind::Mpi && r.mode == Mode::Weak)
            .collect();
        anyhow::ensure!(!ones.is_empty(), "--from {}: the sweep has no 1-worker run of {model}", dir.display());
        let median = |f: fn(&report::rows::RunResult) -> f64| {
            crate::record::stats::median(&ones.iter().map(|r| f(r)).collect::<Vec<_>>())
        };
        let steps: Vec<f64> = ones.iter().map(|r| r.step_s_median).collect();
        Ok(Self {
            compute_s: median(|r| r.compute_s),
            data_s: median(|r| r.data_s),
            local_s: median(|r| r.comm_s),
            std_s: crate::record::stats::std_dev(&steps),
            batch: ones[0].global_batch,
            source: format!("{}: {} 1-worker run(s) of {model}", dir.display(), ones.len()),
        })
    }

    pub fn total_s(&self) -> f64 {
        self.compute_s + self.data_s + self.local_s
    }
}

/// The network as the exchange sees it: parameter sizes by name, the stage
/// that finishes each, and each stage's share of the backward pass.
#[derive(Clone, Debug, Serialize)]
pub struct NetworkProfile {
    pub names: Vec<String>,
    pub sizes: Vec<usize>,
    pub stage_of: Vec<Option<usize>>,
    /// Multiply-adds of each stage's forward pass per image (backward costs
    /// about twice as much, stage for stage).
    pub stage_macs: Vec<u64>,
}

impl NetworkProfile {
    /// Builds `kind` and runs one blank image through it, stage by stage.
    pub fn measure(kind: ModelKind, image_size: usize, classes: usize) -> anyhow::Result<Self> {
        let cfg = ModelConfig::new(classes, image_size);
        kind.check(&cfg)?;
        let store = ParamStore::new(0);
        let net = kind.build(&cfg, store.var_builder(DType::F32, &Device::Cpu))?;
        let params = store.trainable_sorted();
        let shape = (1, cfg.in_channels, image_size, image_size);
        let stage_of = staged::stage_of_params(net.as_ref(), &params, shape)?;
        let mut x = Tensor::zeros(shape, DType::F32, &Device::Cpu)?;
        let mut stage_macs = Vec::with_capacity(net.stages());
        for i in 0..net.stages() {
            let (out, macs) = count_macs(|| net.forward_stage(i, &x, false));
            x = out?;
            stage_macs.push(macs);
        }
        Ok(Self {
            names: params.iter().map(|(n, _)| n.clone()).collect(),
            sizes: params.iter().map(|(_, v)| v.elem_count()).collect(),
            stage_of,
            stage_macs,
        })
    }

    pub fn parameters(&self) -> usize {
        self.sizes.iter().sum()
    }
}

/// A link fitted to an `allreduce --json` record: time = a + b bytes by
/// least squares over its rows, then, for the ring that the bus bandwidth
/// assumes, alpha = a / 2(p-1) and bandwidth = 2(p-1)/p / b.
pub fn fit_link(path: &Path, flag: &str) -> anyhow::Result<Link> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{flag} {}: cannot read: {e}", path.display()))?;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{flag} {}: not an `allreduce --json` record: {e}", path.display()))?;
    let points: Vec<(f64, f64, f64)> = rows
        .iter()
        .filter_map(|r| Some((r["bytes"].as_f64()?, r["time_us"].as_f64()? * 1e-6, r["ranks"].as_f64()?)))
        .collect();
    anyhow::ensure!(
        points.len() >= 2,
        "{flag} {}: needs at least two sizes (bytes, time_us, ranks per row) to fit latency and bandwidth",
        path.display()
    );
    let p = points[0].2;
    anyhow::ensure!(
        p >= 2.0 && points.iter().all(|q| q.2 == p),
        "{flag} {}: the rows must come from one run of 2 or more ranks",
        path.display()
    );
    let n = points.len() as f64;
    let (mx, my) = (points.iter().map(|q| q.0).sum::<f64>() / n, points.iter().map(|q| q.1).sum::<f64>() / n);
    let sxx: f64 = points.iter().map(|q| (q.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|q| (q.0 - mx) * (q.1 - my)).sum();
    anyhow::ensure!(sxx > 0.0, "{flag} {}: every row has the same size; give a range of sizes", path.display());
    let b = sxy / sxx;
    let a = (my - b * mx).max(0.0);
    anyhow::ensure!(b > 0.0, "{flag} {}: time does not grow with size; cannot fit a bandwidth", path.display());
    Ok(Link {
        name: format!("fitted to {}", path.display()),
        alpha_s: a / (2.0 * (p - 1.0)),
        bandwidth: 2.0 * (p - 1.0) / p / b,
        gamma_s_per_byte: 0.0,
        source: format!(
            "least squares over {} sizes of {} ({p} ranks): {:.1} us + bytes / {:.3} GB/s algbw",
            points.len(),
            path.display(),
            a * 1e6,
            1.0 / b / 1e9
        ),
    })
}
