//! `candle-mpi predict`: step time, images/s, speed-up and efficiency of N
//! workers, from what one worker and one all-reduce measure (`inputs.rs`),
//! the collectives' alpha-beta model (`collective.rs`) on named or fitted
//! links (`presets.rs`), and the exchange's own bucket plan. The derivation,
//! its assumptions and where it is wrong: docs/scaling-model.md.
//!
//! A step of N workers is compute + data + exposed exchange + wait:
//! - compute and data are one worker's (weak scaling: each worker keeps its batch);
//! - the exchange is the bucket plan's all-reduces, each costing the
//!   model's time for its bytes plus its share of the pack and unpack one
//!   worker measured. Without overlap every bucket is exposed. With it,
//!   buckets come in the order backward finishes them (last stage first, a
//!   1 MiB first bucket), each starts when its last stage's backward is done
//!   and the bucket before it has gone, and only what ends after backward is
//!   exposed; backward is `backward_share` of compute, shared out among the
//!   stages by their multiply-adds;
//! - the wait for the slowest of N workers whose steps vary by sigma is
//!   sigma sqrt(2 ln N) (the expected maximum of N normal draws, to first order).

pub mod collective;
pub mod inputs;
pub mod presets;
pub mod request;

use serde::Serialize;

use self::collective::{all_reduce, Algorithm, Topology};
use self::inputs::{NetworkProfile, WorkerStep};
use crate::comm::GradDtype;
use crate::exchange::plan::bucket_lens;
use crate::exchange::plan_for;

/// Everything a prediction is asked for.
#[derive(Clone, Debug, Serialize)]
pub struct PredictConfig {
    pub network: NetworkProfile,
    pub worker: WorkerStep,
    pub grad_dtype: GradDtype,
    pub bucket_bytes: usize,
    pub overlap: bool,
    /// Backward's part of compute (forward about a third, the update little).
    pub backward_share: f64,
    pub topology: Topology,
    pub algorithm: Algorithm,
    pub workers: Vec<usize>,
}

/// One worker count's prediction.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PredictedRow {
    pub workers: usize,
    pub hosts: usize,
    pub compute_s: f64,
    pub data_s: f64,
    /// The exchange the step waits for, and all of it.
    pub comm_s: f64,
    pub exchange_s: f64,
    pub wait_s: f64,
    pub step_s: f64,
    pub images_per_s: f64,
    pub speedup: f64,
    pub efficiency: f64,
}

/// The buckets of a plan: bytes each, and the stage after which each is complete.
fn buckets(cfg: &PredictConfig) -> (Vec<usize>, Vec<usize>) {
    let net = &cfg.network;
    let names: Vec<&str> = net.names.iter().map(String::as_str).collect();
    let stages = cfg.overlap.then_some(net.stage_of.as_slice());
    let plan = plan_for(&names, &net.sizes, cfg.bucket_bytes, cfg.grad_dtype, stages);
    let bytes: Vec<usize> = bucket_lens(&plan.buckets).iter().map(|l| l * cfg.grad_dtype.size()).collect();
    // After backward every bucket waits for the whole of it: stage 0.
    let ready = if cfg.overlap { plan.ready } else { vec![0; bytes.len()] };
    (bytes, ready)
}

/// When backward has finished each stage, from its start (backward runs the
/// last stage first; each stage takes its share of the multiply-adds).
fn stage_done_at(macs: &[u64], backward_s: f64) -> Vec<f64> {
    let total: u64 = macs.iter().sum::<u64>().max(1);
    let mut done = vec![0.0; macs.len()];
    let mut t = 0.0;
    for s in (0..macs.len()).rev() {
        t += backward_s * macs[s] as f64 / total as f64;
        done[s] = t;
    }
    done
}

