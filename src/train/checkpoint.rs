//! Checkpoints: one safetensors file with every variable (parameters and
//! batch-norm buffers, under torchvision's names, prefixed `model/`), SGD's
//! momentum (`momentum/`), and metadata saying what network and step they
//! belong to, with a checksum of every tensor's values that loading checks.
//! Written to a temporary name and renamed, so a crash leaves the previous
//! checkpoint whole. `write_run` and `resume_run` save and restore a
//! whole run (model, optimizer, step) for the trainer.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::comm::Control;
use crate::model::params::ParamStore;
use crate::model::{ModelConfig, ModelKind};
use crate::optim::Sgd;

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
    /// The run's settings as JSON (for people and tools; resuming reads the
    /// command line, and the sampler, crops and synthetic data are functions
    /// of seed, epoch and index, so the step is all the state they need).
    pub config: Option<String>,
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
        .into_iter()
        .chain(self.config.clone().map(|c| ("config".to_string(), c)))
        .collect()
    }

    fn from_map(m: &HashMap<String, String>) -> anyhow::Result<Self> {
        anyhow::ensure!(
            m.get("format").map(String::as_str) == Some(FORMAT),
            "not a candle-mpi checkpoint (format {:?})",
            m.get("format")
        );
        let get = |k: &str| m.get(k).ok_or_else(|| anyhow::anyhow!("checkpoint metadata lacks '{k}'"));
        let num = |k: &str| -> anyhow::Result<usize> {
            get(k)?.parse().map_err(|_| anyhow::anyhow!("checkpoint metadata '{k}' is not a number"))
        };
        Ok(Self {
            model: get("model")?.clone(),
            classes: num("classes")?,
            in_channels: num("in_channels")?,
            step: num("step")?,
            config: m.get("config").cloned(),
        })
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

/// FNV-1a over the bits of every value of `named`, in name order: what the
/// metadata's `checksum` holds, so that flipped bytes are refused on load.
fn checksum(named: &[(String, Tensor)]) -> anyhow::Result<String> {
    let mut order: Vec<&(String, Tensor)> = named.iter().collect();
    order.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = crate::rng::Fnv1a::default();
    for (name, t) in order {
        for b in name.bytes() {
            h.add(u64::from(b));
        }
        let values: Vec<f32> = t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?;
        for v in values {
            h.add(u64::from(v.to_bits()));
        }
    }
    Ok(format!("{:016x}", h.finish()))
}

/// Writes `model` and `momentum` tensors (by name) with `meta` to `path`, atomically.
pub fn save(
    path: &Path,
    meta: &CheckpointMeta,
    model: &[(String, Tensor)],
    momentum: &[(String, Tensor)],
) -> anyhow::Result<()> {
    save_then(path, meta, model, momentum, || ())
}

/// `save`, calling `before_rename` between writing the temporary file and
/// renaming it (where the crash test kills the process).
fn save_then(
    path: &Path,
    meta: &CheckpointMeta,
    model: &[(String, Tensor)],
    momentum: &[(String, Tensor)],
    before_rename: impl FnOnce(),
) -> anyhow::Result<()> {
    let mut named: Vec<(String, Tensor)> = Vec::with_capacity(model.len() + momentum.len());
    for (n, t) in model {
        named.push((format!("model/{n}"), t.to_device(&Device::Cpu)?.contiguous()?));
    }
    for (n, t) in momentum {
        named.push((format!("momentum/{n}"), t.to_device(&Device::Cpu)?.contiguous()?));
    }
    let name = path.file_name().ok_or_else(|| anyhow::anyhow!("{} is not a file name", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp.{}", name.to_string_lossy(), std::process::id()));
    let mut metadata = meta.to_map();
    metadata.insert("checksum".to_string(), checksum(&named)?);
    let written = safetensors::serialize_to_file(named.iter().map(|(n, t)| (n.as_str(), t)), Some(metadata), &tmp)
        .map_err(|e| anyhow::anyhow!("cannot write checkpoint {}: {e}", tmp.display()))
        // On disk before it takes the old one's name, so a power cut cannot leave a torn file.
        .and_then(|()| {
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| anyhow::anyhow!("cannot sync checkpoint {}: {e}", tmp.display()))
        });
    if let Err(e) = written {
        // A full disk leaves no half-written temporary behind (the previous checkpoint stays).
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    before_rename();
    std::fs::rename(&tmp, path)
        .map_err(|e| anyhow::anyhow!("cannot rename {} to {}: {e}", tmp.display(), path.display()))?;
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
    let bad = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!("checkpoint {} is damaged or not a checkpoint (truncated?): {e}", path.display())
    };
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(&e))?;
    let meta = CheckpointMeta::from_map(header.metadata().as_ref().ok_or_else(|| bad(&"no metadata"))?)
        .map_err(|e| anyhow::anyhow!("checkpoint {}: {e}", path.display()))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| bad(&e))?;
    // Files written before checksums existed have none to check.
    if let Some(want) = header.metadata().as_ref().and_then(|m| m.get("checksum")) {
        let named: Vec<(String, Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t.clone())).collect();
        let got = checksum(&named)?;
        anyhow::ensure!(
            &got == want,
            "checkpoint {} is damaged: its tensors' checksum is {got}, the file says {want} (bytes changed after it was written)",
            path.display()
        );
    }
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

/// Where a run keeps its checkpoint: FILE_NAME in `--checkpoint-dir`.
pub fn run_path(dir: Option<&Path>) -> anyhow::Result<std::path::PathBuf> {
    let dir = dir.ok_or_else(|| anyhow::anyhow!("--resume needs --checkpoint-dir"))?;
    Ok(dir.join(FILE_NAME))
}

