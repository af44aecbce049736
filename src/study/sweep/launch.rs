//! One planned run, carried out and recorded: an MPI run of N workers, or
//! the N independent processes of the host's ceiling, each logged to its
//! own stdout and stderr and killed past the run timeout; run.json last.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::interrupt;
use super::plan::{launcher_words, BenchConfig};
use crate::host::bind::BindMode;
use crate::host::threads;
use crate::record::files::write_atomic;
use crate::record::sweep::{RunKind, RunRecord, RunSpec};

/// Signals the process group `child` leads (mpirun and its ranks, or one
/// ceiling process).
fn signal_group(child: &Child, signal: libc::c_int) {
    // SAFETY: kill(2) on our own child's process group.
    unsafe {
        libc::kill(-(child.id() as i32), signal);
    }
}

/// Waits for `child` until `deadline`, killing it (and its process group)
/// past it; on Ctrl-C or SIGTERM, passes SIGINT to the group, gives it five
/// seconds to end, then kills it.
fn wait_until(child: &mut Child, deadline: Instant) -> anyhow::Result<bool> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status.success());
        }
        if let Some(signal) = interrupt::received() {
            signal_group(child, libc::SIGINT);
            let grace = Instant::now() + Duration::from_secs(5);
            while child.try_wait()?.is_none() && Instant::now() < grace {
                std::thread::sleep(Duration::from_millis(50));
            }
            signal_group(child, libc::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("interrupted by {signal}: the run's processes were stopped");
        }
        if Instant::now() > deadline {
            signal_group(child, libc::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("killed after the run timeout");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn_logged(words: &[String], dir: &Path, log: &str) -> anyhow::Result<Child> {
    std::fs::create_dir_all(dir)?;
    let stdout = std::fs::File::create(dir.join(format!("{log}.stdout")))?;
    let stderr = std::fs::File::create(dir.join(format!("{log}.stderr")))?;
    let mut cmd = Command::new(&words[0]);
    cmd.args(&words[1..]).stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.spawn().map_err(|e| anyhow::anyhow!("cannot start `{}`: {e}", words[0]))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// How a run went: its command line(s), whether every process succeeded,
/// the threads of each ceiling process, and the stderr files to quote.
struct Outcome {
    command: String,
    result: anyhow::Result<bool>,
    threads: Option<usize>,
    logs: Vec<PathBuf>,
}

/// `mpirun -np N [--oversubscribe] [--hostfile F] [candle-mpi bind ...] candle-mpi train ...`.
fn run_mpi(
    cfg: &BenchConfig,
    spec: &RunSpec,
    dir: &Path,
    deadline: Instant,
    oversubscribed: bool,
) -> anyhow::Result<Outcome> {
    let exe = cfg.exe.display().to_string();
    let mut words = launcher_words(&cfg.launcher, spec.workers)?;
    if oversubscribed {
        words.push("--oversubscribe".into());
    }
    if let Some(h) = &cfg.hostfile {
        words.extend(["--hostfile".into(), h.display().to_string()]);
    }
    if cfg.bind != BindMode::None {
        let mode = format!("{:?}", cfg.bind).to_lowercase();
        words.extend([exe.clone(), "bind".into(), "--mode".into(), mode, "--".into()]);
    }
    words.push(exe);
    words.extend(cfg.train_args(spec.model, cfg.batch_per_rank(spec.workers), spec.workers, dir));
    let result = spawn_logged(&words, dir, "train").and_then(|mut c| wait_until(&mut c, deadline));
    Ok(Outcome { command: words.join(" "), result, threads: None, logs: vec![dir.join("train.stderr")] })
}

/// N single-process trainings started together, each with the batch of one
/// rank of the N-worker run and the cores one rank of it would get.
fn run_ceiling(cfg: &BenchConfig, spec: &RunSpec, dir: &Path, deadline: Instant, cores: usize) -> Outcome {
    let exe = cfg.exe.display().to_string();
    let threads = (cores / spec.workers).max(1);
    let mut children = vec![];
    let mut commands = vec![];
    let mut result = Ok(true);
    for p in 0..spec.workers {
        let sub = dir.join(format!("p{p}"));
        let mut words = vec![exe.clone(), "--threads".into(), threads.to_string()];
        words.extend(cfg.train_args(spec.model, cfg.batch_per_rank(spec.workers), 1, &sub));
        commands.push(words.join(" "));
        match spawn_logged(&words, &sub, "train") {
            Ok(c) => children.push(c),
            Err(e) => result = Err(e),
        }
    }
    for mut c in children {
        match wait_until(&mut c, deadline) {
            Ok(ok) => result = result.map(|all| all && ok),
            Err(e) => result = Err(e),
        }
    }
    let logs = (0..spec.workers).map(|p| dir.join(format!("p{p}")).join("train.stderr")).collect();
    Outcome { command: commands.join(" & "), result, threads: Some(threads), logs }
}

/// Runs one planned run to its end and records it.
pub fn execute(cfg: &BenchConfig, spec: &RunSpec) -> anyhow::Result<RunRecord> {
    let dir = cfg.out.join("runs").join(spec.name());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let cores = threads::host_cores();
    // With a hostfile, its slots place the ranks; without, they share this host.
    let oversubscribed = cfg.hostfile.is_none() && spec.workers > cores;
    let start = Instant::now();
    let deadline = start + cfg.run_timeout;
    let outcome = match spec.kind {
        RunKind::Mpi => run_mpi(cfg, spec, &dir, deadline, oversubscribed)?,
        RunKind::Ceiling => run_ceiling(cfg, spec, &dir, deadline, cores),
    };
    let ok = matches!(outcome.result, Ok(true));
    let error = (!ok).then(|| {
        let mut msg = match &outcome.result {
            Err(e) => format!("{e}\n"),
            _ => String::new(),
        };
        for log in &outcome.logs {
            msg.push_str(&tail(log, 12));
        }
        // mpirun reports a rank the kernel killed, which cannot say why itself.
        if msg.contains("signal 9") && !msg.contains("fault injection") {
            msg.push_str(
                "\n(a rank died of SIGKILL with no message of its own: most likely the kernel's out-of-memory killer)",
            );
        }
        msg
    });
    let record = RunRecord {
        spec: spec.clone(),
        ok,
        oversubscribed,
        batch_per_rank: cfg.batch_per_rank(spec.workers),
        threads_per_process: outcome.threads,
        command: outcome.command,
        wall_s: start.elapsed().as_secs_f64(),
        error,
    };
    write_atomic(&dir.join("run.json"), serde_json::to_string_pretty(&record)?.as_bytes())?;
    Ok(record)
}