/// Seconds of the exchange the step waits for, and of all of it, at `n` workers.
fn exchange_at(cfg: &PredictConfig, n: usize, bytes: &[usize], ready: &[usize], done: &[f64]) -> (f64, f64) {
    let total_bytes = bytes.iter().sum::<usize>().max(1) as f64;
    let backward_s = cfg.worker.compute_s * cfg.backward_share;
    let (mut end, mut busy) = (0.0f64, 0.0);
    for (&b, &stage) in bytes.iter().zip(ready) {
        let t = all_reduce(b as f64, n, &cfg.topology, cfg.algorithm) + cfg.worker.local_s * b as f64 / total_bytes;
        let start = if cfg.overlap { end.max(done[stage]) } else { end };
        end = start + t;
        busy += t;
    }
    // Overlapped, the exchange ran from the start of backward; after it, from its end.
    let comm = if cfg.overlap { (end - backward_s).max(0.0) } else { end };
    (comm, busy)
}

/// Predicts every worker count of `cfg`; speed-up is against the same
/// settings' predicted single worker.
pub fn predict(cfg: &PredictConfig) -> Vec<PredictedRow> {
    let (bytes, ready) = buckets(cfg);
    let w = &cfg.worker;
    let done = stage_done_at(&cfg.network.stage_macs, w.compute_s * cfg.backward_share);
    let step_at = |n: usize| {
        let (comm_s, exchange_s) = exchange_at(cfg, n, &bytes, &ready, &done);
        let wait_s = if n > 1 { w.std_s * (2.0 * (n as f64).ln()).sqrt() } else { 0.0 };
        (comm_s, exchange_s, wait_s, w.compute_s + w.data_s + comm_s + wait_s)
    };
    let one_step = step_at(1).3;
    cfg.workers
        .iter()
        .map(|&n| {
            let (comm_s, exchange_s, wait_s, step_s) = step_at(n);
            let speedup = n as f64 * one_step / step_s;
            PredictedRow {
                workers: n,
                hosts: n.div_ceil(cfg.topology.per_host.max(1)),
                compute_s: w.compute_s,
                data_s: w.data_s,
                comm_s,
                exchange_s,
                wait_s,
                step_s,
                images_per_s: (n * w.batch) as f64 / step_s,
                speedup,
                efficiency: speedup / n as f64,
            }
        })
        .collect()
}

/// The inputs, as the table prints them above the rows.
pub fn describe(cfg: &PredictConfig) -> String {
    let net = &cfg.network;
    let (bytes, _) = buckets(cfg);
    let t = &cfg.topology;
    let w = &cfg.worker;
    let link = |l: &collective::Link| {
        format!("{} ({:.3} GB/s, {:.1} us; {})", l.name, l.bandwidth / 1e9, l.alpha_s * 1e6, l.source)
    };
    format!(
        "inputs:\n  one worker: compute {:.4} s, data {:.4} s, pack/unpack {:.4} s, std {:.4} s, batch {} ({})\n  \
         gradients: {} parameters in {}, {:.1} MB in {} bucket(s) of up to {:.1} MiB{}\n  \
         algorithm: {:?}, {} worker(s) per host\n  inside a host: {}\n  between hosts: {}\n  \
         backward: {:.0}% of compute, over {} stage(s) by multiply-adds\n",
        w.compute_s,
        w.data_s,
        w.local_s,
        w.std_s,
        w.batch,
        w.source,
        net.parameters(),
        cfg.grad_dtype.name(),
        bytes.iter().sum::<usize>() as f64 / 1e6,
        bytes.len(),
        cfg.bucket_bytes as f64 / (1 << 20) as f64,
        if cfg.overlap { ", overlapped with backward (first bucket 1 MiB)" } else { ", after backward" },
        cfg.algorithm,
        t.per_host,
        link(&t.inside),
        link(&t.between),
        100.0 * cfg.backward_share,
        net.stage_macs.len(),
    )
}

/// The rows as a table.
pub fn table(rows: &[PredictedRow]) -> String {
    let mut out = String::from(
        "| workers | hosts | compute s | data s | comm s (exposed) | exchange s (all) | wait s | step s | images/s | speed-up | efficiency |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.1} | {:.2} | {:.0}% |\n",
            r.workers,
            r.hosts,
            r.compute_s,
            r.data_s,
            r.comm_s,
            r.exchange_s,
            r.wait_s,
            r.step_s,
            r.images_per_s,
            r.speedup,
            100.0 * r.efficiency
        ));
    }
    out
}
