//! A small CNN for fast tests and tiny data sets (the 8x8 UCI digits): two
//! 3x3 convolutions with batch norm, one 2x2 max-pool, a 2x2 adaptive average
//! pool and a linear classifier. Not a paper's network.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::batch_norm::{batch_norm, BatchNorm2d};

use super::layers::{conv, linear, Conv, ConvSpec, Linear, WeightInit};
use super::network::{forward_stages, ModelConfig, Network};
use crate::ops::pool::{adaptive_avg_pool2d, max_pool2d, Pool2d};

pub struct SmallCnn {
    conv1: Conv,
    bn1: BatchNorm2d,
    conv2: Conv,
    bn2: BatchNorm2d,
    fc: Linear,
}

impl SmallCnn {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let spec = |i, o| ConvSpec::new(i, o, 3).padding(1).no_bias().init(WeightInit::KaimingFanOut);
        Ok(Self {
            conv1: conv(spec(cfg.in_channels, 16), vb.pp("conv1"))?,
            bn1: batch_norm(16, 1e-5, vb.pp("bn1"))?,
            conv2: conv(spec(16, 32), vb.pp("conv2"))?,
            bn2: batch_norm(32, 1e-5, vb.pp("bn2"))?,
            fc: linear(32 * 2 * 2, cfg.num_classes, WeightInit::TorchDefault, vb.pp("fc"))?,
        })
    }
}

impl Network for SmallCnn {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        forward_stages(self, x, train)
    }

    fn stages(&self) -> usize {
        3
    }

    fn forward_stage(&self, i: usize, x: &Tensor, train: bool) -> Result<Tensor> {
        match i {
            0 => max_pool2d(&self.bn1.forward_relu_t(&self.conv1.forward(x)?, train)?, Pool2d::new(2, 2).ceil()),
            1 => adaptive_avg_pool2d(&self.bn2.forward_relu_t(&self.conv2.forward(x)?, train)?, 2, 2)?.flatten_from(1),
            _ => self.fc.forward(x),
        }
    }
}
