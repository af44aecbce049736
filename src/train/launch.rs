//! `candle-mpi train` from flags to records: the checks that need no MPI,
//! the rank's start, the run with its progress, and rank 0's record files.
//! A rank whose run fails alone ends the whole job, naming itself.

use std::path::{Path, PathBuf};

use super::config::TrainConfig;
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
}

impl Launch {
    /// Everything that can be refused before MPI starts, each naming its flag.
    fn check(&self) -> anyhow::Result<()> {
        let c = &self.config;
        c.model.check(&ModelConfig { dropout: c.dropout, ..ModelConfig::new(c.classes, c.image_size) })?;
        anyhow::ensure!(self.bucket_mb > 0.0, "--bucket-mb {}: must be above 0", self.bucket_mb);
        anyhow::ensure!(c.lr.base > 0.0, "--lr {}: must be above 0", c.lr.base);
        anyhow::ensure!(
            self.collective_timeout_s >= 0.0 && self.collective_timeout_s.is_finite(),
            "--collective-timeout {}: give seconds, 0 or more (0 waits for ever)",
            self.collective_timeout_s
        );
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
        anyhow::ensure!(
            c.checkpoint_every.is_none() || c.checkpoint_dir.is_some(),
            "--checkpoint-every needs --checkpoint-dir DIR"
        );
        if let Some(dir) = &c.checkpoint_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("--checkpoint-dir {}: cannot create the directory: {e}", dir.display()))?;
        }
        Ok(())
    }

    /// The run's settings in a world of `info.size` ranks.
    fn resolve(&self, info: &WorldInfo) -> anyhow::Result<TrainConfig> {
        let mut cfg = self.config.clone();
        if let Some(g) = self.global_batch {
            anyhow::ensure!(
                g % info.size == 0 && g >= info.size,
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
    let rank = start_rank(launch.device)?;
    let info = rank.comm.info().clone();
    let cfg = launch.resolve(&info)?;
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
    let summary = match result {
        Ok(s) => s,
        // One rank's error leaves the others waiting in a collective: end them all.
        Err(e) if info.size > 1 => {
            eprintln!("rank {}: error: {e:#}", info.rank);
            rank.comm.control().abort(1)
        }
        Err(e) => return Err(e),
    };
    if lead {
        progress::print_summary(&summary);
        if let Some(dir) = &launch.out {
            write_records(dir, &launch.args, &info, &summary)?;
            println!("records written to {}: config.json, steps.csv, summary.json", dir.display());
        }
    }
    Ok(())
}

/// config.json, steps.csv and summary.json, each written whole or not at all.
fn write_records(dir: &Path, args: &serde_json::Value, info: &WorldInfo, s: &TrainSummary) -> anyhow::Result<()> {
    let config = serde_json::json!({
        "args": args,
        "world_size": info.size,
        "rank0_host": info.host,
        "ranks_on_rank0_host": info.local_size,
        "host_cores": threads::host_cores(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(&config)?.as_bytes())?;
    write_atomic(&dir.join("steps.csv"), crate::record::steps::to_csv(&s.records).as_bytes())?;
    write_atomic(&dir.join("summary.json"), serde_json::to_string_pretty(s)?.as_bytes())?;
    Ok(())
}
