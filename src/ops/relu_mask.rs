//! dy where y > 0, else 0: the gradient through a ReLU fused into the op
//! that made y (the convolution), read from its output.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::cpu_slice::f32_slice;

struct ReluMask;

impl CustomOp2 for ReluMask {
    fn name(&self) -> &'static str {
        "candle-mpi relu mask"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = f32_slice(s1, l1, "relu mask: output")?;
        let dy = f32_slice(s2, l2, "relu mask: output gradient")?;
        if y.len() != dy.len() {
            candle_core::bail!("relu mask: {} outputs, {} gradients", y.len(), dy.len());
        }
        let g = super::par::elementwise(dy.len(), |at, out| {
            for ((o, &v), &d) in out.iter_mut().zip(&y[at..]).zip(&dy[at..]) {
                *o = if v > 0.0 { d } else { 0.0 };
            }
        });
        Ok((CpuStorage::F32(g), l2.shape().clone()))
    }
}

/// dy masked by y > 0, not itself differentiated: one pass on the CPU,
/// candle's comparison and select elsewhere.
pub fn mask(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    if y.device().is_cpu() {
        y.contiguous()?.apply_op2_no_bwd(&dy.contiguous()?, &ReluMask)
    } else {
        y.gt(0f64)?.where_cond(dy, &dy.zeros_like()?)
    }
}
