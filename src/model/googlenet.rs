//! GoogLeNet (Inception v1 with batch norm), as torchvision's `googlenet`:
//! 6,624,904 parameters at 1000 classes without the auxiliary heads,
//! 13,004,888 with them.
//!
//! Szegedy et al., "Going Deeper with Convolutions", CVPR 2015; batch norm from
//! Ioffe, Szegedy, ICML 2015. As in torchvision, the "5x5" branch uses a 3x3
//! kernel, and every max-pool rounds up (ceil mode).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::batch_norm::{batch_norm, BatchNorm2d};

use super::layers::{conv, dropout, linear, side_by_side, Conv, ConvSpec, Linear, WeightInit};
use super::network::{ModelConfig, Network};
use crate::ops::pool::{adaptive_avg_pool2d, max_pool2d, Pool2d};

const BN_EPS: f64 = 1e-3;
const INIT: WeightInit = WeightInit::Normal(0.01);

/// Convolution without bias, batch norm, ReLU (torchvision's `BasicConv2d`).
struct BasicConv {
    conv: Conv,
    bn: BatchNorm2d,
}

impl BasicConv {
    fn new(spec: ConvSpec, vb: VarBuilder) -> Result<Self> {
        let spec = spec.no_bias().init(INIT);
        Ok(Self { conv: conv(spec, vb.pp("conv"))?, bn: batch_norm(spec.out_channels, BN_EPS, vb.pp("bn"))? })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.bn.forward_relu_t(&self.conv.forward(x)?, train)
    }
}

/// Four parallel branches concatenated on channels.
struct Inception {
    branch1: BasicConv,
    branch2: [BasicConv; 2],
    branch3: [BasicConv; 2],
    branch4: BasicConv,
}

