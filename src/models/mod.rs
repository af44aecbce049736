//! The networks: AlexNet, VGG16, ResNet50, GoogLeNet (torchvision's definitions,
//! parameter names included) and a small CNN for fast tests.
//!
//! Every network ends in an adaptive average pool, so one definition serves
//! inputs from 32 pixels (the smallest VGG16's five poolings allow) to 224 and
//! beyond; `ModelKind::check` refuses what a network cannot take.

pub mod alexnet;
pub mod batch_norm;
pub mod conv;
pub mod googlenet;
pub mod layers;
pub mod pool;
#[cfg(feature = "cuda")]
mod pool_cuda;
pub mod resnet;
pub mod small;
pub mod vgg;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Serialize;

use crate::params::ParamStore;

/// A network that trains: `train` switches batch norm to batch statistics and
/// turns dropout on.
pub trait Network: Send + Sync {
    /// Class logits, shape (batch, num_classes).
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor>;

    /// Logits and the logits of auxiliary heads, if the network has them and
    /// `train` is set (GoogLeNet's aux1/aux2).
    fn forward_with_aux(&self, x: &Tensor, train: bool) -> Result<(Tensor, Vec<Tensor>)> {
        Ok((self.forward_t(x, train)?, vec![]))
    }
}

/// The networks this crate knows, by the name the command line uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Alexnet,
    Vgg16,
    Resnet50,
    Googlenet,
    Small,
}

/// What a network is built for.
#[derive(Clone, Copy, Debug)]
pub struct ModelConfig {
    pub num_classes: usize,
    pub image_size: usize,
    pub in_channels: usize,
    /// Dropout probability of the classifier; `None` keeps the paper's value.
    pub dropout: Option<f32>,
    /// GoogLeNet's auxiliary classifiers (ignored by the other networks).
    pub aux_logits: bool,
}

impl ModelConfig {
    pub fn new(num_classes: usize, image_size: usize) -> Self {
        Self { num_classes, image_size, in_channels: 3, dropout: None, aux_logits: false }
    }
}

impl ModelKind {
    pub const ALL: [ModelKind; 5] =
        [ModelKind::Alexnet, ModelKind::Vgg16, ModelKind::Resnet50, ModelKind::Googlenet, ModelKind::Small];

    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Alexnet => "alexnet",
            ModelKind::Vgg16 => "vgg16",
            ModelKind::Resnet50 => "resnet50",
            ModelKind::Googlenet => "googlenet",
            ModelKind::Small => "small",
        }
    }

    /// The input size the network was designed for.
    pub fn default_image_size(self) -> usize {
        match self {
            ModelKind::Small => 32,
            _ => 224,
        }
    }

    /// The smallest input side the network accepts, and why.
    pub fn min_image_size(self) -> (usize, &'static str) {
        match self {
            ModelKind::Vgg16 => (32, "its five 2x2 max-pools halve the image to 1x1"),
            // The others would go lower, but 32 is the floor this project supports and tests.
            ModelKind::Alexnet | ModelKind::Resnet50 | ModelKind::Googlenet => {
                (32, "32 pixels is the smallest input the ImageNet networks are tested at")
            }
            ModelKind::Small => (4, "below 4 pixels its 2x2 classifier grid would only repeat cells"),
        }
    }

    /// Checks a configuration against this network, naming the flag at fault.
    pub fn check(self, cfg: &ModelConfig) -> anyhow::Result<()> {
        if cfg.num_classes == 0 {
            anyhow::bail!("--classes 0: a classifier needs at least 1 class");
        }
        if cfg.in_channels == 0 {
            anyhow::bail!("input channels 0: images need at least 1 channel");
        }
        let (min, why) = self.min_image_size();
        if cfg.image_size < min {
            anyhow::bail!(
                "--image-size {} is too small for {}: it accepts {} pixels and more ({})",
                cfg.image_size,
                self.name(),
                min,
                why
            );
        }
        if let Some(p) = cfg.dropout {
            if !(0.0..1.0).contains(&p) {
                anyhow::bail!("--dropout {p}: must be in [0, 1)");
            }
        }
        Ok(())
    }

    /// Builds the network's parameters under `vb` (torchvision's names).
    pub fn build(self, cfg: &ModelConfig, vb: VarBuilder) -> anyhow::Result<Box<dyn Network>> {
        self.check(cfg)?;
        let net: Box<dyn Network> = match self {
            ModelKind::Alexnet => Box::new(alexnet::AlexNet::new(cfg, vb)?),
            ModelKind::Vgg16 => Box::new(vgg::Vgg::vgg16(cfg, vb)?),
            ModelKind::Resnet50 => Box::new(resnet::ResNet::resnet50(cfg, vb)?),
            ModelKind::Googlenet => Box::new(googlenet::GoogLeNet::new(cfg, vb)?),
            ModelKind::Small => Box::new(small::SmallCnn::new(cfg, vb)?),
        };
        Ok(net)
    }
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

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