/// Rank 0's checkpoint of a run after `step` steps: every variable and SGD's momentum.
/// `crash_before_rename` is the fault-injection test aid (ckpt-kill).
pub struct RunState {
    pub model: ModelKind,
    pub model_cfg: ModelConfig,
    pub store: ParamStore,
    /// The run's settings as JSON, kept in the metadata.
    pub config: String,
}

pub fn write_run(path: &Path, run: &RunState, sgd: &Sgd, step: usize, crash_before_rename: bool) -> anyhow::Result<()> {
    let RunState { model, model_cfg, store, .. } = run;
    let meta = CheckpointMeta {
        model: model.name().to_string(),
        classes: model_cfg.num_classes,
        in_channels: model_cfg.in_channels,
        step,
        config: Some(run.config.clone()),
    };
    let vars: Vec<(String, Tensor)> = store.all_sorted().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
    let momentum: Vec<(String, Tensor)> = sgd.momentum().into_iter().filter_map(|(n, b)| b.map(|b| (n, b))).collect();
    save_then(path, &meta, &vars, &momentum, || {
        if crash_before_rename {
            super::fault::kill_now(0, &format!("after writing the step-{step} checkpoint, before renaming it"));
        }
    })
}

/// Rank 0 reads the checkpoint into the model and the optimizer; the model then
/// travels with the start-up broadcast, momentum and step go out here. A
/// failure on rank 0 stops every rank with rank 0's message (they would
/// otherwise wait in a broadcast).
pub fn resume_run(
    path: &Path,
    model: ModelKind,
    model_cfg: &ModelConfig,
    store: &ParamStore,
    sgd: &mut Sgd,
    control: &Control,
) -> anyhow::Result<usize> {
    let rank0 = control.info().rank == 0;
    let loaded = if rank0 { load_into(path, model, model_cfg, store, sgd) } else { Ok(0) };
    let step = control.agree("resuming from the checkpoint", loaded)?;
    // Momentum: which buffers exist, then their values.
    let mut has: Vec<f32> = sgd.momentum().iter().map(|(_, b)| if b.is_some() { 1.0 } else { 0.0 }).collect();
    control.broadcast_f32(&mut has, 0)?;
    for (i, ((_, var), flag)) in store.trainable_sorted().iter().zip(has).enumerate() {
        if flag == 0.0 {
            continue;
        }
        // Other ranks send a zero buffer of the parameter's shape; rank 0's values win.
        let mine = match &sgd.momentum()[i].1 {
            Some(b) => b.clone(),
            None => var.as_tensor().zeros_like()?,
        };
        sgd.set_momentum(i, Some(control.broadcast_tensor(&mine)?));
    }
    Ok(control.all_gather_u64(step as u64)?[0] as usize)
}

fn load_into(
    path: &Path,
    model: ModelKind,
    model_cfg: &ModelConfig,
    store: &ParamStore,
    sgd: &mut Sgd,
) -> anyhow::Result<usize> {
    anyhow::ensure!(path.is_file(), "--resume: no checkpoint at {}", path.display());
    let loaded = load(path)?;
    loaded
        .meta
        .check_fits(model, model_cfg.num_classes, model_cfg.in_channels)
        .map_err(|e| anyhow::anyhow!("--resume {}: {e}", path.display()))?;
    // Check everything before changing anything.
    let vars = store.all_sorted();
    for (name, var) in &vars {
        let t = loaded
            .model
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("--resume {}: the checkpoint lacks {name}", path.display()))?;
        anyhow::ensure!(
            t.shape() == var.shape(),
            "--resume {}: {name} has shape {:?} in the checkpoint, {:?} in this network",
            path.display(),
            t.dims(),
            var.dims()
        );
    }
    for (name, var) in &vars {
        var.set(&loaded.model[name].to_device(var.device())?.to_dtype(var.dtype())?)?;
    }
    let trainable = store.trainable_sorted();
    check_momentum(path, &loaded, &trainable, sgd.config().momentum > 0.0)?;
    for (i, (name, var)) in trainable.iter().enumerate() {
        let buffer = match loaded.momentum.get(name) {
            Some(b) => Some(b.to_device(var.device())?.to_dtype(var.dtype())?),
            None => None,
        };
        sgd.set_momentum(i, buffer);
    }
    Ok(loaded.meta.step)
}

/// The momentum buffers of a checkpoint against the parameters they belong
/// to: one per parameter of its shape after a step with momentum, none for
/// a name the network lacks.
fn check_momentum(
    path: &Path,
    loaded: &Loaded,
    trainable: &[(String, candle_core::Var)],
    momentum: bool,
) -> anyhow::Result<()> {
    let at = |what: String| anyhow::anyhow!("--resume {}: {what}", path.display());
    for name in loaded.momentum.keys() {
        if !trainable.iter().any(|(n, _)| n == name) {
            return Err(at(format!("momentum/{name} belongs to no parameter of this network")));
        }
    }
    for (name, var) in trainable {
        match loaded.momentum.get(name) {
            Some(b) if b.shape() != var.shape() => {
                return Err(at(format!("momentum/{name} has shape {:?}, its parameter {:?}", b.dims(), var.dims())));
            }
            None if momentum && loaded.meta.step > 0 => {
                return Err(at(format!(
                    "the checkpoint lacks momentum/{name}, which SGD with momentum needs after step {}",
                    loaded.meta.step
                )));
            }
            _ => {}
        }
    }
    Ok(())
}
