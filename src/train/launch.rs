//! `candle-mpi train` from flags to records: the checks that need no MPI,
//! the rank's start, the run with its progress, and rank 0's record files.
//! A rank whose run fails alone ends the whole job, naming itself.

use std::path::{Path, PathBuf};

use super::checkpoint;
use super::config::{Overlap, TrainConfig};
use super::fault;
use super::progress::{self, Progress};
use super::run::run;
use crate::comm::WorldInfo;
use crate::host::device::DeviceKind;
use crate::host::{start_rank, threads};
use crate::model::ModelConfig;
use crate::record::files::{check_writable_dir, write_atomic};
use crate::record::summary::TrainSummary;

/// The files `train --out` writes.
const RECORD_FILES: [&str; 3] = ["config.json", "steps.csv", "summary.json"];

/// The longest `--collective-timeout`: a day.
const MAX_TIMEOUT_S: f64 = 86_400.0;

/// A number as a person typed it: 1e300 rather than its 301 digits.
fn short(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// Removes what an interrupted write of an earlier run left in `dir`:
/// temporary files (`.NAME.tmp.PID`) of a process that no longer exists.
fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.rsplit_once(".tmp.").and_then(|(_, pid)| pid.parse::<u32>().ok()) else { continue };
        if name.starts_with('.') && !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing {}, left by an interrupted write (process {pid})", entry.path().display());
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A training as the command line asks for it: the run's settings (with
/// the batch per rank and the learning rate as given), the settings that
/// depend on the world size, and where the records go.
pub struct Launch {
    pub config: TrainConfig,
    /// Images per step over all ranks, split evenly (replaces `config.batch_size`).
    pub global_batch: Option<usize>,
    /// Multiply the learning rate by the world size.
    pub scale_lr: bool,
    /// The flags `config.bucket_bytes` and `config.collective_timeout` came
    /// from, checked as given.
    pub bucket_mb: f64,
    pub collective_timeout_s: f64,
    pub device: DeviceKind,
    pub log_every: usize,
    pub out: Option<PathBuf>,
    pub overwrite: bool,
    /// The command line's flags, written into config.json.
    pub args: serde_json::Value,
    /// `--overlap` and `--measure-wait` as given (`config` holds them resolved).
    pub overlap: Overlap,
    pub measure_wait: Option<bool>,
}

impl Launch {
    /// Everything that can be refused before MPI starts, each naming its flag.
    fn check(&self) -> anyhow::Result<()> {
        let c = &self.config;
        c.model.check(&ModelConfig { dropout: c.dropout, ..ModelConfig::new(c.classes, c.image_size) })?;
        anyhow::ensure!(
            self.bucket_mb > 0.0 && self.bucket_mb.is_finite(),
            "--bucket-mb {}: must be above 0",
            self.bucket_mb
        );
        anyhow::ensure!(c.lr.base > 0.0 && c.lr.base.is_finite(), "--lr {}: must be a number above 0", c.lr.base);
        anyhow::ensure!(
            (0.0..=MAX_TIMEOUT_S).contains(&self.collective_timeout_s),
            "--collective-timeout {}: give seconds from 0 to {MAX_TIMEOUT_S} (a day; 0 waits for ever)",
            short(self.collective_timeout_s)
        );
        anyhow::ensure!(c.steps != Some(0), "--steps 0: give 1 or more steps, or leave it out to train --epochs");
        anyhow::ensure!(c.epochs >= 1, "--epochs 0: give 1 or more epochs");
        for (flag, value) in
            [("--val-every", c.val_every), ("--checkpoint-every", c.checkpoint_every), ("--verify-sync", c.verify_sync)]
        {
            anyhow::ensure!(value != Some(0), "{flag} 0: give 1 or more, or leave the flag out");
        }
        if let Some(dir) = &self.out {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("--out {}: cannot create the directory: {e}", dir.display()))?;
            if !self.overwrite {
                if let Some(name) = RECORD_FILES.iter().find(|n| dir.join(n).exists()) {
                    anyhow::bail!(
                        "--out {}: holds another run's records ({name}); choose another directory, or pass --overwrite to replace them",
                        dir.display()
                    );
                }
            }
            check_writable_dir(dir, "--out")?;
        }
        anyhow::ensure!(!c.resume || c.checkpoint_dir.is_some(), "--resume needs --checkpoint-dir DIR");
        if let Some(path) = &c.init_from {
            anyhow::ensure!(
                !c.resume,
                "--init-from and --resume: choose one (a resumed run continues from its checkpoint)"
            );
            anyhow::ensure!(path.is_file(), "--init-from {}: no such file", path.display());
        }
        anyhow::ensure!(
            c.checkpoint_every.is_none() || c.checkpoint_dir.is_some(),
            "--checkpoint-every needs --checkpoint-dir DIR"
        );
        if let Some(dir) = &c.checkpoint_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("--checkpoint-dir {}: cannot create the directory: {e}", dir.display()))?;
            check_writable_dir(dir, "--checkpoint-dir")?;
            let file = dir.join(checkpoint::FILE_NAME);
            anyhow::ensure!(
                !file.is_dir(),
                "--checkpoint-dir {}: {} is a directory, where the checkpoint file goes",
                dir.display(),
                file.display()
            );
            remove_stale_temporaries(dir);
        }
        if let Some(dir) = &self.out {
            remove_stale_temporaries(dir);
        }
        Ok(())
    }

    /// The run's settings in a world of `info.size` ranks.
    fn resolve(&self, info: &WorldInfo, hosts: usize) -> anyhow::Result<TrainConfig> {
        let mut cfg = self.config.clone();
        // Measured to help across hosts, and about even on one (docs/performance.md);
        // a barrier asked for keeps the exchange after backward.
        cfg.overlap = match self.overlap {
            Overlap::On => true,
            Overlap::Off => false,
            Overlap::Auto => hosts > 1 && self.device == DeviceKind::Cpu && self.measure_wait != Some(true),
        };
        anyhow::ensure!(
            !(cfg.overlap && self.measure_wait == Some(true)),
            "--measure-wait true: a barrier between backward and the exchange would undo --overlap \
             (accepted with --overlap off or auto)"
        );
        cfg.measure_wait = self.measure_wait.unwrap_or(!cfg.overlap);
        if let Some(g) = self.global_batch {
            anyhow::ensure!(
                g >= info.size,
                "--global-batch {g}: fewer images than the {} rank(s) of this run; give at least one image per rank",
                info.size
            );
            anyhow::ensure!(
                g % info.size == 0,
                "--global-batch {g} does not divide by the {} rank(s) of this run; use a multiple of {}",
                info.size,
                info.size
            );
            cfg.batch_size = g / info.size;
        }
        if self.scale_lr {
            cfg.lr.base *= info.size as f64;
        }
        cfg.fault = fault::resolve(cfg.fault)?;
        Ok(cfg)
    }
}

