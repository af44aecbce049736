//! Weights in and out under torchvision's names. In: `train --init-from`
//! and `eval` read a safetensors file of parameters and batch-norm buffers
//! (torchvision's `state_dict()` saved with safetensors, or a candle-mpi
//! checkpoint) into a network, checked name by name and shape by shape. Out:
//! `export` writes a checkpoint's network, or a seed's initial weights, as
//! such a file, which torchvision's `load_state_dict` takes as it is
//! (`num_batches_tracked` written for every batch norm).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::checkpoint;
use crate::model::params::ParamStore;

/// The suffix torchvision gives the batch counter of a batch norm, which
/// candle-mpi does not keep (its momentum is fixed, as PyTorch's default).
const BATCHES_TRACKED: &str = "num_batches_tracked";

/// The tensors of `path` by name: a candle-mpi checkpoint's network (its
/// momentum left out), or every tensor of any other safetensors file.
pub fn read(path: &Path, flag: &str) -> anyhow::Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{flag} {}: cannot read it: {e}", path.display()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow::anyhow!("{flag} {}: not a safetensors file: {e}", path.display()))?;
    if header.metadata().as_ref().is_some_and(|m| m.contains_key("format")) {
        return Ok(checkpoint::load(path).map_err(|e| anyhow::anyhow!("{flag}: {e}"))?.model);
    }
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| anyhow::anyhow!("{flag} {}: damaged safetensors file: {e}", path.display()))?;
    Ok(tensors.into_iter().collect())
}

/// Sets every variable of `store` (parameters and batch-norm buffers) from
/// `tensors`, after checking all of them: each variable present under its
/// name with its shape, no tensor left over but torchvision's batch counters.
/// Nothing is changed when anything is wrong.
pub fn apply(tensors: &HashMap<String, Tensor>, store: &ParamStore, source: &str) -> anyhow::Result<()> {
    let vars = store.all_sorted();
    let missing: Vec<&str> = vars.iter().filter(|(n, _)| !tensors.contains_key(n)).map(|(n, _)| n.as_str()).collect();
    let mut extra: Vec<&str> = tensors
        .keys()
        .filter(|n| !n.ends_with(BATCHES_TRACKED) && !vars.iter().any(|(v, _)| v == *n))
        .map(String::as_str)
        .collect();
    extra.sort_unstable();
    let shapes: Vec<String> = vars
        .iter()
        .filter_map(|(n, v)| tensors.get(n).filter(|t| t.shape() != v.shape()).map(|t| (n, t, v)))
        .map(|(n, t, v)| format!("{n} is {:?} in the file, {:?} in this network", t.dims(), v.dims()))
        .collect();
    let list = |names: &[&str]| {
        let shown: Vec<&str> = names.iter().take(6).copied().collect();
        let more = names.len().saturating_sub(6);
        format!("{}{}", shown.join(", "), if more > 0 { format!(" and {more} more") } else { String::new() })
    };
    let mut wrong = shapes;
    if !missing.is_empty() {
        wrong.insert(0, format!("missing {}", list(&missing)));
    }
    if !extra.is_empty() {
        wrong.push(format!("not in this network: {}", list(&extra)));
    }
    anyhow::ensure!(
        wrong.is_empty(),
        "{source}: does not fit this network (another network, class count or input channels?): {}",
        wrong.join("; ")
    );
    for (name, var) in &vars {
        var.set(&tensors[name].to_device(var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// `tensors` (a network's variables by torchvision's names) with a batch
/// counter of `batches` beside every batch norm, written to `path` whole.
fn write_named(path: &Path, tensors: Vec<(String, Tensor)>, batches: i64) -> anyhow::Result<()> {
    let mut named: Vec<(String, Tensor)> = vec![];
    for (name, t) in tensors {
        if let Some(layer) = name.strip_suffix("running_mean") {
            named.push((format!("{layer}{BATCHES_TRACKED}"), Tensor::new(batches, &Device::Cpu)?));
        }
        named.push((name, t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.contiguous()?));
    }
    let bytes = safetensors::serialize(named.iter().map(|(n, t)| (n.as_str(), t)), None)
        .map_err(|e| anyhow::anyhow!("cannot serialise the weights: {e}"))?;
    crate::record::files::write_atomic(path, &bytes)
}

/// What `candle-mpi export` is asked to write: a checkpoint's network, or
/// the initial weights `train --seed` starts a network from (and, for test
/// fixtures, the first images of the synthetic data of that seed).
pub enum Export {
    Checkpoint {
        path: std::path::PathBuf,
    },
    Initial {
        model: crate::model::ModelKind,
        classes: usize,
        image_size: usize,
        seed: u64,
        batch: Option<(usize, std::path::PathBuf)>,
    },
}

/// Writes `what` to `out` (refusing to overwrite anything); returns a line
/// saying what was written.
pub fn export(what: &Export, out: &Path) -> anyhow::Result<String> {
    crate::record::files::check_new_file(out, "OUT")?;
    match what {
        Export::Checkpoint { path } => {
            let loaded = checkpoint::load(path).map_err(|e| anyhow::anyhow!("CHECKPOINT: {e}"))?;
            let mut tensors: Vec<(String, Tensor)> = loaded.model.into_iter().collect();
            tensors.sort_by(|a, b| a.0.cmp(&b.0));
            let count = tensors.len();
            write_named(out, tensors, loaded.meta.step as i64)?;
            Ok(format!(
                "{} after step {}: {count} variables written to {}",
                loaded.meta.model,
                loaded.meta.step,
                out.display()
            ))
        }
        Export::Initial { model, classes, image_size, seed, batch } => {
            let cfg = crate::model::ModelConfig::new(*classes, *image_size);
            let store = ParamStore::new(*seed);
            model.build(&cfg, store.var_builder(DType::F32, &Device::Cpu))?;
            let tensors: Vec<(String, Tensor)> =
                store.all_sorted().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
            let count = tensors.len();
            if let Some((n, path)) = batch {
                write_batch(path, *n, *classes, *image_size, *seed)?;
            }
            write_named(out, tensors, 0)?;
            Ok(format!("{model}'s initial weights of seed {seed}: {count} variables written to {}", out.display()))
        }
    }
}

/// The first `n` samples of `train --data synthetic --seed seed` as `images`
/// (n, 3, size, size) and `labels` (n, int64).
fn write_batch(path: &Path, n: usize, classes: usize, size: usize, seed: u64) -> anyhow::Result<()> {
    crate::record::files::check_new_file(path, "--batch-out")?;
    let data = crate::data::Synthetic { len: n, classes, seed };
    let (pixels, labels) = crate::data::stack(&data, &(0..n).collect::<Vec<_>>(), size, None)?;
    let images = Tensor::from_vec(pixels, (n, 3, size, size), &Device::Cpu)?;
    let labels = Tensor::from_vec(labels.into_iter().map(i64::from).collect::<Vec<_>>(), n, &Device::Cpu)?;
    let bytes = safetensors::serialize([("images", &images), ("labels", &labels)], None)
        .map_err(|e| anyhow::anyhow!("cannot serialise the batch: {e}"))?;
    crate::record::files::write_atomic(path, &bytes)
}
