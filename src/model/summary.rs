//! A network's size and cost, as `candle-mpi models` prints it: parameters
//! and buffers counted from the store, multiply-adds from the shapes a real
//! forward pass produces, beside torchvision's published figures.

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use super::network::ModelConfig;
use super::params::ParamStore;
use super::{layers, ModelKind};
use crate::record::human::thousands;

/// A network's size and cost, as `candle-mpi models` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct ModelSummary {
    pub model: ModelKind,
    pub parameters: usize,
    pub buffers: usize,
    pub image_size: usize,
    pub classes: usize,
    /// Multiply-adds of convolutions and fully connected layers per image, in
    /// billions (torchvision's "GFLOPS" column counts the same thing).
    pub gmacs_per_image: f64,
    /// Parameter memory in MiB at f32.
    pub param_mib: f64,
}

/// Builds `kind` at `cfg` and measures it with one forward pass of one image.
pub fn summarize(kind: ModelKind, cfg: &ModelConfig, seed: u64) -> anyhow::Result<ModelSummary> {
    let device = Device::Cpu;
    let store = ParamStore::new(seed);
    let net = kind.build(cfg, store.var_builder(DType::F32, &device))?;
    let x = Tensor::zeros((1, cfg.in_channels, cfg.image_size, cfg.image_size), DType::F32, &device)?;
    let (logits, macs) = layers::count_macs(|| net.forward_t(&x, false));
    let logits = logits?;
    anyhow::ensure!(
        logits.dims() == [1, cfg.num_classes],
        "{kind} produced logits of shape {:?}, expected [1, {}]",
        logits.dims(),
        cfg.num_classes
    );
    let parameters = store.parameter_count();
    let all: usize = store.all_sorted().iter().map(|(_, v)| v.as_tensor().elem_count()).sum();
    Ok(ModelSummary {
        model: kind,
        parameters,
        buffers: all - parameters,
        image_size: cfg.image_size,
        classes: cfg.num_classes,
        gmacs_per_image: macs as f64 / 1e9,
        param_mib: parameters as f64 * 4.0 / (1024.0 * 1024.0),
    })
}

/// The networks to measure, at one input size (each network's own where
/// None) and class count.
pub struct Listing {
    pub kinds: Vec<ModelKind>,
    pub image_size: Option<usize>,
    pub classes: usize,
    pub aux_logits: bool,
}

/// Every network of `listing`, checked first (naming the flag at fault), then measured.
pub fn measure(listing: &Listing) -> anyhow::Result<Vec<ModelSummary>> {
    let configs: Vec<(ModelKind, ModelConfig)> = listing
        .kinds
        .iter()
        .map(|&kind| {
            let mut cfg = ModelConfig::new(listing.classes, listing.image_size.unwrap_or(kind.default_image_size()));
            cfg.aux_logits = listing.aux_logits;
            kind.check(&cfg).map(|_| (kind, cfg))
        })
        .collect::<anyhow::Result<_>>()?;
    configs.iter().map(|(kind, cfg)| summarize(*kind, cfg, 0)).collect()
}

/// torchvision's published multiply-adds per image at 224 pixels and 1000
/// classes, in billions, for comparison with our count.
pub fn torchvision_gmacs(kind: ModelKind) -> Option<f64> {
    match kind {
        ModelKind::Alexnet => Some(0.714),
        ModelKind::Vgg16 => Some(15.47),
        ModelKind::Resnet50 => Some(4.089),
        ModelKind::Googlenet => Some(1.498),
        ModelKind::Small => None,
    }
}

/// The table `candle-mpi models` prints.
pub fn table(rows: &[ModelSummary]) -> String {
    let mut out = format!(
        "{:<10} {:>13} {:>11} {:>7} {:>8} {:>12} {:>16}\n",
        "model", "parameters", "params MiB", "input", "classes", "GMACs/image", "torchvision@224"
    );
    for r in rows {
        let reference = match (torchvision_gmacs(r.model), r.image_size, r.classes) {
            (Some(g), 224, 1000) => format!("{g:.3}"),
            _ => "-".to_string(),
        };
        out.push_str(&format!(
            "{:<10} {:>13} {:>11.1} {:>7} {:>8} {:>12.3} {:>16}\n",
            r.model.name(),
            thousands(r.parameters),
            r.param_mib,
            r.image_size,
            r.classes,
            r.gmacs_per_image,
            reference
        ));
    }
    out.push_str("GMACs: billions of multiply-adds per image in convolutions and linear layers (1 MAC = 2 FLOPs).\n");
    out
}
