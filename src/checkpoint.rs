//! Checkpoints: one safetensors file with every variable (parameters and
//! batch-norm buffers, under torchvision's names, prefixed `model/`), SGD's
//! momentum (`momentum/`), and metadata saying what network and step they
//! belong to. Written to a temporary name and renamed, so a crash leaves the
//! previous checkpoint whole.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::models::ModelKind;

pub const FILE_NAME: &str = "checkpoint.safetensors";
const FORMAT: &str = "candle-mpi-checkpoint-1";

/// What a checkpoint was written for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointMeta {
    pub model: String,
    pub classes: usize,
    pub in_channels: usize,
    /// Steps completed when it was written.
    pub step: usize,
}

impl CheckpointMeta {
    fn to_map(&self) -> HashMap<String, String> {
        HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("model".to_string(), self.model.clone()),
            ("classes".to_string(), self.classes.to_string()),
            ("in_channels".to_string(), self.in_channels.to_string()),
            ("step".to_string(), self.step.to_string()),
        ])
    }

    fn from_map(m: &HashMap<String, String>) -> anyhow::Result<Self> {
        anyhow::ensure!(m.get("format").map(String::as_str) == Some(FORMAT), "not a candle-mpi checkpoint (format {:?})", m.get("format"));
        let get = |k: &str| m.get(k).ok_or_else(|| anyhow::anyhow!("checkpoint metadata lacks '{k}'"));
        let num = |k: &str| -> anyhow::Result<usize> { get(k)?.parse().map_err(|_| anyhow::anyhow!("checkpoint metadata '{k}' is not a number")) };
        Ok(Self { model: get("model")?.clone(), classes: num("classes")?, in_channels: num("in_channels")?, step: num("step")? })
    }

    /// Refuses a checkpoint of another network or shape of classifier.
    pub fn check_fits(&self, model: ModelKind, classes: usize, in_channels: usize) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.model == model.name() && self.classes == classes && self.in_channels == in_channels,
            "the checkpoint holds {} with {} classes and {} input channels; this run is {} with {} classes and {} input channels",
            self.model, self.classes, self.in_channels, model.name(), classes, in_channels
        );
        Ok(())
    }
}

/// Writes `model` and `momentum` tensors (by name) with `meta` to `path`, atomically.
pub fn save(path: &Path, meta: &CheckpointMeta, model: &[(String, Tensor)], momentum: &[(String, Tensor)]) -> anyhow::Result<()> {
    let mut named: Vec<(String, Tensor)> = Vec::with_capacity(model.len() + momentum.len());
    for (n, t) in model {
        named.push((format!("model/{n}"), t.to_device(&Device::Cpu)?.contiguous()?));
    }
    for (n, t) in momentum {
        named.push((format!("momentum/{n}"), t.to_device(&Device::Cpu)?.contiguous()?));
    }
    let name = path.file_name().ok_or_else(|| anyhow::anyhow!("{} is not a file name", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp.{}", name.to_string_lossy(), std::process::id()));
    safetensors::serialize_to_file(named.iter().map(|(n, t)| (n.as_str(), t)), Some(meta.to_map()), &tmp)
        .map_err(|e| anyhow::anyhow!("cannot write checkpoint {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| anyhow::anyhow!("cannot rename {} to {}: {e}", tmp.display(), path.display()))?;
    Ok(())
}

/// A checkpoint read back: its metadata, model tensors and momentum tensors by name.
pub struct Loaded {
    pub meta: CheckpointMeta,
    pub model: HashMap<String, Tensor>,
    pub momentum: HashMap<String, Tensor>,
}

pub fn load(path: &Path) -> anyhow::Result<Loaded> {
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read checkpoint {}: {e}", path.display()))?;
    let bad = |e: &dyn std::fmt::Display| anyhow::anyhow!("checkpoint {} is damaged or not a checkpoint (truncated?): {e}", path.display());
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(&e))?;
    let meta = CheckpointMeta::from_map(header.metadata().as_ref().ok_or_else(|| bad(&"no metadata"))?)
        .map_err(|e| anyhow::anyhow!("checkpoint {}: {e}", path.display()))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| bad(&e))?;
    let (mut model, mut momentum) = (HashMap::new(), HashMap::new());
    for (name, t) in tensors {
        if let Some(n) = name.strip_prefix("model/") {
            model.insert(n.to_string(), t);
        } else if let Some(n) = name.strip_prefix("momentum/") {
            momentum.insert(n.to_string(), t);
        }
    }
    Ok(Loaded { meta, model, momentum })
}
