//! VGG16 (configuration D, no batch norm), as torchvision's `vgg16`
//! (138,357,544 parameters at 1000 classes).
//!
//! Simonyan, Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
//! Recognition", ICLR 2015. Initialisation as torchvision: Kaiming normal
//! (fan-out) convolutions, N(0, 0.01) classifier, zero biases.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::layers::{conv, dropout, linear, Conv, ConvSpec, Linear, WeightInit};
use super::network::{forward_stages, ModelConfig, Network};
use crate::ops::pool::{adaptive_avg_pool2d, max_pool2d, Pool2d};

/// Output channels of each convolution; `None` is a 2x2 max-pool.
const VGG16: [Option<usize>; 18] = [
    Some(64),
    Some(64),
    None,
    Some(128),
    Some(128),
    None,
    Some(256),
    Some(256),
    Some(256),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
];

enum Stage {
    Conv(Conv),
    Pool,
}

pub struct Vgg {
    features: Vec<Stage>,
    fc: [Linear; 3],
    dropout: f32,
}

impl Vgg {
    pub fn vgg16(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let f = vb.pp("features");
        let mut features = vec![];
        let mut channels = cfg.in_channels;
        // torchvision's index: each convolution is followed by a ReLU, which takes an index too.
        let mut index = 0;
        for stage in VGG16 {
            match stage {
                Some(out) => {
                    let spec = ConvSpec::new(channels, out, 3).padding(1).init(WeightInit::KaimingFanOut);
                    features.push(Stage::Conv(conv(spec, f.pp(index.to_string()))?));
                    channels = out;
                    index += 2;
                }
                None => {
                    features.push(Stage::Pool);
                    index += 1;
                }
            }
        }
        let c = vb.pp("classifier");
        let init = WeightInit::Normal(0.01);
        let fc = [
            linear(512 * 7 * 7, 4096, init, c.pp("0"))?,
            linear(4096, 4096, init, c.pp("3"))?,
            linear(4096, cfg.num_classes, init, c.pp("6"))?,
        ];
        Ok(Self { features, fc, dropout: cfg.dropout.unwrap_or(0.5) })
    }
}

impl Network for Vgg {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        forward_stages(self, x, train)
    }

    /// One stage per entry of `features` (convolutions and pools), then one
    /// per classifier layer.
    fn stages(&self) -> usize {
        self.features.len() + 3
    }

    fn forward_stage(&self, i: usize, x: &Tensor, train: bool) -> Result<Tensor> {
        let [f1, f2, f3] = &self.fc;
        match (self.features.get(i), i - self.features.len().min(i)) {
            (Some(Stage::Conv(c)), _) => c.forward_relu(x),
            (Some(Stage::Pool), _) => max_pool2d(x, Pool2d::new(2, 2)),
            (None, 0) => {
                let x = adaptive_avg_pool2d(x, 7, 7)?.flatten_from(1)?;
                dropout(&f1.forward(&x)?.relu()?, self.dropout, train)
            }
            (None, 1) => dropout(&f2.forward(x)?.relu()?, self.dropout, train),
            (None, _) => f3.forward(x),
        }
    }
}
