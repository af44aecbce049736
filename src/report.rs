//! `candle-mpi report`: from a sweep's records (runs/*/run.json and the
//! trainings' summary.json), per network and worker count: seconds per 5120
//! images split into compute / comm / wait / data, speed-up t1/tN with mean
//! and std over repeats, efficiency against N and against the host's ceiling,
//! the slowest rank's step, memory per rank; written as report.md, runs.csv
//! and the figures of `plots.rs`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::bench::{MachineInfo, Mode, RunKind, RunRecord};
use crate::models::ModelKind;
use crate::record::{mean, std_dev};

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
    pub comm_s: f64,
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
    fn per_5120(&self, step_part: f64) -> f64 {
        step_part * 5120.0 / self.global_batch as f64
    }
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
        wait_s: f(s, "wait_s"),
        data_s: f(s, "data_s"),
        peak_rss_mib: s["peak_rss_mib"].as_array().map(|a| a.iter().filter_map(|v| v.as_f64()).collect()).unwrap_or_default(),
        steps: s["steps"].as_u64().unwrap_or(0) as usize,
        seconds: f(s, "seconds"),
    }
}

/// Every successful run under `dir/runs`, and the failed runs' records.
pub fn load(dir: &Path) -> anyhow::Result<(Vec<RunResult>, Vec<RunRecord>)> {
    let runs = dir.join("runs");
    anyhow::ensure!(runs.is_dir(), "{}: no runs/ folder here; is this the --out directory of `candle-mpi bench`?", dir.display());
    let mut entries: Vec<_> = std::fs::read_dir(&runs)?.flatten().map(|e| e.path()).collect();
    entries.sort();
    let (mut results, mut failed) = (vec![], vec![]);
    for run in entries {
        let Ok(text) = std::fs::read_to_string(run.join("run.json")) else { continue };
        let rec: RunRecord = serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", run.join("run.json").display()))?;
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

/// Mean and sample standard deviation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Stat {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

impl Stat {
    pub fn of(values: &[f64]) -> Stat {
        Stat { mean: mean(values), std: std_dev(values), n: values.len() }
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
    let base_rate = (!base.is_empty()).then(|| mean(&of(RunKind::Mpi, 1).iter().map(|r| r.images_per_s).collect::<Vec<_>>()));
    let mut counts: Vec<usize> = results.iter().filter(|r| r.model == model && r.mode == mode && r.kind == RunKind::Mpi).map(|r| r.workers).collect();
    counts.sort_unstable();
    counts.dedup();
    counts
        .into_iter()
        .map(|n| {
            let runs = of(RunKind::Mpi, n);
            let times: Vec<f64> = runs.iter().map(|r| r.s_per_5120()).collect();
            let part = |g: fn(&RunResult) -> f64| mean(&runs.iter().map(|r| r.per_5120(g(r))).collect::<Vec<_>>());
            let speedup = Stat::of(&t1.map(|t1| times.iter().map(|t| t1 / t).collect::<Vec<_>>()).unwrap_or_default());
            let ceiling_rate: Vec<f64> = if n == 1 { vec![] } else { of(RunKind::Ceiling, n).iter().map(|r| r.images_per_s).collect() };
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

/// Theano-MPI on 8 K80s with NCCL (fp16 branch), seconds per 5120 images as
/// training + communication at 1 / 2 / 4 / 8 GPUs (shared/design.md).
pub const THEANO_MPI_K80: [(&str, [(f64, f64); 4]); 5] = [
    ("AlexNet b128", [(20.50, 0.0), (10.35, 0.78), (5.13, 0.54), (2.63, 0.61)]),
    ("GoogLeNet b32", [(63.89, 0.0), (31.40, 1.00), (15.51, 0.71), (7.69, 0.80)]),
    ("VGG16 b16", [(358.29, 0.0), (176.08, 13.90), (90.44, 9.28), (55.12, 12.59)]),
    ("VGG16 b32", [(343.37, 0.0), (169.12, 7.14), (86.97, 4.80), (43.29, 5.41)]),
    ("ResNet50 b64", [(163.15, 0.0), (80.09, 0.81), (40.25, 0.56), (20.12, 0.56)]),
];

/// The reference's speed-ups at 1, 2, 4, 8 GPUs.
pub fn reference_speedups() -> Vec<(&'static str, [f64; 4])> {
    THEANO_MPI_K80
        .iter()
        .map(|(name, t)| {
            let t1 = t[0].0 + t[0].1;
            (*name, [t1 / (t[0].0 + t[0].1), t1 / (t[1].0 + t[1].1), t1 / (t[2].0 + t[2].1), t1 / (t[3].0 + t[3].1)])
        })
        .collect()
}

/// runs.csv: the columns of the seed's timing analysis, then ours.
pub fn runs_csv(results: &[RunResult]) -> String {
    let mut out = String::from(
        "type,process,size_dataset,num_epochs,tot_time,iter_time,model,mode,repeat,oversubscribed,global_batch,images_per_s,s_per_5120_images,compute_s,comm_s,wait_s,data_s,peak_rss_mib_max\n",
    );
    for r in results {
        let kind = match r.kind {
            RunKind::Mpi => "mpi",
            RunKind::Ceiling => "ceiling",
        };
        // size_dataset: images the timed steps saw; one pass over them is one epoch.
        let timed_steps = r.seconds / r.step_s_median.max(1e-12);
        out.push_str(&format!(
            "{kind},{},{:.0},1,{:.6},{:.6},{},{:?},{},{},{},{:.3},{:.4},{:.6},{:.6},{:.6},{:.6},{:.1}\n",
            r.workers,
            timed_steps * r.global_batch as f64,
            r.seconds,
            r.step_s_median,
            r.model,
            r.mode,
            r.repeat,
            r.oversubscribed,
            r.global_batch,
            r.images_per_s,
            r.s_per_5120(),
            r.compute_s,
            r.comm_s,
            r.wait_s,
            r.data_s,
            r.peak_rss_mib.iter().fold(0.0f64, |a, b| a.max(*b)),
        ));
    }
    out.to_lowercase()
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// The markdown table of one network.
pub fn table(rows: &[ScalingRow]) -> String {
    let mut t = String::from(
        "| workers | s / 5120 images | compute | comm | wait | data | speed-up | efficiency | host ceiling | eff. vs ceiling | slowest rank's step | RSS / rank | RSS total |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        t.push_str(&format!(
            "| {}{} | {:.2} ± {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} ± {:.2} | {:.0}% | {} | {} | {} | {:.0} MiB | {:.0} MiB |\n",
            r.workers,
            if r.oversubscribed { "*" } else { "" },
            r.s_per_5120.mean,
            r.s_per_5120.std,
            r.compute,
            r.comm,
            r.wait,
            r.data,
            r.speedup.mean,
            r.speedup.std,
            100.0 * r.efficiency,
            opt(r.ceiling_speedup, 2),
            r.efficiency_vs_ceiling.map_or("-".into(), |e| format!("{:.0}%", 100.0 * e)),
            crate::report_table::duration(r.slowest_step_s),
            r.rss_per_rank_mib,
            r.rss_total_mib,
        ));
    }
    t
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

pub fn machine_section(m: &MachineInfo) -> String {
    format!(
        "| | |\n|---|---|\n| host | {} |\n| CPU | {} |\n| cores | {} |\n| NUMA nodes | {} |\n| memory | {:.1} GiB |\n| GPUs | {} |\n| MPI | {} |\n| NCCL | {} |\n",
        m.host,
        m.cpu,
        m.cores,
        m.numa_nodes,
        m.memory_gib,
        if m.gpus.is_empty() { "none".to_string() } else { m.gpus.join("; ") },
        m.mpi,
        m.nccl
    )
}

/// Reads the sweep in `dir` and writes report.md, runs.csv and the figures
/// into `out`; returns report.md's path.
pub fn write(dir: &Path, out: &Path, reference: bool) -> anyhow::Result<std::path::PathBuf> {
    let (results, failed) = load(dir)?;
    anyhow::ensure!(!results.is_empty(), "{}: no finished runs to report ({} failed)", dir.display(), failed.len());
    std::fs::create_dir_all(out).map_err(|e| anyhow::anyhow!("--out {}: cannot create the directory: {e}", out.display()))?;
    let machine: MachineInfo = std::fs::read_to_string(dir.join("machine.json")).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    let rows: Vec<((ModelKind, String), Vec<ScalingRow>)> = all_rows(&results).into_iter().collect();
    let reference = reference.then(reference_speedups);
    let where_from = format!("{} ({} cores{})", if machine.cpu.is_empty() { "unknown CPU" } else { &machine.cpu }, machine.cores,
        if machine.gpus.is_empty() { ", no GPU".to_string() } else { format!(", {}", machine.gpus.join("; ")) });
    crate::plots::speedup(&out.join("speedup"), &rows, reference.as_deref(), &format!("Speed-up, {where_from}"))?;
    crate::plots::breakdown(&out.join("breakdown"), &rows, "Time per 5120 images")?;
    crate::plots::efficiency(&out.join("efficiency"), &rows, "Parallel efficiency")?;
    crate::output::write_atomic(&out.join("runs.csv"), runs_csv(&results).as_bytes())?;

    let mut md = String::from("# Speed-up report

## Machine

");
    md.push_str(&machine_section(&machine));
    let oversubscribed = results.iter().any(|r| r.oversubscribed);
    md.push_str(&format!(
        "
{} runs ({} failed). Times are seconds per 5120 images (the unit of Theano-MPI's tables); compute / comm / wait / data are \
         per-step medians (mean over ranks) scaled to 5120 images; the step is the slowest rank's; speed-up is t1/tN per repeat, mean ± std. \
         The host ceiling is N independent single-process trainings started together, each with the batch and cores of one rank: \
         their summed throughput over one worker's is the most N workers could reach on this host with free communication.\n",
        results.len() + failed.len(),
        failed.len()
    ));
    if oversubscribed {
        md.push_str(&format!(
            "
**\\* oversubscribed**: more ranks than the host's {} cores; ranks share cores and no speed-up is possible beyond the cores. \
             These rows are kept to show the cost of sharing, not as scaling results.\n",
            machine.cores
        ));
    }
    md.push_str("
![speed-up](speedup.png)

![time per 5120 images](breakdown.png)

![efficiency](efficiency.png)
");
    for ((model, mode), table_rows) in &rows {
        md.push_str(&format!("
## {model}, {mode} scaling

"));
        if let Some(r) = results.iter().find(|r| r.model == *model && format!("{:?}", r.mode).to_lowercase() == *mode && r.kind == RunKind::Mpi) {
            md.push_str(&format!("Global batch at {} worker(s): {}.\n\n", r.workers, r.global_batch));
        }
        md.push_str(&table(table_rows));
    }
    if let Some(refs) = &reference {
        md.push_str("
## Reference: Theano-MPI on 8 K80 GPUs (NCCL, fp16)

Seconds per 5120 images, training + communication, from shared/design.md; speed-ups derived from them.

| model | 1 | 2 | 4 | 8 | speed-up at 2 / 4 / 8 |
|---|---|---|---|---|---|
");
        for ((name, t), (_, s)) in THEANO_MPI_K80.iter().zip(refs) {
            let cell = |(a, b): (f64, f64)| if b > 0.0 { format!("{a:.2}+{b:.2}") } else { format!("{a:.2}") };
            md.push_str(&format!("| {name} | {} | {} | {} | {} | {:.2} / {:.2} / {:.2} |
", cell(t[0]), cell(t[1]), cell(t[2]), cell(t[3]), s[1], s[2], s[3]));
        }
    }
    if !failed.is_empty() {
        md.push_str("
## Failed runs

");
        for f in &failed {
            md.push_str(&format!("- `{}`: {}
", f.spec.name(), f.error.as_deref().unwrap_or("").lines().last().unwrap_or("no message")));
        }
    }
    let path = out.join("report.md");
    crate::output::write_atomic(&path, md.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!((two.speedup.std - 0.7071067811865476).abs() < 1e-9);
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
