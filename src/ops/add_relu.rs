//! relu(a + b), the end of a residual block, as one graph node on the CPU.
//!
//! candle's own `(a + b).relu()` is two nodes, and backward then takes six
//! passes over the activation (a mask, its conversion, the product, and a
//! zero-filled sum for each node), most of them on one thread. Here forward
//! is one parallel pass and backward one mask pass, whose result is both
//! inputs' gradient. The mask passes the gradient where a + b >= 0, as
//! candle's ReLU does, so the gradients are the same bits as candle's.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::cpu_slice::f32_slice;

struct AddRelu;

/// dy where a + b >= 0, else 0, on (a, b, dy) (backward, not itself differentiated).
struct AddReluGrad;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "candle-mpi add-relu"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let a = f32_slice(s1, l1, "add-relu: first input")?;
        let b = f32_slice(s2, l2, "add-relu: second input")?;
        let y = super::par::elementwise(a.len(), |at, out| {
            for ((o, &x), &z) in out.iter_mut().zip(&a[at..]).zip(&b[at..]) {
                *o = (x + z).max(0.0);
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
    fn bwd(&self, a: &Tensor, b: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = a.apply_op3_no_bwd(b, &dy.contiguous()?, &AddReluGrad)?;
        Ok((Some(g.clone()), Some(g)))
    }
}

impl CustomOp3 for AddReluGrad {
    fn name(&self) -> &'static str {
        "candle-mpi add-relu backward"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = f32_slice(s1, l1, "add-relu backward: first input")?;
        let b = f32_slice(s2, l2, "add-relu backward: second input")?;
        let dy = f32_slice(s3, l3, "add-relu backward: output gradient")?;
        let g = super::par::elementwise(dy.len(), |at, out| {
            for (((o, &x), &z), &d) in out.iter_mut().zip(&a[at..]).zip(&b[at..]).zip(&dy[at..]) {
                *o = if x + z >= 0.0 { d } else { 0.0 };
            }
        });
        Ok((CpuStorage::F32(g), l3.shape().clone()))
    }
}

/// relu(a + b) for tensors of one shape: one node on the CPU (f32), candle's
/// two elsewhere.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.device().is_cpu() && a.dtype() == candle_core::DType::F32 && a.shape() == b.shape() {
        a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
    } else {
        (a + b)?.relu()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Output and both gradients equal candle's `(a + b).relu()` bit for
    /// bit, zeros of a + b included.
    #[test]
    fn matches_candle_bit_for_bit() {
        let dev = Device::Cpu;
        let n = 17 * 3000; // more than 3 chunks, the last one short
        let av: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 8.0).collect();
        // b = -a on every seventh element: a + b is exactly 0 there.
        let bv: Vec<f32> =
            (0..n).map(|i| if i % 7 == 0 { -av[i] } else { ((i * 13 % 29) as f32 - 14.0) / 4.0 }).collect();
        let a = Var::from_vec(av, (n / 17, 17), &dev).unwrap();
        let b = Var::from_vec(bv, (n / 17, 17), &dev).unwrap();
        let w =
            Tensor::from_vec((0..n).map(|i| (i % 11) as f32 - 5.0).collect::<Vec<_>>(), (n / 17, 17), &dev).unwrap();
        let ours = add_relu(&a, &b).unwrap();
        let theirs = (a.as_tensor() + b.as_tensor()).unwrap().relu().unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&ours), flat(&theirs));
        let go = (ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gt = (theirs * &w).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&a, &b] {
            assert_eq!(flat(go.get(v).unwrap()), flat(gt.get(v).unwrap()));
        }
    }
}
