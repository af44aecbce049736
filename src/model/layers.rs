//! Layer builders shared by the networks: convolution and linear layers that know
//! their initialisation and count their multiply-adds
//! (batch norm is in batch_norm.rs).
//!
//! The multiply-add count is what `candle-mpi models` reports: it is taken from
//! the shapes a real forward pass produces, layer by layer, so it cannot drift
//! from the network definitions.

use std::cell::Cell;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use candle_nn::{Conv2d, Conv2dConfig, Init, VarBuilder};

use crate::ops::conv::{conv2d_gemm, conv2d_gemm_relu, Geometry};

thread_local! {
    /// Multiply-adds recorded by the layers while a count is open on this thread.
    static MACS: Cell<Option<u64>> = const { Cell::new(None) };
}

fn record_macs(n: usize) {
    MACS.with(|m| {
        if let Some(total) = m.get() {
            m.set(Some(total + n as u64));
        }
    });
}

/// Runs `f` and returns its result with the multiply-adds of the convolution and
/// linear layers it ran on this thread (the count torchvision reports as "GFLOPS").
pub fn count_macs<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let before = MACS.with(|m| m.replace(Some(0)));
    let out = f();
    let total = MACS.with(|m| m.replace(before)).unwrap_or(0);
    (out, total)
}

/// a() and b() side by side on the compute threads when called from one of
/// them, else one after the other; in turn, too, while a multiply-add count
/// is open on this thread, since the count is the thread's own. Each op's
/// arithmetic follows from its shapes alone, so the values are the same
/// either way.
pub fn side_by_side<A: Send, B: Send>(a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B + Send) -> (A, B) {
    let counting = MACS.with(|m| m.get().is_some());
    if counting || rayon::current_thread_index().is_none() {
        (a(), b())
    } else {
        rayon::join(a, b)
    }
}

/// How a weight tensor is initialised (the schemes the torchvision definitions use).
#[derive(Clone, Copy, Debug)]
pub enum WeightInit {
    /// PyTorch's layer default: uniform in +-1/sqrt(fan_in), for weight and bias.
    TorchDefault,
    /// Kaiming normal, fan-out, ReLU gain; bias zero (VGG, ResNet convolutions).
    KaimingFanOut,
    /// Normal with this standard deviation; bias zero (VGG and GoogLeNet classifiers).
    Normal(f64),
}

impl WeightInit {
    fn weight(self, fan_in: usize) -> Init {
        match self {
            WeightInit::TorchDefault => uniform_bound(fan_in),
            WeightInit::KaimingFanOut => Init::Kaiming {
                dist: NormalOrUniform::Normal,
                fan: FanInOut::FanOut,
                non_linearity: NonLinearity::ReLU,
            },
            WeightInit::Normal(std) => Init::Randn { mean: 0.0, stdev: std },
        }
    }

    fn bias(self, fan_in: usize) -> Init {
        match self {
            WeightInit::TorchDefault => uniform_bound(fan_in),
            _ => Init::Const(0.0),
        }
    }
}

fn uniform_bound(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    Init::Uniform { lo: -bound, up: bound }
}

/// Shape and options of a square 2-D convolution.
#[derive(Clone, Copy, Debug)]
pub struct ConvSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub bias: bool,
    pub init: WeightInit,
}

impl ConvSpec {
    /// A stride-1 convolution without padding, with bias and PyTorch's default init.
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize) -> Self {
        Self { in_channels, out_channels, kernel, stride: 1, padding: 0, bias: true, init: WeightInit::TorchDefault }
    }
    pub fn stride(self, stride: usize) -> Self {
        Self { stride, ..self }
    }
    pub fn padding(self, padding: usize) -> Self {
        Self { padding, ..self }
    }
    pub fn no_bias(self) -> Self {
        Self { bias: false, ..self }
    }
    pub fn init(self, init: WeightInit) -> Self {
        Self { init, ..self }
    }
}

/// A convolution that counts its multiply-adds.
#[derive(Clone, Debug)]
pub struct Conv {
    conv: Conv2d,
    geometry: Geometry,
    macs_per_output: usize,
}

/// True unless CANDLE_MPI_CONV=candle asks for candle's own conv2d (to
/// measure the two side by side).
fn our_conv() -> bool {
    static CHOICE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CHOICE.get_or_init(|| std::env::var("CANDLE_MPI_CONV").map_or(true, |v| v != "candle"))
}

pub fn conv(spec: ConvSpec, vb: VarBuilder) -> Result<Conv> {
    let fan_in = spec.in_channels * spec.kernel * spec.kernel;
    let weight = vb.get_with_hints(
        (spec.out_channels, spec.in_channels, spec.kernel, spec.kernel),
        "weight",
        spec.init.weight(fan_in),
    )?;
    let bias =
        if spec.bias { Some(vb.get_with_hints(spec.out_channels, "bias", spec.init.bias(fan_in))?) } else { None };
    let cfg = Conv2dConfig { padding: spec.padding, stride: spec.stride, dilation: 1, groups: 1, cudnn_fwd_algo: None };
    let geometry = Geometry { kernel: spec.kernel, stride: spec.stride, padding: spec.padding };
    Ok(Conv { conv: Conv2d::new(weight, bias, cfg), geometry, macs_per_output: fan_in })
}

impl Conv {
    /// relu(conv(x)): one node on the CPU, keeping one activation, not two.
    pub fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, true)
    }

    fn apply(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        // Ours on the CPU and the GPU (conv.rs: GEMMs each way, no
        // transposed-convolution kernel); candle's conv2d where asked or on
        // other devices and types.
        let ours = x.dtype() == DType::F32 && (x.device().is_cpu() || x.device().is_cuda());
        let y = if ours && our_conv() {
            let gemm = if relu { conv2d_gemm_relu } else { conv2d_gemm };
            gemm(x, self.conv.weight(), self.conv.bias(), self.geometry)?
        } else if relu {
            self.conv.forward(x)?.relu()?
        } else {
            self.conv.forward(x)?
        };
        record_macs(y.elem_count() * self.macs_per_output);
        Ok(y)
    }
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, false)
    }
}

/// A fully connected layer (weight (out, in), PyTorch's layout) that counts
/// its multiply-adds.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Tensor,
    in_features: usize,
}

pub fn linear(in_features: usize, out_features: usize, init: WeightInit, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get_with_hints((out_features, in_features), "weight", init.weight(in_features))?;
    let bias = vb.get_with_hints(out_features, "bias", init.bias(in_features))?;
    Ok(Linear { weight, bias, in_features })
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // One node (ops/linear.rs): its parameter gradients skip candle's
        // zero-filled accumulation.
        let y = crate::ops::linear::linear(x, &self.weight, &self.bias)?;
        record_macs(y.elem_count() * self.in_features);
        Ok(y)
    }
}

/// Dropout that is the identity outside training or when `p` is zero.
pub fn dropout(x: &Tensor, p: f32, train: bool) -> Result<Tensor> {
    if train && p > 0.0 {
        candle_nn::ops::dropout(x, p)
    } else {
        Ok(x.clone())
    }
}
