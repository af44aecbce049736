//! What a sweep is asked to do, checked, and the runs it makes of it: each
//! network, worker count and repeat, with its host ceiling beside it, and
//! the `train` command line of each.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::comm::GradDtype;
use crate::host::bind::BindMode;
use crate::host::device::DeviceKind;
use crate::model::{ModelConfig, ModelKind};
use crate::record::sweep::{Mode, RunKind, RunSpec};
use crate::train::Overlap;

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
    /// Each run's `train --overlap`.
    pub overlap: Overlap,
    pub bind: BindMode,
    pub launcher: String,
    pub hostfile: Option<PathBuf>,
    pub data: String,
    pub ceiling: bool,
    pub run_timeout: Duration,
    pub out: PathBuf,
    /// Replace what an earlier sweep recorded in `out` instead of resuming it.
    pub fresh: bool,
}

impl BenchConfig {
    /// Checks everything a run could only discover later.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.models.is_empty(), "--models: name at least one network");
        anyhow::ensure!(
            !self.workers.is_empty() && self.workers.iter().all(|&n| n >= 1),
            "--workers {:?}: give worker counts of 1 or more",
            self.workers
        );
        anyhow::ensure!(
            self.run_timeout > Duration::ZERO,
            "--run-timeout 0: give seconds above 0 (every run would be killed)"
        );
        anyhow::ensure!(self.repeat >= 1, "--repeat {}: must be at least 1", self.repeat);
        anyhow::ensure!(self.steps >= 1, "--steps {}: must be at least 1", self.steps);
        anyhow::ensure!(self.batch_size >= 1, "--batch-size {}: must be at least 1", self.batch_size);
        if self.mode == Mode::Strong {
            let g = self
                .global_batch
                .ok_or_else(|| anyhow::anyhow!("--mode strong needs --global-batch G (the batch all workers share)"))?;
            if let Some(n) = self.workers.iter().find(|&&n| g % n != 0) {
                anyhow::bail!(
                    "--global-batch {g} does not divide by {n} workers (--workers {:?}); use a multiple of every count",
                    self.workers
                );
            }
        }
        let mut counts = self.workers.clone();
        counts.sort_unstable();
        counts.dedup();
        anyhow::ensure!(counts.len() == self.workers.len(), "--workers {:?}: each worker count once", self.workers);
        launcher_words(&self.launcher, 1)?;
        let program = self.launcher.split_whitespace().next().unwrap_or_default();
        anyhow::ensure!(
            on_path(program),
            "--launcher '{}': `{program}` is not on PATH; install Open MPI (scripts/setup.sh installs openmpi-bin) or name another launcher",
            self.launcher
        );
        for m in &self.models {
            let size = self.image_size.unwrap_or(m.default_image_size());
            m.check(&ModelConfig::new(self.classes, size))?;
        }
        Ok(())
    }

    /// Every setting that shapes a run, by flag: what a sweep's runs must
    /// share to be reported together (sweep.json keeps them).
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        vec![
            ("--mode", format!("{:?}", self.mode).to_lowercase()),
            ("--batch-size", self.batch_size.to_string()),
            ("--global-batch", opt(self.global_batch.map(|g| g.to_string()))),
            ("--image-size", opt(self.image_size.map(|s| s.to_string()))),
            ("--classes", self.classes.to_string()),
            ("--steps", self.steps.to_string()),
            ("--warmup", self.warmup.to_string()),
            ("--device", format!("{:?}", self.device).to_lowercase()),
            ("--grad-dtype", format!("{:?}", self.grad_dtype).to_lowercase()),
            ("--overlap", format!("{:?}", self.overlap).to_lowercase()),
            ("--bind", format!("{:?}", self.bind).to_lowercase()),
            ("--launcher", self.launcher.clone()),
            ("--hostfile", opt(self.hostfile.as_ref().map(|h| h.display().to_string()))),
            ("--data", self.data.clone()),
        ]
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

    pub(crate) fn batch_per_rank(&self, workers: usize) -> usize {
        match (self.mode, self.global_batch) {
            (Mode::Strong, Some(g)) => g / workers,
            _ => self.batch_size,
        }
    }

    /// The `train` arguments of a training of `ranks` ranks with `batch`
    /// images each, writing into `out`.
    pub(crate) fn train_args(&self, model: ModelKind, batch: usize, ranks: usize, out: &Path) -> Vec<String> {
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
        a.push("--overlap".into());
        a.push(format!("{:?}", self.overlap).to_lowercase());
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
