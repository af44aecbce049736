//! The update: SGD with momentum, Nesterov and weight decay, as PyTorch
//! defines it (here), the learning-rate schedules of ImageNet training
//! (`schedule.rs`), and the same update in place on the CPU (`sgd_cpu.rs`).
//!
//! Per parameter p with gradient g (PyTorch's `torch.optim.SGD`, dampening 0):
//!   d = g + wd * p                  (no decay on biases and norm parameters)
//!   b = d on the first step, else momentum * b + d
//!   d = d + momentum * b (Nesterov)  or  d = b
//!   p = p - lr * d
//! Written in candle tensor ops for any device; on the CPU the same arithmetic
//! runs in place, without temporaries (`sgd_cpu.rs`).

pub mod schedule;
mod sgd_cpu;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::Serialize;

use self::sgd_cpu::{MomentumStep, PlainStep, StepSettings};

/// SGD's settings.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct SgdConfig {
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    /// What ImageNet training uses: momentum 0.9, weight decay 1e-4.
    fn default() -> Self {
        Self { momentum: 0.9, nesterov: false, weight_decay: 1e-4 }
    }
}

impl SgdConfig {
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!((0.0..1.0).contains(&self.momentum), "--momentum {}: must be in [0, 1)", self.momentum);
        anyhow::ensure!(self.weight_decay >= 0.0, "--weight-decay {}: must be 0 or more", self.weight_decay);
        anyhow::ensure!(!self.nesterov || self.momentum > 0.0, "--nesterov needs --momentum above 0");
        Ok(())
    }
}

/// True for parameters that get weight decay: weights of convolutions and
/// linear layers (2 or more dimensions), not biases or norm scales and shifts.
pub fn decays(var: &Var) -> bool {
    var.rank() >= 2
}

pub struct Sgd {
    params: Vec<(String, Var)>,
    momentum_buffers: Vec<Option<Tensor>>,
    cfg: SgdConfig,
}

impl Sgd {
    pub fn new(params: Vec<(String, Var)>, cfg: SgdConfig) -> anyhow::Result<Self> {
        cfg.check()?;
        let momentum_buffers = vec![None; params.len()];
        Ok(Self { params, momentum_buffers, cfg })
    }

    /// The settings it updates with.
    pub fn config(&self) -> SgdConfig {
        self.cfg
    }

    /// The momentum buffers by parameter name (None before a parameter's first step).
    pub fn momentum(&self) -> Vec<(String, Option<Tensor>)> {
        self.params.iter().map(|(n, _)| n.clone()).zip(self.momentum_buffers.iter().cloned()).collect()
    }

    /// Restores parameter `i`'s momentum buffer (from a checkpoint).
    pub fn set_momentum(&mut self, i: usize, buffer: Option<Tensor>) {
        self.momentum_buffers[i] = buffer;
    }

    /// One update with learning rate `lr`. Parameters without a gradient are
    /// left as they are (and their momentum is not advanced).
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> candle_core::Result<()> {
        let (m, nesterov) = (self.cfg.momentum, self.cfg.nesterov);
        let mut in_place = Vec::new();
        for ((_, var), buf) in self.params.iter().zip(self.momentum_buffers.iter_mut()) {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            let wd = if decays(var) { self.cfg.weight_decay } else { 0.0 };
            if var.device().is_cpu() && var.dtype() == DType::F32 {
                in_place.push((var, g, buf, wd));
                continue;
            }
            // Detached: the update must not record autograd history, or every
            // momentum buffer would keep the previous step's tensors alive.
            let p = var.as_tensor().detach();
            let mut d = g.detach();
            if wd > 0.0 {
                d = (d + (&p * wd)?)?;
            }
            if m > 0.0 {
                let b = match buf.take() {
                    None => d.clone(),
                    Some(b) => ((b * m)? + &d)?,
                };
                d = if self.cfg.nesterov { (d + (&b * m)?)? } else { b.clone() };
                *buf = Some(b);
            }
            var.set(&(&p - (d * lr)?)?)?;
        }
        // One task a parameter: most of a network's parameters are a chunk
        // or two of the update's loop, which alone would leave the other
        // threads idle, one parameter after another.
        crate::ops::par::map_owned(in_place, |(var, g, buf, wd)| {
            update_in_place(var, &g.contiguous()?, buf, lr, m, wd, nesterov)
        })
        .into_iter()
        .collect()
    }
}

