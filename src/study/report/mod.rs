//! `candle-mpi report`: from a sweep's records (runs/*/run.json and the
//! trainings' summary.json), per network and worker count: seconds per 5120
//! images split into compute / comm / wait / data, speed-up t1/tN with mean
//! and std over repeats, efficiency against N and against the host's ceiling,
//! the slowest rank's step, memory per rank (`rows.rs`); written as
//! report.md and runs.csv (`markdown.rs`) and the figures of `plots.rs`,
//! with the published reference of `reference.rs` and the performance
//! model's curves of `predicted.rs`.

mod markdown;
pub mod plots;
pub mod predicted;
pub mod reference;
pub mod rows;

use std::path::Path;

use crate::model::ModelKind;
use crate::record::files::write_atomic;
use crate::record::sweep::{MachineInfo, RunKind, RunRecord};

use self::reference::reference_speedups;
use self::rows::{all_rows, RunResult, ScalingRow};

/// Published figures a report can be drawn against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Reference {
    /// Theano-MPI on 8 K80 GPUs with NCCL, fp16 (arXiv 1605.08325)
    TheanoMpi,
}

fn read_json(path: &Path) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", path.display()))
}

fn f(v: &serde_json::Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

fn from_summary(rec: &RunRecord, s: &serde_json::Value) -> RunResult {
    RunResult {
        model: rec.spec.model,
        mode: rec.spec.mode,
        kind: rec.spec.kind,
        workers: rec.spec.workers,
        repeat: rec.spec.repeat,
        oversubscribed: rec.oversubscribed,
        global_batch: s["global_batch"].as_u64().unwrap_or(0) as usize,
        images_per_s: f(s, "images_per_s"),
        step_s_median: f(s, "step_s_median"),
        compute_s: f(s, "compute_s"),
        comm_s: f(s, "comm_s"),
        // Records from before overlap existed: the whole exchange is what the step waited for.
        exchange_s: s["exchange_s"].as_f64().unwrap_or(f(s, "comm_s")),
        wait_s: f(s, "wait_s"),
        data_s: f(s, "data_s"),
        peak_rss_mib: s["peak_rss_mib"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
            .unwrap_or_default(),
        steps: s["steps"].as_u64().unwrap_or(0) as usize,
        seconds: f(s, "seconds"),
    }
}

/// Every successful run under `dir/runs`, and the failed runs' records.
pub fn load(dir: &Path) -> anyhow::Result<(Vec<RunResult>, Vec<RunRecord>)> {
    let runs = dir.join("runs");
    anyhow::ensure!(
        runs.is_dir(),
        "{}: no runs/ folder here; is this the --out directory of `candle-mpi bench`?",
        dir.display()
    );
    let mut entries: Vec<_> = std::fs::read_dir(&runs)?.flatten().map(|e| e.path()).collect();
    entries.sort();
    let (mut results, mut failed) = (vec![], vec![]);
    for run in entries {
        let Ok(text) = std::fs::read_to_string(run.join("run.json")) else {
            continue;
        };
        let rec: RunRecord =
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", run.join("run.json").display()))?;
        if !rec.ok {
            failed.push(rec);
            continue;
        }
        match rec.spec.kind {
            RunKind::Mpi => results.push(from_summary(&rec, &read_json(&run.join("summary.json"))?)),
            RunKind::Ceiling => {
                // N processes: throughput adds up; times are the slowest process's.
                let parts: Vec<RunResult> = (0..rec.spec.workers)
                    .map(|p| read_json(&run.join(format!("p{p}")).join("summary.json")).map(|s| from_summary(&rec, &s)))
                    .collect::<anyhow::Result<_>>()?;
                let max = |g: fn(&RunResult) -> f64| parts.iter().map(g).fold(0.0, f64::max);
                results.push(RunResult {
                    images_per_s: parts.iter().map(|p| p.images_per_s).sum(),
                    global_batch: parts.iter().map(|p| p.global_batch).sum(),
                    step_s_median: max(|p| p.step_s_median),
                    compute_s: max(|p| p.compute_s),
                    data_s: max(|p| p.data_s),
                    peak_rss_mib: parts.iter().flat_map(|p| p.peak_rss_mib.clone()).collect(),
                    ..parts[0].clone()
                });
            }
        }
    }
    Ok((results, failed))
}

/// Reads the sweep in `dir` and writes report.md, runs.csv and the figures
/// into `out`; returns report.md's path.
pub fn write(
    dir: &Path,
    out: &Path,
    reference: bool,
    predict: Option<&predicted::PredictOptions>,
) -> anyhow::Result<std::path::PathBuf> {
    let (results, failed) = load(dir)?;
    anyhow::ensure!(!results.is_empty(), "{}: no finished runs to report ({} failed)", dir.display(), failed.len());
    std::fs::create_dir_all(out)
        .map_err(|e| anyhow::anyhow!("--out {}: cannot create the directory: {e}", out.display()))?;
    let machine: MachineInfo = std::fs::read_to_string(dir.join("machine.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let rows: Vec<((ModelKind, String), Vec<ScalingRow>)> = all_rows(&results).into_iter().collect();
    let reference = reference.then(reference_speedups);
    let where_from = format!(
        "{} ({} cores{})",
        if machine.cpu.is_empty() { "unknown CPU" } else { &machine.cpu },
        machine.cores,
        if machine.gpus.is_empty() { ", no GPU".to_string() } else { format!(", {}", machine.gpus.join("; ")) }
    );
    let curves = match predict {
        Some(opts) => predicted::curves(dir, &rows, opts)?,
        None => vec![],
    };
    let lines: Vec<(String, Vec<(usize, f64)>)> =
        curves.iter().map(|c| (c.label.clone(), c.rows.iter().map(|r| (r.workers, r.speedup)).collect())).collect();
    plots::speedup(&out.join("speedup"), &rows, reference.as_deref(), &lines, &format!("Speed-up, {where_from}"))?;
    plots::breakdown(&out.join("breakdown"), &rows, "Time per 5120 images")?;
    plots::efficiency(&out.join("efficiency"), &rows, "Parallel efficiency")?;
    write_atomic(&out.join("runs.csv"), markdown::runs_csv(&results).as_bytes())?;

    let mut md = markdown::document(&machine, &results, &failed, &rows, reference.as_deref());
    if !curves.is_empty() {
        md.push_str(&predicted::section(&curves, &rows));
    }
    let path = out.join("report.md");
    write_atomic(&path, md.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::markdown::{runs_csv, table};
    use super::reference::reference_speedups;
    use super::rows::{scaling_rows, RunResult};
    use crate::model::ModelKind;
    use crate::record::sweep::{Mode, RunKind};

    fn run(workers: usize, repeat: usize, kind: RunKind, images_per_s: f64) -> RunResult {
        RunResult {
            model: ModelKind::Small,
            mode: Mode::Weak,
            kind,
            workers,
            repeat,
            oversubscribed: workers > 2,
            global_batch: 16 * workers,
            images_per_s,
            step_s_median: 16.0 * workers as f64 / images_per_s,
            compute_s: 0.5,
            comm_s: 0.25,
            exchange_s: 0.25,
            wait_s: 0.125,
            data_s: 0.0,
            peak_rss_mib: vec![100.0; workers],
            steps: 10,
            seconds: 9.0 * 16.0 * workers as f64 / images_per_s,
        }
    }

    #[test]
    fn speedup_efficiency_and_ceiling_by_hand() {
        // t1 = 5120/512 = 10 s and 5120/256 = 20 s: mean 15 s. 2 workers: 5 s and 7.5 s.
        let results = vec![
            run(1, 0, RunKind::Mpi, 512.0),
            run(1, 1, RunKind::Mpi, 256.0),
            run(2, 0, RunKind::Mpi, 1024.0),
            run(2, 1, RunKind::Mpi, 5120.0 / 7.5),
            run(2, 0, RunKind::Ceiling, 576.0),
            run(2, 1, RunKind::Ceiling, 576.0),
        ];
        let rows = scaling_rows(&results, ModelKind::Small, Mode::Weak);
        assert_eq!(rows.len(), 2);
        let (one, two) = (&rows[0], &rows[1]);
        assert!((one.s_per_5120.mean - 15.0).abs() < 1e-9);
        assert!((one.s_per_5120.std - 7.0710678118654755).abs() < 1e-9);
        assert!((two.speedup.mean - 2.5).abs() < 1e-9, "15/5 = 3 and 15/7.5 = 2: mean 2.5");
        assert!((two.speedup.std - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-9);
        assert!((two.efficiency - 1.25).abs() < 1e-9);
        // Ceiling: 576 img/s against the mean 1-worker rate of 384: 1.5x.
        assert!((two.ceiling_speedup.unwrap() - 1.5).abs() < 1e-9);
        assert!((two.efficiency_vs_ceiling.unwrap() - 2.5 / 1.5).abs() < 1e-9);
        // Parts per 5120 images: 0.25 s comm per step of 32 images -> 40 s.
        assert!((two.comm - 40.0).abs() < 1e-9 && (two.compute - 80.0).abs() < 1e-9);
        assert_eq!((two.rss_per_rank_mib, two.rss_total_mib), (100.0, 200.0));
        assert_eq!(one.ceiling_speedup, Some(1.0));
    }

    #[test]
    fn no_one_worker_run_means_no_speedup() {
        let rows = scaling_rows(&[run(2, 0, RunKind::Mpi, 100.0)], ModelKind::Small, Mode::Weak);
        assert_eq!(rows[0].speedup.n, 0);
        assert!(rows[0].ceiling_speedup.is_none() && table(&rows).contains("| - |"));
    }

    #[test]
    fn reference_speedups_match_the_design_table() {
        let r = reference_speedups();
        assert_eq!(r[0].0, "AlexNet b128");
        assert!((r[0].1[3] - 6.33).abs() < 0.01, "{:?}", r[0]);
        assert!((r[4].1[3] - 7.89).abs() < 0.01, "{:?}", r[4]);
    }

    #[test]
    fn csv_starts_with_the_seed_columns() {
        let csv = runs_csv(&[run(2, 0, RunKind::Mpi, 1024.0)]);
        assert!(csv.starts_with("type,process,size_dataset,num_epochs,tot_time,iter_time,"));
        let row: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
        assert_eq!((row[0], row[1], row[2]), ("mpi", "2", "288"));
    }
}
