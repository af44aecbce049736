//! report.md and runs.csv, rendered from the rows: the machine, how to read
//! the figures, one table per network and mode, the reference, the runs
//! that failed.

use super::reference::THEANO_MPI_K80;
use super::rows::{RunResult, ScalingRow, Series};
use crate::record::human::duration;
use crate::record::sweep::{MachineInfo, RunKind, RunRecord};

/// The whole of report.md.
pub fn document(
    machine: &MachineInfo,
    results: &[RunResult],
    failed: &[RunRecord],
    rows: &Series,
    reference: Option<&[(&str, [f64; 4])]>,
) -> String {
    let mut md = intro(machine, results, failed);
    md.push_str(&figures_and_tables(results, rows));
    if let Some(refs) = reference {
        md.push_str(&reference_section(refs));
    }
    md.push_str(&failed_section(failed));
    md
}

/// The machine, the reading of the figures, oversubscription.
fn intro(machine: &MachineInfo, results: &[RunResult], failed: &[RunRecord]) -> String {
    let mut md = String::from(
        "# Speed-up report

## Machine

",
    );
    md.push_str(&machine_section(machine));
    let oversubscribed = results.iter().any(|r| r.oversubscribed);
    md.push_str(&format!(
        "
{} runs ({} failed). Times are seconds per 5120 images (the unit of Theano-MPI's tables); compute / comm / wait / data are \
         per-step medians (mean over ranks) scaled to 5120 images; the step is the slowest rank's; speed-up is t1/tN per repeat, mean ± std. \
         comm is the part of the gradient exchange the step waited for, exchange all of it (the same unless \
         the sweep ran with --overlap, where the rest was hidden behind backward). \
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
    md
}

/// The three figures, then one table per network and mode.
fn figures_and_tables(results: &[RunResult], rows: &Series) -> String {
    let mut md = String::new();
    md.push_str(
        "
![speed-up](speedup.png)

![time per 5120 images](breakdown.png)

![efficiency](efficiency.png)
",
    );
    for ((model, mode), table_rows) in rows {
        md.push_str(&format!(
            "
## {model}, {mode} scaling

"
        ));
        if let Some(r) = results
            .iter()
            .find(|r| r.model == *model && format!("{:?}", r.mode).to_lowercase() == *mode && r.kind == RunKind::Mpi)
        {
            md.push_str(&format!("Global batch at {} worker(s): {}.\n\n", r.workers, r.global_batch));
        }
        md.push_str(&table(table_rows));
    }
    md
}

/// The published reference the speed-up figure was drawn against.
fn reference_section(refs: &[(&str, [f64; 4])]) -> String {
    let mut md = String::new();
    md.push_str(
        "
## Reference: Theano-MPI on 8 K80 GPUs (NCCL, fp16)

Seconds per 5120 images, training + communication, from shared/design.md; speed-ups derived from them.

| model | 1 | 2 | 4 | 8 | speed-up at 2 / 4 / 8 |
|---|---|---|---|---|---|
",
    );
    for ((name, t), (_, s)) in THEANO_MPI_K80.iter().zip(refs) {
        let cell = |(a, b): (f64, f64)| {
            if b > 0.0 {
                format!("{a:.2}+{b:.2}")
            } else {
                format!("{a:.2}")
            }
        };
        md.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {:.2} / {:.2} / {:.2} |
",
            cell(t[0]),
            cell(t[1]),
            cell(t[2]),
            cell(t[3]),
            s[1],
            s[2],
            s[3]
        ));
    }
    md
}

/// The runs that failed, each with the last line of its error.
fn failed_section(failed: &[RunRecord]) -> String {
    let mut md = String::new();
    if !failed.is_empty() {
        md.push_str(
            "
## Failed runs

",
        );
        for f in failed {
            md.push_str(&format!(
                "- `{}`: {}
",
                f.spec.name(),
                f.error.as_deref().unwrap_or("").lines().last().unwrap_or("no message")
            ));
        }
    }
    md
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
        "| workers | s / 5120 images | compute | comm | exchange | wait | data | speed-up | efficiency | host ceiling | eff. vs ceiling | slowest rank's step | RSS / rank | RSS total |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        t.push_str(&format!(
            "| {}{} | {:.2} ± {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} ± {:.2} | {:.0}% | {} | {} | {} | {:.0} MiB | {:.0} MiB |\n",
            r.workers,
            if r.oversubscribed { "*" } else { "" },
            r.s_per_5120.mean,
            r.s_per_5120.std,
            r.compute,
            r.comm,
            r.exchange,
            r.wait,
            r.data,
            r.speedup.mean,
            r.speedup.std,
            100.0 * r.efficiency,
            opt(r.ceiling_speedup, 2),
            r.efficiency_vs_ceiling.map_or("-".into(), |e| format!("{:.0}%", 100.0 * e)),
            duration(r.slowest_step_s),
            r.rss_per_rank_mib,
            r.rss_total_mib,
        ));
    }
    t
}
