//! The networks: AlexNet, VGG16, ResNet50, GoogLeNet (torchvision's definitions,
//! parameter names included) and a small CNN for fast tests, one file each;
//! the layers they are built of (`layers.rs`, `batch_norm.rs`), the store
//! their parameters live in (`params.rs`), what every network is and is
//! built for (`network.rs`), and their sizes and costs (`summary.rs`).
//!
//! Every network ends in an adaptive average pool, so one definition serves
//! inputs from 32 pixels (the smallest VGG16's five poolings allow) to 224 and
//! beyond; `ModelKind::check` refuses what a network cannot take.

pub mod alexnet;
pub mod batch_norm;
pub mod googlenet;
pub mod layers;
pub mod network;
pub mod params;
pub mod resnet;
pub mod small;
pub mod summary;
pub mod vgg;

use candle_nn::VarBuilder;
use serde::Serialize;

pub use self::network::{ModelConfig, Network};

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
