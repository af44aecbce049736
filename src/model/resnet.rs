//! ResNet50, bottleneck v1.5 (stride on the 3x3), as torchvision's `resnet50`
//! (25,557,032 parameters at 1000 classes).
//!
//! He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR
//! 2016. Batch norm trains on batch statistics and evaluates on running ones.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::batch_norm::{batch_norm, BatchNorm2d};

use super::layers::{conv, linear, Conv, ConvSpec, Linear, WeightInit};
use super::network::{forward_stages, ModelConfig, Network};
use crate::ops::pool::{adaptive_avg_pool2d, max_pool2d, Pool2d};

const BN_EPS: f64 = 1e-5;
const EXPANSION: usize = 4;

fn conv_bn(spec: ConvSpec, conv_vb: VarBuilder, bn_vb: VarBuilder) -> Result<(Conv, BatchNorm2d)> {
    let spec = spec.no_bias().init(WeightInit::KaimingFanOut);
    Ok((conv(spec, conv_vb)?, batch_norm(spec.out_channels, BN_EPS, bn_vb)?))
}

fn apply(cb: &(Conv, BatchNorm2d), x: &Tensor, train: bool) -> Result<Tensor> {
    cb.1.forward_t(&cb.0.forward(x)?, train)
}

/// relu(bn(conv(x))), the ReLU fused into the batch norm.
fn apply_relu(cb: &(Conv, BatchNorm2d), x: &Tensor, train: bool) -> Result<Tensor> {
    cb.1.forward_relu_t(&cb.0.forward(x)?, train)
}

/// 1x1 reduce, 3x3 (carrying the stride), 1x1 expand, plus the shortcut.
struct Bottleneck {
    reduce: (Conv, BatchNorm2d),
    spatial: (Conv, BatchNorm2d),
    expand: (Conv, BatchNorm2d),
    downsample: Option<(Conv, BatchNorm2d)>,
}

impl Bottleneck {
    fn new(in_c: usize, width: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        let out_c = width * EXPANSION;
        let downsample = if stride != 1 || in_c != out_c {
            let d = vb.pp("downsample");
            Some(conv_bn(ConvSpec::new(in_c, out_c, 1).stride(stride), d.pp("0"), d.pp("1"))?)
        } else {
            None
        };
        Ok(Self {
            reduce: conv_bn(ConvSpec::new(in_c, width, 1), vb.pp("conv1"), vb.pp("bn1"))?,
            spatial: conv_bn(ConvSpec::new(width, width, 3).stride(stride).padding(1), vb.pp("conv2"), vb.pp("bn2"))?,
            expand: conv_bn(ConvSpec::new(width, out_c, 1), vb.pp("conv3"), vb.pp("bn3"))?,
            downsample,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = apply_relu(&self.reduce, x, train)?;
        let y = apply_relu(&self.spatial, &y, train)?;
        let y = apply(&self.expand, &y, train)?;
        let shortcut = match &self.downsample {
            Some(d) => apply(d, x, train)?,
            None => x.clone(),
        };
        crate::ops::add_relu::add_relu(&y, &shortcut)
    }
}

pub struct ResNet {
    stem: (Conv, BatchNorm2d),
    layers: Vec<Bottleneck>,
    fc: Linear,
}

impl ResNet {
    pub fn resnet50(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        Self::new(cfg, [3, 4, 6, 3], vb)
    }

    fn new(cfg: &ModelConfig, blocks: [usize; 4], vb: VarBuilder) -> Result<Self> {
        let stem = conv_bn(ConvSpec::new(cfg.in_channels, 64, 7).stride(2).padding(3), vb.pp("conv1"), vb.pp("bn1"))?;
        let mut layers = vec![];
        let mut in_c = 64;
        for (stage, (&count, width)) in blocks.iter().zip([64, 128, 256, 512]).enumerate() {
            let lvb = vb.pp(format!("layer{}", stage + 1));
            for i in 0..count {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                layers.push(Bottleneck::new(in_c, width, stride, lvb.pp(i.to_string()))?);
                in_c = width * EXPANSION;
            }
        }
        let fc = linear(in_c, cfg.num_classes, WeightInit::TorchDefault, vb.pp("fc"))?;
        Ok(Self { stem, layers, fc })
    }
}

impl Network for ResNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        forward_stages(self, x, train)
    }

    /// The stem, each bottleneck block, the classifier.
    fn stages(&self) -> usize {
        self.layers.len() + 2
    }

    fn forward_stage(&self, i: usize, x: &Tensor, train: bool) -> Result<Tensor> {
        if i == 0 {
            return max_pool2d(&apply_relu(&self.stem, x, train)?, Pool2d::new(3, 2).padding(1));
        }
        match self.layers.get(i - 1) {
            Some(block) => block.forward_t(x, train),
            None => self.fc.forward(&adaptive_avg_pool2d(x, 1, 1)?.flatten_from(1)?),
        }
    }
}
