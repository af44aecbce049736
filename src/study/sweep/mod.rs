//! The speed-up sweep: for each network, worker count and repeat, one
//! `mpirun -np N candle-mpi train ...` run, and beside it the host's ceiling:
//! N independent single-process trainings started together (no exchange),
//! whose summed throughput is what the host could give N workers if
//! communication were free.
//!
//! Each run lives in `OUT/runs/<name>/`: the training's own records, its
//! stdout and stderr, and `run.json`, written last. A run with an ok
//! `run.json` is skipped when the sweep is started again, so an interrupted
//! sweep resumes; a failed run is recorded (with its stderr tail), the sweep
//! goes on, and the next start tries it again. `plan.rs` holds what a sweep
//! is asked to do and the runs it makes of it, `launch.rs` how one run is
//! carried out.

mod interrupt;
mod launch;
mod plan;

use std::path::Path;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::host::machine;
use crate::record::files::{check_writable_dir, write_atomic};
use crate::record::human::duration;
use crate::record::sweep::{RunRecord, RunSpec};

pub use self::launch::execute;
pub use self::plan::{launcher_words, BenchConfig};

/// The record of a finished run, if `run.json` says it succeeded.
pub fn recorded_ok(out: &Path, spec: &RunSpec) -> bool {
    let path = out.join("runs").join(spec.name()).join("run.json");
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| serde_json::from_str::<RunRecord>(&s).ok())
        .is_some_and(|r| r.ok && &r.spec == spec)
}

/// The sweep as `candle-mpi bench` runs it: checks, records the machine,
/// runs what is not yet recorded as done (a bar on a terminal, a line per
/// run), and fails at the end if any run failed.
pub fn run(cfg: &BenchConfig) -> anyhow::Result<()> {
    cfg.validate()?;
    std::fs::create_dir_all(&cfg.out)
        .map_err(|e| anyhow::anyhow!("--out {}: cannot create the directory: {e}", cfg.out.display()))?;
    check_writable_dir(&cfg.out, "--out")?;
    if cfg.fresh {
        let _ = std::fs::remove_dir_all(cfg.out.join("runs"));
    }
    check_settings(cfg)?;
    interrupt::install();
    let machine = machine::detect();
    write_atomic(&cfg.out.join("machine.json"), serde_json::to_string_pretty(&machine)?.as_bytes())?;
    let plan = cfg.plan();
    let todo: Vec<&RunSpec> = plan.iter().filter(|s| !recorded_ok(&cfg.out, s)).collect();
    println!(
        "sweep of {} run(s) on {} ({} cores) into {}: {} already recorded, {} to run",
        plan.len(),
        machine.host,
        machine.cores,
        cfg.out.display(),
        plan.len() - todo.len(),
        todo.len()
    );
    if cfg.workers.iter().any(|&n| n > machine.cores) {
        println!("note: runs of more workers than the host's {} cores are oversubscribed (marked in the records); they cannot speed up", machine.cores);
    }
    let on_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = ProgressBar::new(todo.len() as u64);
    if on_terminal {
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} runs  {elapsed_precise} elapsed, eta {eta}  {msg}")
                .expect("valid template"),
        );
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let start = Instant::now();
    let mut failed = 0;
    for spec in &todo {
        bar.set_message(spec.name());
        let rec = execute(cfg, spec)?;
        if let Some(signal) = interrupt::received() {
            bar.finish_and_clear();
            anyhow::bail!(
                "interrupted by {signal} during {}, recorded as interrupted; the runs before it are kept, and the same command resumes",
                spec.name()
            );
        }
        let line = if rec.ok {
            format!("{:<40} done in {:.1} s", spec.name(), rec.wall_s)
        } else {
            failed += 1;
            format!(
                "{:<40} FAILED after {:.1} s: {}",
                spec.name(),
                rec.wall_s,
                rec.error.as_deref().unwrap_or("").lines().last().unwrap_or("")
            )
        };
        bar.println(&line);
        if !on_terminal {
            println!("{line}");
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!(
        "sweep done: {} run(s) in {}, {failed} failed; records in {}. Next: candle-mpi report {}",
        todo.len(),
        duration(start.elapsed().as_secs_f64()),
        cfg.out.display(),
        cfg.out.display()
    );
    anyhow::ensure!(
        failed == 0,
        "{failed} run(s) failed (see above and runs/*/run.json); the others are recorded, and running the same command again retries only the failed ones"
    );
    Ok(())
}

/// What sweep.json says the runs under `out` were made with, against this
/// sweep's settings: recorded runs are resumed only when every setting that
/// shapes them is the same; otherwise the sweep is refused, naming the
/// differences. A first sweep writes the file.
fn check_settings(cfg: &BenchConfig) -> anyhow::Result<()> {
    let path = cfg.out.join("sweep.json");
    let mine: serde_json::Map<String, serde_json::Value> =
        cfg.settings().into_iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v))).collect();
    let has_runs = std::fs::read_dir(cfg.out.join("runs")).is_ok_and(|mut d| d.next().is_some());
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let theirs: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: not a sweep's settings: {e}", path.display()))?;
            let differ: Vec<String> = mine
                .iter()
                .filter(|(k, v)| theirs.get(*k) != Some(v))
                .map(|(k, v)| format!("{k} {} -> {}", theirs.get(k).and_then(|t| t.as_str()).unwrap_or("(none)"), v.as_str().unwrap_or("")))
                .collect();
            anyhow::ensure!(
                differ.is_empty() || !has_runs,
                "--out {}: holds runs of a sweep with other settings ({}); choose another --out, or pass --fresh to replace them",
                cfg.out.display(),
                differ.join(", ")
            );
        }
        Err(_) if has_runs => anyhow::bail!(
            "--out {}: holds runs of a sweep that recorded no settings (no sweep.json); choose another --out, or pass --fresh to replace them",
            cfg.out.display()
        ),
        Err(_) => {}
    }
    write_atomic(&path, serde_json::to_string_pretty(&mine)?.as_bytes())
}
