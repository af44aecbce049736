//! AlexNet, single tower, as torchvision's `alexnet` (61,100,840 parameters at
//! 1000 classes).
//!
//! Krizhevsky, Sutskever, Hinton, "ImageNet Classification with Deep
//! Convolutional Neural Networks", NIPS 2012; torchvision's variant follows
//! Krizhevsky, "One weird trick for parallelizing convolutional neural
//! networks", arXiv 1404.5997 (64-192-384-256-256 channels).
//!
//! Small inputs: torchvision's three 3x3/2 max-pools need at least 63 pixels of
//! input. Below that we give each pool one pixel of padding (padding is never
//! the maximum), which keeps every parameter and lets 32-pixel images through:
//! 32 -> conv1 7 -> pool 4 -> pool 2 -> pool 1 -> adaptive 6x6.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::layers::{conv, dropout, linear, Conv, ConvSpec, Linear, WeightInit};
use super::network::{forward_stages, ModelConfig, Network};
use crate::ops::pool::{adaptive_avg_pool2d, max_pool2d, Pool2d};

/// The smallest input torchvision's unpadded pools accept.
pub const UNPADDED_MIN_INPUT: usize = 63;

pub struct AlexNet {
    convs: [Conv; 5],
    pool: Pool2d,
    fc: [Linear; 3],
    dropout: f32,
}

impl AlexNet {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let f = vb.pp("features");
        let convs = [
            conv(ConvSpec::new(cfg.in_channels, 64, 11).stride(4).padding(2), f.pp("0"))?,
            conv(ConvSpec::new(64, 192, 5).padding(2), f.pp("3"))?,
            conv(ConvSpec::new(192, 384, 3).padding(1), f.pp("6"))?,
            conv(ConvSpec::new(384, 256, 3).padding(1), f.pp("8"))?,
            conv(ConvSpec::new(256, 256, 3).padding(1), f.pp("10"))?,
        ];
        let c = vb.pp("classifier");
        let init = WeightInit::TorchDefault;
        let fc = [
            linear(256 * 6 * 6, 4096, init, c.pp("1"))?,
            linear(4096, 4096, init, c.pp("4"))?,
            linear(4096, cfg.num_classes, init, c.pp("6"))?,
        ];
        let pool = if cfg.image_size < UNPADDED_MIN_INPUT { Pool2d::new(3, 2).padding(1) } else { Pool2d::new(3, 2) };
        Ok(Self { convs, pool, fc, dropout: cfg.dropout.unwrap_or(0.5) })
    }
}

impl Network for AlexNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        forward_stages(self, x, train)
    }

    /// One stage per layer with weights.
    fn stages(&self) -> usize {
        8
    }

    fn forward_stage(&self, i: usize, x: &Tensor, train: bool) -> Result<Tensor> {
        let [f1, f2, f3] = &self.fc;
        match i {
            0 | 1 => max_pool2d(&self.convs[i].forward_relu(x)?, self.pool),
            2 | 3 => self.convs[i].forward_relu(x),
            4 => adaptive_avg_pool2d(&max_pool2d(&self.convs[4].forward_relu(x)?, self.pool)?, 6, 6)?.flatten_from(1),
            5 => f1.forward(&dropout(x, self.dropout, train)?)?.relu(),
            6 => f2.forward(&dropout(x, self.dropout, train)?)?.relu(),
            _ => f3.forward(x),
        }
    }
}
