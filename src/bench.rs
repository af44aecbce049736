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
//! goes on, and the next start tries it again.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::bind::BindMode;
use crate::device::DeviceKind;
use crate::exchange::GradDtype;
use crate::models::ModelKind;

/// Weak scaling keeps the batch per worker; strong keeps the global batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Weak,
    Strong,
}

/// An MPI run of N workers, or the N independent processes of the ceiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    Mpi,
    Ceiling,
}

#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub exe: PathBuf,
    pub models: Vec<ModelKind>,
    pub workers: Vec<usize>,
    pub mode: Mode,
    pub batch_size: usize,
    pub global_batch: Option<usize>,
    pub image_size: Option<usize>,
    pub classes: usize,
    pub steps: usize,
    pub warmup: usize,
    pub repeat: usize,
    pub device: DeviceKind,
    pub grad_dtype: GradDtype,
    pub bind: BindMode,
    pub launcher: String,
    pub hostfile: Option<PathBuf>,
    pub data: String,
    pub ceiling: bool,
    pub run_timeout: Duration,
    pub out: PathBuf,
}

/// One planned run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    pub model: ModelKind,
    pub mode: Mode,
    pub workers: usize,
    pub repeat: usize,
    pub kind: RunKind,
}

impl RunSpec {
    pub fn name(&self) -> String {
        let kind = match self.kind {
            RunKind::Mpi => "",
            RunKind::Ceiling => "-ceiling",
        };
        format!("{}-{:?}{kind}-n{}-r{}", self.model, self.mode, self.workers, self.repeat).to_lowercase()
    }
}

/// What `run.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    #[serde(flatten)]
    pub spec: RunSpec,
    pub ok: bool,
    /// N exceeded the host's cores: ranks shared cores (marked in the report).
    pub oversubscribed: bool,
    pub batch_per_rank: usize,
    pub threads_per_process: Option<usize>,
    pub command: String,
    pub wall_s: f64,
    /// The last lines of stderr of a failed run.
    pub error: Option<String>,
}

impl BenchConfig {
    /// Checks everything a run could only discover later.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.models.is_empty(), "--models: name at least one network");
        anyhow::ensure!(!self.workers.is_empty() && self.workers.iter().all(|&n| n >= 1), "--workers {:?}: give worker counts of 1 or more", self.workers);
        anyhow::ensure!(self.repeat >= 1, "--repeat {}: must be at least 1", self.repeat);
        anyhow::ensure!(self.steps >= 1, "--steps {}: must be at least 1", self.steps);
        anyhow::ensure!(self.batch_size >= 1, "--batch-size {}: must be at least 1", self.batch_size);
        if self.mode == Mode::Strong {
            let g = self.global_batch.ok_or_else(|| anyhow::anyhow!("--mode strong needs --global-batch G (the batch all workers share)"))?;
            if let Some(n) = self.workers.iter().find(|&&n| g % n != 0) {
                anyhow::bail!("--global-batch {g} does not divide by {n} workers (--workers {:?}); use a multiple of every count", self.workers);
            }
        }
        launcher_words(&self.launcher, 1)?;
        let program = self.launcher.split_whitespace().next().unwrap_or_default();
        anyhow::ensure!(
            on_path(program),
            "--launcher '{}': `{program}` is not on PATH; install Open MPI (scripts/setup.sh installs openmpi-bin) or name another launcher",
            self.launcher
        );
        for m in &self.models {
            let size = self.image_size.unwrap_or(m.default_image_size());
            m.check(&crate::models::ModelConfig::new(self.classes, size))?;
        }
        Ok(())
    }

    pub fn plan(&self) -> Vec<RunSpec> {
        let mut runs = vec![];
        for &model in &self.models {
            for &workers in &self.workers {
                for repeat in 0..self.repeat {
                    runs.push(RunSpec { model, mode: self.mode, workers, repeat, kind: RunKind::Mpi });
                    // One worker alone is its own ceiling.
                    if self.ceiling && workers > 1 {
                        runs.push(RunSpec { model, mode: self.mode, workers, repeat, kind: RunKind::Ceiling });
                    }
                }
            }
        }
        runs
    }

    fn batch_per_rank(&self, workers: usize) -> usize {
        match (self.mode, self.global_batch) {
            (Mode::Strong, Some(g)) => g / workers,
            _ => self.batch_size,
        }
    }

    /// The `train` arguments of a training of `ranks` ranks with `batch`
    /// images each, writing into `out`.
    fn train_args(&self, model: ModelKind, batch: usize, ranks: usize, out: &Path) -> Vec<String> {
        let mut a: Vec<String> = vec!["train".into(), "--model".into(), model.to_string()];
        let image_size = self.image_size.unwrap_or(model.default_image_size());
        // Enough synthetic samples that no run runs out of an epoch.
        let per_step = batch * ranks;
        for (flag, value) in [
            ("--device", format!("{:?}", self.device).to_lowercase()),
            ("--data", self.data.clone()),
            ("--synthetic-size", (per_step * (self.warmup + self.steps)).to_string()),
            ("--image-size", image_size.to_string()),
            ("--classes", self.classes.to_string()),
            ("--batch-size", batch.to_string()),
            ("--steps", (self.warmup + self.steps).to_string()),
            ("--warmup-steps", self.warmup.max(1).to_string()),
            ("--grad-dtype", format!("{:?}", self.grad_dtype).to_lowercase()),
            ("--log-every", "1000000".into()),
            ("--out", out.display().to_string()),
        ] {
            a.push(flag.into());
            a.push(value);
        }
        a.push("--overwrite".into());
        a
    }
}

