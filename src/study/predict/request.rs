//! A prediction as a user asks for it (flags), checked and turned into
//! its inputs: the worker's step read or given, links named or fitted, the
//! network measured.

use std::path::PathBuf;

use super::collective::{Algorithm, Link, Topology};
use super::inputs::{fit_link, NetworkProfile, WorkerStep};
use super::{presets, PredictConfig};
use crate::comm::GradDtype;
use crate::model::ModelKind;

/// Where one worker's step comes from.
#[derive(Clone, Debug)]
pub enum ComputeFrom {
    /// A training's or a sweep's records.
    Records(PathBuf),
    /// Seconds of one worker's step.
    StepTime(f64),
    /// One worker's images per second.
    ImagesPerS(f64),
}

/// Where a link's figures come from.
#[derive(Clone, Debug)]
pub enum LinkFrom {
    Preset(String),
    Fitted(PathBuf),
}

impl LinkFrom {
    fn resolve(&self, preset_flag: &str, file_flag: &str) -> anyhow::Result<Link> {
        match self {
            LinkFrom::Preset(name) => presets::named(name, preset_flag),
            LinkFrom::Fitted(path) => fit_link(path, file_flag),
        }
    }
}

#[derive(Clone, Debug)]
pub struct PredictRequest {
    pub model: ModelKind,
    pub image_size: usize,
    pub classes: usize,
    /// Images per worker per step; from the records where they have it.
    pub batch: Option<usize>,
    pub compute: ComputeFrom,
    pub grad_dtype: GradDtype,
    pub bucket_bytes: usize,
    pub overlap: bool,
    pub backward_share: f64,
    pub between: LinkFrom,
    pub inside: Option<LinkFrom>,
    pub per_host: usize,
    pub algorithm: Algorithm,
    pub workers: Vec<usize>,
}

impl PredictRequest {
    /// The prediction's inputs, every flag checked.
    pub fn resolve(&self) -> anyhow::Result<PredictConfig> {
        anyhow::ensure!(
            !self.workers.is_empty() && self.workers.iter().all(|&n| n >= 1),
            "--workers {:?}: give worker counts of 1 or more",
            self.workers
        );
        anyhow::ensure!(self.per_host >= 1, "--gpus-per-host 0: a host holds at least 1 worker");
        anyhow::ensure!(
            self.backward_share > 0.0 && self.backward_share <= 1.0,
            "--backward-share {}: the part of compute that backward takes, in (0, 1]",
            self.backward_share
        );
        anyhow::ensure!(
            self.bucket_bytes >= self.grad_dtype.size(),
            "--bucket-mb: a bucket must hold at least one {} element",
            self.grad_dtype.name()
        );
        let positive = |v: f64, flag: &str| {
            anyhow::ensure!(v.is_finite() && v > 0.0, "{flag} {v}: give a positive number");
            Ok(())
        };
        let batch = self.batch;
        let need_batch =
            |flag: &str| batch.ok_or_else(|| anyhow::anyhow!("{flag} needs --batch-size (images per worker per step)"));
        let worker = match &self.compute {
            ComputeFrom::Records(dir) => {
                let mut w = WorkerStep::from_records(dir, self.model)?;
                if let Some(b) = batch {
                    anyhow::ensure!(
                        w.batch == b || w.batch == 0,
                        "--batch-size {b}: the records in {} were made with batch {}",
                        dir.display(),
                        w.batch
                    );
                    w.batch = b;
                }
                w
            }
            ComputeFrom::StepTime(s) => {
                positive(*s, "--step-time")?;
                WorkerStep::given(*s, need_batch("--step-time")?, &format!("--step-time {s}"))
            }
            ComputeFrom::ImagesPerS(r) => {
                positive(*r, "--images-per-s")?;
                let b = need_batch("--images-per-s")?;
                WorkerStep::given(b as f64 / r, b, &format!("--images-per-s {r}"))
            }
        };
        let between = self.between.resolve("--link", "--link-from")?;
        let inside = match &self.inside {
            Some(l) => l.resolve("--inside", "--inside-from")?,
            None => between.clone(),
        };
        Ok(PredictConfig {
            network: NetworkProfile::measure(self.model, self.image_size, self.classes)?,
            worker,
            grad_dtype: self.grad_dtype,
            bucket_bytes: self.bucket_bytes,
            overlap: self.overlap,
            backward_share: self.backward_share,
            topology: Topology { per_host: self.per_host, inside, between },
            algorithm: self.algorithm,
            workers: self.workers.clone(),
        })
    }
}