/// Collective: trains as `launch` asks, printing progress on rank 0 and
/// writing its records there.
pub fn launch(launch: &Launch) -> anyhow::Result<()> {
    launch.check()?;
    let rank = start_rank(launch.device, launch.overlap == Overlap::On)?;
    let info = rank.comm.info().clone();
    let cfg = rank.or_abort(launch.resolve(&info, rank.comm.host_count()))?;
    let lead = info.rank == 0;
    if lead {
        println!(
            "training {} on {} rank(s) x {} images, {} px, {} classes, lr {}, gradients in {}",
            cfg.model,
            info.size,
            cfg.batch_size,
            cfg.image_size,
            cfg.classes,
            cfg.lr.base,
            cfg.grad_dtype.name()
        );
    }
    let mut progress = Progress::new(&info, launch.log_every, cfg.batch_size);
    let result =
        run(&cfg, &rank.comm, &rank.device, |step, total, loss, skipped| progress.step(step, total, loss, skipped));
    progress.finish();
    let summary = rank.or_abort(result)?;
    if lead {
        progress::print_summary(&summary);
        if let Some(dir) = &launch.out {
            rank.or_abort(write_records(dir, &launch.args, &info, &summary))?;
            println!("records written to {}: config.json, steps.csv, summary.json", dir.display());
        }
    }
    Ok(())
}

/// summary.json, steps.csv and config.json, each written whole or not at all.
fn write_records(dir: &Path, args: &serde_json::Value, info: &WorldInfo, s: &TrainSummary) -> anyhow::Result<()> {
    let config = serde_json::json!({
        "args": args,
        "world_size": info.size,
        "rank0_host": info.host,
        "ranks_on_rank0_host": info.local_size,
        "host_cores": threads::host_cores(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    // The summary first: on a disk that fills up, the figures a report reads survive.
    write_atomic(&dir.join("summary.json"), serde_json::to_string_pretty(s)?.as_bytes())?;
    write_atomic(&dir.join("steps.csv"), crate::record::steps::to_csv(&s.records).as_bytes())?;
    write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(&config)?.as_bytes())?;
    Ok(())
}