fn on_path(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// The launcher template with {np} filled in, as words.
pub fn launcher_words(template: &str, np: usize) -> anyhow::Result<Vec<String>> {
    anyhow::ensure!(
        template.contains("{np}"),
        "--launcher '{template}': needs the placeholder {{np}} (the number of workers), as in 'mpirun -np {{np}}'"
    );
    let words: Vec<String> = template.split_whitespace().map(|w| w.replace("{np}", &np.to_string())).collect();
    anyhow::ensure!(!words.is_empty(), "--launcher is empty");
    Ok(words)
}

/// Waits for `child` until `deadline`, killing it (and its process group) past it.
fn wait_until(child: &mut Child, deadline: Instant) -> anyhow::Result<bool> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status.success());
        }
        if Instant::now() > deadline {
            // SAFETY: kill(2) on our own child's process group.
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
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

/// Runs one planned run to its end and records it.
pub fn execute(cfg: &BenchConfig, spec: &RunSpec) -> anyhow::Result<RunRecord> {
    let dir = cfg.out.join("runs").join(spec.name());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let cores = crate::threads::host_cores();
    let oversubscribed = spec.workers > cores;
    let start = Instant::now();
    let deadline = start + cfg.run_timeout;
    let exe = cfg.exe.display().to_string();
    let (command, outcome, threads, logs): (String, anyhow::Result<bool>, Option<usize>, Vec<PathBuf>) = match spec.kind {
        RunKind::Mpi => {
            let mut words = launcher_words(&cfg.launcher, spec.workers)?;
            if oversubscribed {
                words.push("--oversubscribe".into());
            }
            if let Some(h) = &cfg.hostfile {
                words.extend(["--hostfile".into(), h.display().to_string()]);
            }
            if cfg.bind != BindMode::None {
                words.extend([exe.clone(), "bind".into(), "--mode".into(), format!("{:?}", cfg.bind).to_lowercase(), "--".into()]);
            }
            words.push(exe.clone());
            words.extend(cfg.train_args(spec.model, cfg.batch_per_rank(spec.workers), spec.workers, &dir));
            let outcome = spawn_logged(&words, &dir, "train").and_then(|mut c| wait_until(&mut c, deadline));
            (words.join(" "), outcome, None, vec![dir.join("train.stderr")])
        }
        RunKind::Ceiling => {
            // Each process gets the cores one rank of an N-worker run would get.
            let threads = (cores / spec.workers).max(1);
            let mut children = vec![];
            let mut commands = vec![];
            let mut outcome = Ok(true);
            for p in 0..spec.workers {
                let sub = dir.join(format!("p{p}"));
                let mut words = vec![exe.clone(), "--threads".into(), threads.to_string()];
                // A training of its own, with the batch of one rank of the N-worker run.
                words.extend(cfg.train_args(spec.model, cfg.batch_per_rank(spec.workers), 1, &sub));
                commands.push(words.join(" "));
                match spawn_logged(&words, &sub, "train") {
                    Ok(c) => children.push(c),
                    Err(e) => outcome = Err(e),
                }
            }
            for mut c in children {
                match wait_until(&mut c, deadline) {
                    Ok(ok) => outcome = outcome.map(|all| all && ok),
                    Err(e) => outcome = Err(e),
                }
            }
            let logs = (0..spec.workers).map(|p| dir.join(format!("p{p}")).join("train.stderr")).collect();
            (commands.join(" & "), outcome, Some(threads), logs)
        }
    };
    let ok = matches!(outcome, Ok(true));
    let error = (!ok).then(|| {
        let mut msg = match &outcome {
            Err(e) => format!("{e}\n"),
            _ => String::new(),
        };
        for log in &logs {
            msg.push_str(&tail(log, 12));
        }
        msg
    });
    let record = RunRecord {
        spec: spec.clone(),
        ok,
        oversubscribed,
        batch_per_rank: cfg.batch_per_rank(spec.workers),
        threads_per_process: threads,
        command,
        wall_s: start.elapsed().as_secs_f64(),
        error,
    };
    crate::output::write_atomic(&dir.join("run.json"), serde_json::to_string_pretty(&record)?.as_bytes())?;
    Ok(record)
}

/// The record of a finished run, if `run.json` says it succeeded.
pub fn recorded_ok(out: &Path, spec: &RunSpec) -> bool {
    let path = out.join("runs").join(spec.name()).join("run.json");
    std::fs::read_to_string(path).ok().and_then(|s| serde_json::from_str::<RunRecord>(&s).ok()).is_some_and(|r| r.ok && &r.spec == spec)
}

/// What the machine is, for the report: written once per sweep as machine.json.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MachineInfo {
    pub host: String,
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub gpus: Vec<String>,
    pub mpi: String,
    pub nccl: String,
    pub numa_nodes: usize,
}

fn first_line_of(program: &str, args: &[&str]) -> Option<String> {
    let o = Command::new(program).args(args).output().ok()?;
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    text.lines().find(|l| !l.trim().is_empty()).map(|l| l.trim().to_string())
}

impl MachineInfo {
    pub fn detect() -> MachineInfo {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|l| l.trim_start_matches([' ', '\t', ':']).to_string()).unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:")).and_then(|l| l.split_whitespace().next()?.parse().ok()).unwrap_or(0.0);
        let gpus = Command::new("nvidia-smi")
            .args(["--query-gpu=name,memory.total", "--format=csv,noheader"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect())
            .unwrap_or_default();
        MachineInfo {
            host: std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string(),
            cpu,
            cores: crate::threads::host_cores(),
            memory_gib: mem_kib / 1024.0 / 1024.0,
            gpus,
            mpi: first_line_of("mpirun", &["--version"]).unwrap_or_else(|| "unknown".into()),
            nccl: if cfg!(feature = "cuda") { "linked at run time (libnccl.so.2)".into() } else { "not in this build (CPU only)".into() },
            numa_nodes: crate::bind::Topology::read(Path::new("/sys")).nodes.len(),
        }
    }
}