impl Inception {
    #[allow(clippy::too_many_arguments)]
    fn new(
        in_c: usize,
        ch1: usize,
        ch3r: usize,
        ch3: usize,
        ch5r: usize,
        ch5: usize,
        pool: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let b2 = vb.pp("branch2");
        let b3 = vb.pp("branch3");
        Ok(Self {
            branch1: BasicConv::new(ConvSpec::new(in_c, ch1, 1), vb.pp("branch1"))?,
            branch2: [
                BasicConv::new(ConvSpec::new(in_c, ch3r, 1), b2.pp("0"))?,
                BasicConv::new(ConvSpec::new(ch3r, ch3, 3).padding(1), b2.pp("1"))?,
            ],
            branch3: [
                BasicConv::new(ConvSpec::new(in_c, ch5r, 1), b3.pp("0"))?,
                BasicConv::new(ConvSpec::new(ch5r, ch5, 3).padding(1), b3.pp("1"))?,
            ],
            // branch4.0 is the max-pool, which has no parameters.
            branch4: BasicConv::new(ConvSpec::new(in_c, pool, 1), vb.pp("branch4").pp("1"))?,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let b1 = || self.branch1.forward_t(x, train);
        let b2 = || self.branch2[1].forward_t(&self.branch2[0].forward_t(x, train)?, train);
        let b3 = || self.branch3[1].forward_t(&self.branch3[0].forward_t(x, train)?, train);
        let b4 = || self.branch4.forward_t(&max_pool2d(x, Pool2d::new(3, 1).padding(1).ceil())?, train);
        // The branches are independent: side by side on the compute threads,
        // their small ops keep both cores busy where each alone would not.
        let ((b1, b2), (b3, b4)) = side_by_side(|| side_by_side(b1, b2), || side_by_side(b3, b4));
        Tensor::cat(&[b1?, b2?, b3?, b4?], 1)
    }
}

/// Auxiliary classifier on an intermediate feature map (training only).
struct InceptionAux {
    conv: BasicConv,
    fc1: Linear,
    fc2: Linear,
}

impl InceptionAux {
    fn new(in_c: usize, num_classes: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: BasicConv::new(ConvSpec::new(in_c, 128, 1), vb.pp("conv"))?,
            fc1: linear(2048, 1024, INIT, vb.pp("fc1"))?,
            fc2: linear(1024, num_classes, INIT, vb.pp("fc2"))?,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = adaptive_avg_pool2d(x, 4, 4)?;
        let x = self.conv.forward_t(&x, train)?.flatten_from(1)?;
        let x = dropout(&self.fc1.forward(&x)?.relu()?, 0.7, train)?;
        self.fc2.forward(&x)
    }
}

pub struct GoogLeNet {
    stem: [BasicConv; 3],
    inception3: [Inception; 2],
    inception4: [Inception; 5],
    inception5: [Inception; 2],
    aux: Option<[InceptionAux; 2]>,
    fc: Linear,
    dropout: f32,
}

impl GoogLeNet {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let stem = [
            BasicConv::new(ConvSpec::new(cfg.in_channels, 64, 7).stride(2).padding(3), vb.pp("conv1"))?,
            BasicConv::new(ConvSpec::new(64, 64, 1), vb.pp("conv2"))?,
            BasicConv::new(ConvSpec::new(64, 192, 3).padding(1), vb.pp("conv3"))?,
        ];
        let inc = |name: &str, c: [usize; 7]| Inception::new(c[0], c[1], c[2], c[3], c[4], c[5], c[6], vb.pp(name));
        let inception3 = [
            inc("inception3a", [192, 64, 96, 128, 16, 32, 32])?,
            inc("inception3b", [256, 128, 128, 192, 32, 96, 64])?,
        ];
        let inception4 = [
            inc("inception4a", [480, 192, 96, 208, 16, 48, 64])?,
            inc("inception4b", [512, 160, 112, 224, 24, 64, 64])?,
            inc("inception4c", [512, 128, 128, 256, 24, 64, 64])?,
            inc("inception4d", [512, 112, 144, 288, 32, 64, 64])?,
            inc("inception4e", [528, 256, 160, 320, 32, 128, 128])?,
        ];
        let inception5 = [
            inc("inception5a", [832, 256, 160, 320, 32, 128, 128])?,
            inc("inception5b", [832, 384, 192, 384, 48, 128, 128])?,
        ];
        let aux = if cfg.aux_logits {
            Some([
                InceptionAux::new(512, cfg.num_classes, vb.pp("aux1"))?,
                InceptionAux::new(528, cfg.num_classes, vb.pp("aux2"))?,
            ])
        } else {
            None
        };
        let fc = linear(1024, cfg.num_classes, INIT, vb.pp("fc"))?;
        Ok(Self { stem, inception3, inception4, inception5, aux, fc, dropout: cfg.dropout.unwrap_or(0.2) })
    }
}

impl Network for GoogLeNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self.forward_with_aux(x, train)?.0)
    }

    fn forward_with_aux(&self, x: &Tensor, train: bool) -> Result<(Tensor, Vec<Tensor>)> {
        let pool = Pool2d::new(3, 2).ceil();
        let [c1, c2, c3] = &self.stem;
        let x = max_pool2d(&c1.forward_t(x, train)?, pool)?;
        let x = c3.forward_t(&c2.forward_t(&x, train)?, train)?;
        let mut x = max_pool2d(&x, pool)?;
        for block in &self.inception3 {
            x = block.forward_t(&x, train)?;
        }
        x = max_pool2d(&x, pool)?;
        let mut aux_logits = vec![];
        for (i, block) in self.inception4.iter().enumerate() {
            x = block.forward_t(&x, train)?;
            // aux1 reads inception4a's output, aux2 inception4d's.
            if let (true, Some(aux)) = (train, &self.aux) {
                match i {
                    0 => aux_logits.push(aux[0].forward_t(&x, train)?),
                    3 => aux_logits.push(aux[1].forward_t(&x, train)?),
                    _ => {}
                }
            }
        }
        x = max_pool2d(&x, Pool2d::new(2, 2).ceil())?;
        for block in &self.inception5 {
            x = block.forward_t(&x, train)?;
        }
        let x = adaptive_avg_pool2d(&x, 1, 1)?.flatten_from(1)?;
        let logits = self.fc.forward(&dropout(&x, self.dropout, train)?)?;
        Ok((logits, aux_logits))
    }
}
