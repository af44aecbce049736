//! SGD's update in place on the CPU: one pass over parameter, gradient and
//! momentum, no temporary tensors. The tensor-op version in `mod.rs`
//! allocates six parameter-sized tensors per step (for AlexNet's 61 M
//! parameters, 1.5 GB of fresh pages a step).
//!
//! The arithmetic is `mod.rs`'s, element by element, in f32:
//!   d = g + wd * p;  b = m * b + d;  p = p - lr * (nesterov ? d + m * b : b)
//!
//! One pass writes two tensors, p and b, and a candle in-place op holds one
//! storage mutably: so the op on p (`MomentumStep`) runs, while it holds p's
//! storage, an op on b (`MomentumPass`) that is handed p's values too.

use std::sync::Mutex;

use candle_core::{CpuStorage, InplaceOp1, InplaceOp2, Layout, Result, Tensor};

use crate::ops::cpu_slice::{f32_slice, f32_slice_mut};

/// Elements per parallel task: large enough to amortise the task.
const CHUNK: usize = 1 << 16;

/// SGD's settings for one parameter's step.
#[derive(Clone, Copy, Debug)]
pub struct StepSettings {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

/// On the parameter p: one step with momentum, given the gradient and the
/// momentum buffer (updated too).
pub struct MomentumStep<'a> {
    pub grad: &'a Tensor,
    pub buffer: &'a Tensor,
    pub settings: StepSettings,
}

/// On the momentum buffer b, given g, with p's values lent by `MomentumStep`.
struct MomentumPass<'a> {
    param: Mutex<&'a mut [f32]>,
    settings: StepSettings,
}

impl InplaceOp1 for MomentumStep<'_> {
    fn name(&self) -> &'static str {
        "sgd-momentum-step"
    }
    fn cpu_fwd(&self, p: &mut CpuStorage, pl: &Layout) -> Result<()> {
        let param = Mutex::new(f32_slice_mut(p, pl, "sgd: parameter")?);
        self.buffer.inplace_op2(self.grad, &MomentumPass { param, settings: self.settings })
    }
}

impl InplaceOp2 for MomentumPass<'_> {
    fn name(&self) -> &'static str {
        "sgd-momentum-pass"
    }
    fn cpu_fwd(&self, b: &mut CpuStorage, bl: &Layout, g: &CpuStorage, gl: &Layout) -> Result<()> {
        let b = f32_slice_mut(b, bl, "sgd: momentum")?;
        let g = f32_slice(g, gl, "sgd: gradient")?;
        let mut p = self.param.lock().unwrap();
        if !(b.len() == g.len() && b.len() == p.len()) {
            candle_core::bail!("sgd: momentum, gradient and parameter sizes differ");
        }
        let StepSettings { lr, momentum: m, weight_decay: wd, nesterov } = self.settings;
        crate::ops::par::for_each_chunk_pair(&mut p, b, CHUNK, |k, p, b| {
            for ((p, b), &g) in p.iter_mut().zip(b.iter_mut()).zip(&g[k * CHUNK..]) {
                let d = g + wd * *p;
                *b = m * *b + d;
                *p -= lr * if nesterov { d + m * *b } else { *b };
            }
        });
        Ok(())
    }
}

/// On the parameter p, given g: p = p - lr * (g + wd * p), SGD without
/// momentum.
pub struct PlainStep {
    pub lr: f32,
    pub weight_decay: f32,
}

impl InplaceOp2 for PlainStep {
    fn name(&self) -> &'static str {
        "sgd-plain-step"
    }
    fn cpu_fwd(&self, dst: &mut CpuStorage, dst_l: &Layout, g: &CpuStorage, gl: &Layout) -> Result<()> {
        let p = f32_slice_mut(dst, dst_l, "sgd: parameter")?;
        let g = f32_slice(g, gl, "sgd: gradient")?;
        if p.len() != g.len() {
            candle_core::bail!("sgd: gradient and parameter sizes differ");
        }
        let (lr, wd) = (self.lr, self.weight_decay);
        crate::ops::par::for_each_chunk(p, CHUNK, |k, p| {
            for (p, &g) in p.iter_mut().zip(&g[k * CHUNK..]) {
                *p -= lr * (g + wd * *p);
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The one-pass step over more than one chunk gives, bit for bit, the
    /// parameter and momentum the formula gives element by element.
    #[test]
    fn one_pass_matches_the_formula_across_chunks() {
        let n = CHUNK + CHUNK / 2 + 3;
        let value = |i: usize, seed: usize| ((i * 7919 + seed) % 1000) as f32 / 500.0 - 1.0;
        for nesterov in [false, true] {
            let settings = StepSettings { lr: 0.1, momentum: 0.9, weight_decay: 1e-4, nesterov };
            let (p0, b0, g): (Vec<f32>, Vec<f32>, Vec<f32>) = (
                (0..n).map(|i| value(i, 1)).collect(),
                (0..n).map(|i| value(i, 2)).collect(),
                (0..n).map(|i| value(i, 3)).collect(),
            );
            let dev = Device::Cpu;
            let (p, b, gt) = (
                Tensor::new(p0.as_slice(), &dev).unwrap(),
                Tensor::new(b0.as_slice(), &dev).unwrap(),
                Tensor::new(g.as_slice(), &dev).unwrap(),
            );
            p.inplace_op1(&MomentumStep { grad: &gt, buffer: &b, settings }).unwrap();
            let (mut want_p, mut want_b) = (p0.clone(), b0.clone());
            for i in 0..n {
                let d = g[i] + settings.weight_decay * want_p[i];
                want_b[i] = settings.momentum * want_b[i] + d;
                want_p[i] -= settings.lr * if nesterov { d + settings.momentum * want_b[i] } else { want_b[i] };
            }
            assert_eq!(p.to_vec1::<f32>().unwrap(), want_p, "parameter, nesterov {nesterov}");
            assert_eq!(b.to_vec1::<f32>().unwrap(), want_b, "momentum, nesterov {nesterov}");
        }
    }
}
