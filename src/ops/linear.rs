//! A fully connected layer as one graph node: y = (W x^T)^T + b, computed
//! as candle's own ops compute that expression (the same matmul on the same
//! layouts, the same add), so its bits are theirs, forward and backward. As
//! one node its weight and bias gradients reach the step's store without
//! candle's zero-filled accumulation (`param_grads.rs`), which for VGG16's
//! first fully connected layer held three 400 MB buffers at once.

use candle_core::backend::BackendStorage;
use candle_core::op::Add;
use candle_core::{CpuStorage, CudaStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::param_grads::hand_over;

/// y (N, out) from x (N, in), weight (out, in) and bias (out).
pub fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.apply_op3(weight, bias, LinearOp)
}

struct LinearOp;

/// The sizes of one call, checked: (N, in, out).
fn sizes(x: &Layout, w: &Layout, b: &Layout) -> Result<(usize, usize, usize)> {
    let (n, inputs) = x.shape().dims2()?;
    let (outputs, w_inputs) = w.shape().dims2()?;
    if w_inputs != inputs || b.shape().elem_count() != outputs || b.shape().rank() != 1 {
        candle_core::bail!(
            "linear: input {:?}, weight {:?} and bias {:?} do not fit (weight (out, in), bias (out))",
            x.shape(),
            w.shape(),
            b.shape()
        );
    }
    if n == 0 || inputs == 0 {
        candle_core::bail!("linear: input {:?} is empty (a batch of images with features is needed)", x.shape());
    }
    Ok((n, inputs, outputs))
}

/// M = W x^T (out, N), then y = M^T + b, on any backend.
fn forward<S: BackendStorage>(x: (&S, &Layout), w: (&S, &Layout), b: (&S, &Layout)) -> Result<(S, Shape)> {
    let (n, inputs, outputs) = sizes(x.1, w.1, b.1)?;
    let m = w.0.matmul(x.0, (1, outputs, n, inputs), w.1, &x.1.transpose(0, 1)?)?;
    let m_transposed = Layout::contiguous((outputs, n)).transpose(0, 1)?;
    let y = m.binary_impl::<Add>(b.0, &m_transposed, &b.1.broadcast_as((n, outputs))?)?;
    Ok((y, Shape::from((n, outputs))))
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "candle-mpi linear"
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
        forward((s1, l1), (s2, l2), (s3, l3))
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        forward((s1, l1), (s2, l2), (s3, l3))
    }

    /// The gradients as candle's backward of (W x^T)^T + b gives them: dM is
    /// dy^T made contiguous, dW = dM x, dx = (W^T dM)^T, db = dy summed over
    /// the batch. Computed from detached tensors: a gradient that kept a
    /// graph would carry the weight into whatever backward reads it next
    /// (a staged backward's earlier stage).
    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x_values, w_values, dy) = (x.detach(), weight.detach(), dy.detach());
        let dm = dy.t()?.contiguous()?;
        let dx = x.track_op().then(|| w_values.t()?.matmul(&dm)?.t()).transpose()?;
        let dw = dm.matmul(&x_values)?;
        let db = dy.sum(0)?;
        Ok((dx, hand_over(weight, dw), hand_over(bias, db)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Output and three gradients, bit for bit those of candle's
    /// (W x^T)^T + b, through candle's backward and through ours.
    #[test]
    fn matches_candles_ops_bit_for_bit() {
        let dev = Device::Cpu;
        let (n, inputs, outputs) = (5, 37, 11);
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, inputs), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (outputs, inputs), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, outputs, &dev).unwrap()).unwrap();
        let r = Tensor::randn(0f32, 1.0, (n, outputs), &dev).unwrap();
        let theirs = w.matmul(&x.t().unwrap()).unwrap().t().unwrap().broadcast_add(&b).unwrap();
        let ours = linear(&x, &w, &b).unwrap();
        assert_eq!(values(&ours), values(&theirs));
        let g_theirs = (&theirs * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for g_ours in [
            (&ours * &r).unwrap().sum_all().unwrap().backward().unwrap(),
            super::super::param_grads::backward(&(&ours * &r).unwrap().sum_all().unwrap()).unwrap(),
        ] {
            for v in [&x, &w, &b] {
                let g = g_ours.get(v).unwrap();
                assert_eq!(values(g), values(g_theirs.get(v).unwrap()));
                // A gradient is a value, not a node reaching back into the graph.
                assert!(!g.track_op());
            }
        }
    }

    #[test]
    fn shapes_that_do_not_fit_are_refused() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 3), candle_core::DType::F32, &dev).unwrap();
        let w = Tensor::zeros((4, 5), candle_core::DType::F32, &dev).unwrap();
        let b = Tensor::zeros(4, candle_core::DType::F32, &dev).unwrap();
        let err = linear(&x, &w, &b).unwrap_err().to_string();
        assert!(err.contains("do not fit"), "{err}");
    }
}