/// The same update as `Sgd::step`'s tensor ops, in place on CPU storage in
/// one pass (see sgd_cpu.rs).
fn update_in_place(
    var: &Var,
    g: &Tensor,
    buf: &mut Option<Tensor>,
    lr: f64,
    m: f64,
    wd: f64,
    nesterov: bool,
) -> candle_core::Result<()> {
    let p = var.as_tensor();
    let (lr, m32, wd) = (lr as f32, m as f32, wd as f32);
    if m == 0.0 {
        return p.inplace_op2(g, &PlainStep { lr, weight_decay: wd });
    }
    // The first step's buffer is d itself: m * 0 + d.
    let buffer = match buf {
        Some(b) => b.clone(),
        None => buf.insert(p.zeros_like()?).clone(),
    };
    p.inplace_op1(&MomentumStep {
        grad: g,
        buffer: &buffer,
        settings: StepSettings { lr, momentum: m32, weight_decay: wd, nesterov },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// PyTorch's update written out per scalar, for comparison.
    fn reference(p0: &[f64], grads: &[Vec<f64>], lr: f64, cfg: SgdConfig, decay: bool) -> Vec<f64> {
        let mut p = p0.to_vec();
        let mut b: Option<Vec<f64>> = None;
        for g in grads {
            let d: Vec<f64> =
                p.iter().zip(g).map(|(p, g)| g + if decay { cfg.weight_decay * p } else { 0.0 }).collect();
            let nb: Vec<f64> = match &b {
                None => d.clone(),
                Some(b) => b.iter().zip(&d).map(|(b, d)| cfg.momentum * b + d).collect(),
            };
            let step: Vec<f64> =
                if cfg.nesterov { d.iter().zip(&nb).map(|(d, b)| d + cfg.momentum * b).collect() } else { nb.clone() };
            b = Some(nb);
            for (p, s) in p.iter_mut().zip(step) {
                *p -= lr * s;
            }
        }
        p
    }

    /// f64 runs the tensor-op update (as on a GPU), f32 the in-place CPU one.
    #[test]
    fn matches_pytorch_update_for_weights_and_biases() {
        check_against_reference(DType::F64, 1e-12);
        check_against_reference(DType::F32, 1e-6);
    }

    fn check_against_reference(dtype: DType, tolerance: f64) {
        let dev = Device::Cpu;
        for cfg in [
            SgdConfig::default(),
            SgdConfig { momentum: 0.9, nesterov: true, weight_decay: 5e-4 },
            SgdConfig { momentum: 0.0, nesterov: false, weight_decay: 0.0 },
        ] {
            let w0 = vec![0.5, -1.0, 2.0, 0.25];
            let weight =
                Var::from_tensor(&Tensor::from_vec(w0.clone(), (2, 2), &dev).unwrap().to_dtype(dtype).unwrap())
                    .unwrap();
            let bias =
                Var::from_tensor(&Tensor::from_vec(w0.clone(), 4, &dev).unwrap().to_dtype(dtype).unwrap()).unwrap();
            let mut sgd = Sgd::new(vec![("w".into(), weight.clone()), ("b".into(), bias.clone())], cfg).unwrap();
            let grads: Vec<Vec<f64>> =
                (0..4).map(|s| (0..4).map(|i| (i as f64 - 1.5) * (s as f64 + 1.0) * 0.1).collect()).collect();
            for g in &grads {
                let mut store = GradStore::default();
                store.insert(
                    weight.as_tensor(),
                    Tensor::from_vec(g.clone(), (2, 2), &dev).unwrap().to_dtype(dtype).unwrap(),
                );
                store.insert(bias.as_tensor(), Tensor::from_vec(g.clone(), 4, &dev).unwrap().to_dtype(dtype).unwrap());
                sgd.step(&store, 0.1).unwrap();
            }
            let got_w: Vec<f64> =
                weight.as_tensor().to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let got_b: Vec<f64> = bias.as_tensor().to_dtype(DType::F64).unwrap().to_vec1().unwrap();
            for (g, r) in got_w.iter().zip(reference(&w0, &grads, 0.1, cfg, true)) {
                assert!((g - r).abs() < tolerance, "{dtype:?} {cfg:?} weight: {g} vs {r}");
            }
            for (g, r) in got_b.iter().zip(reference(&w0, &grads, 0.1, cfg, false)) {
                assert!((g - r).abs() < tolerance, "{dtype:?} {cfg:?} bias (no decay): {g} vs {r}");
            }
        }
        let v = Var::zeros(3, DType::F32, &dev).unwrap();
        assert!(!decays(&v));
    }

    /// A leak once found here: with weight decay the momentum buffer recorded
    /// autograd history, so each step's buffer kept the last one alive (memory
    /// grew ~128 KB per step for the small CNN). Buffers must be plain data.
    #[test]
    fn momentum_buffers_carry_no_autograd_history() {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::ones((3, 3), DType::F32, &dev).unwrap()).unwrap();
        let mut sgd = Sgd::new(vec![("w".into(), w.clone())], SgdConfig::default()).unwrap();
        for _ in 0..3 {
            let loss = (w.as_tensor() * 2.0).unwrap().sum_all().unwrap();
            sgd.step(&loss.backward().unwrap(), 0.1).unwrap();
        }
        let buffer = sgd.momentum()[0].1.clone().unwrap();
        assert!(!buffer.track_op(), "the momentum buffer records an autograd graph");
    }

    #[test]
    fn bad_settings_name_the_flag() {
        let e = SgdConfig { momentum: 1.5, ..Default::default() }.check().unwrap_err().to_string();
        assert!(e.contains("--momentum 1.5"), "{e}");
        let e = SgdConfig { weight_decay: -1.0, ..Default::default() }.check().unwrap_err().to_string();
        assert!(e.contains("--weight-decay -1"), "{e}");
        let e = SgdConfig { momentum: 0.0, nesterov: true, weight_decay: 0.0 }.check().unwrap_err().to_string();
        assert!(e.contains("--nesterov"), "{e}");
    }
}
