//! Batch norm as a layer: learnt scale and shift and running statistics,
//! named as torchvision names them. Training on the CPU in f32 runs the fused
//! op of `ops::batch_norm` (the ReLU after it fused in); evaluation, other
//! devices and other dtypes use candle-nn's batch norm, and
//! CANDLE_MPI_BN=candle uses it for training on the CPU too, to measure the
//! two side by side. Running statistics are updated as candle-nn and PyTorch
//! do (unbiased variance, momentum 0.1).

use candle_core::{DType, ModuleT, Result, Tensor, Var};
use candle_nn::{BatchNorm, BatchNormConfig, VarBuilder};

use crate::ops::batch_norm::{train_forward, Stats};

/// Batch norm over channels (dim 1) with learnt scale and shift and running
/// statistics, named as torchvision names them (weight, bias, running_mean,
/// running_var).
#[derive(Clone, Debug)]
pub struct BatchNorm2d {
    candle: BatchNorm,
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    eps: f64,
    momentum: f64,
}

/// Batch norm with weight 1, bias 0, PyTorch's momentum 0.1 and the given epsilon.
pub fn batch_norm(channels: usize, eps: f64, vb: VarBuilder) -> Result<BatchNorm2d> {
    let cfg = BatchNormConfig { eps, remove_mean: true, affine: true, momentum: 0.1 };
    let candle = candle_nn::batch_norm(channels, cfg, vb)?;
    let (weight, bias) = candle.weight_and_bias().map(|(w, b)| (w.clone(), b.clone())).expect("affine batch norm");
    // The running statistics are variables of the VarMap: these share their storage.
    let running_mean = Var::from_tensor(candle.running_mean())?;
    let running_var = Var::from_tensor(candle.running_var())?;
    Ok(BatchNorm2d { candle, weight, bias, running_mean, running_var, eps, momentum: cfg.momentum })
}

/// True unless CANDLE_MPI_BN=candle asks for candle-nn's batch norm on the CPU too.
fn fused_on_cpu() -> bool {
    static CHOICE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CHOICE.get_or_init(|| std::env::var("CANDLE_MPI_BN").map_or(true, |v| v != "candle"))
}

impl BatchNorm2d {
    /// Batch norm alone.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward(x, train, false)
    }

    /// relu(batch_norm(x)).
    pub fn forward_relu_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward(x, train, true)
    }

    fn forward(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        if !(train && x.device().is_cpu() && x.dtype() == DType::F32 && x.rank() == 4 && fused_on_cpu()) {
            let y = self.candle.forward_t(x, train)?;
            return if relu { y.relu() } else { Ok(y) };
        }
        let (y, Stats { mean, var }) = train_forward(x, &self.weight, &self.bias, self.eps, relu)?;
        self.update_running(&mean, &var, x.elem_count() / x.dim(1)?)
            .map_err(|e| e.context("batch norm: running statistics"))?;
        Ok(y)
    }

    /// running = (1 - momentum) running + momentum batch, with the batch's
    /// unbiased variance (M / (M - 1) of the one used to normalise).
    fn update_running(&self, mean: &[f64], var: &[f64], per_channel: usize) -> Result<()> {
        let m = self.momentum;
        let unbias = per_channel as f64 / (per_channel.max(2) - 1) as f64;
        let blend = |running: &Var, batch: Vec<f64>| -> Result<()> {
            let old: Vec<f32> = running.as_tensor().to_vec1()?;
            let new: Vec<f32> = old.iter().zip(batch).map(|(&r, b)| ((1.0 - m) * r as f64 + m * b) as f32).collect();
            running.set(&Tensor::from_vec(new, old.len(), running.device())?)
        };
        blend(&self.running_mean, mean.to_vec())?;
        blend(&self.running_var, var.iter().map(|v| v * unbias).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn pseudo(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) % 1000) as f32 / 250.0 - 1.5)
            .collect()
    }

    fn var(len: usize, seed: u32) -> Var {
        Var::from_vec(pseudo(len, seed), len, &Device::Cpu).unwrap()
    }

    /// Ours on f32 parameters and running statistics, and the same values in
    /// f64 for the reference.
    fn ours(c: usize) -> BatchNorm2d {
        let (w, b) = (var(c, 11), var(c, 12));
        let (rm, rv) = (var(c, 13), Var::from_tensor(&var(c, 14).as_tensor().abs().unwrap()).unwrap());
        BatchNorm2d {
            candle: BatchNorm::new_with_momentum(
                c,
                rm.as_tensor().clone(),
                rv.as_tensor().clone(),
                w.as_tensor().clone(),
                b.as_tensor().clone(),
                1e-3,
                0.1,
            )
            .unwrap(),
            weight: w.as_tensor().clone(),
            bias: b.as_tensor().clone(),
            running_mean: rm,
            running_var: rv,
            eps: 1e-3,
            momentum: 0.1,
        }
    }

    /// candle-nn's batch norm in f64 on the same values: the reference.
    fn reference(ours: &BatchNorm2d) -> (BatchNorm, Var, Var) {
        let f64_var = |t: &Tensor| Var::from_tensor(&t.to_dtype(DType::F64).unwrap()).unwrap();
        let (w, b) = (f64_var(&ours.weight), f64_var(&ours.bias));
        let bn = BatchNorm::new_with_momentum(
            ours.weight.dim(0).unwrap(),
            f64_var(ours.running_mean.as_tensor()).as_tensor().clone(),
            f64_var(ours.running_var.as_tensor()).as_tensor().clone(),
            w.as_tensor().clone(),
            b.as_tensor().clone(),
            ours.eps,
            ours.momentum,
        )
        .unwrap();
        (bn, w, b)
    }

    /// Worst difference relative to the reference's largest magnitude.
    fn assert_close(a: &Tensor, reference: &Tensor, tol: f64, what: &str) {
        assert_eq!(a.dims(), reference.dims(), "{what}: shapes");
        let a: Vec<f64> = a.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap();
        let b: Vec<f64> = reference.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap();
        let scale = b.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
        let worst = a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
        assert!(worst <= tol * scale, "{what}: off by {worst:e} of {scale:e}");
    }

    /// Output, the three gradients and the running statistics against
    /// candle-nn's batch norm in f64 (followed by candle's ReLU where fused),
    /// for a contiguous input and for the convolution's channel-major view.
    #[test]
    fn matches_candle_nn_batch_norm_in_f64() {
        let dev = Device::Cpu;
        for (n, c, h, w) in [(4, 3, 5, 7), (2, 6, 1, 1), (3, 4, 40, 60)] {
            for channel_major in [false, true] {
                for relu in [false, true] {
                    let what = format!("{n}x{c}x{h}x{w} channel-major {channel_major} relu {relu}");
                    let bn = ours(c);
                    let (reference, wt64, bs64) = reference(&bn);
                    let values = pseudo(n * c * h * w, 1);
                    // The convolution's output is (C, N, H, W) in memory, viewed as (N, C, H, W).
                    let dims = if channel_major { (c, n, h, w) } else { (n, c, h, w) };
                    let x = Var::from_vec(values, dims, &dev).unwrap();
                    let x64 = Var::from_tensor(&x.as_tensor().to_dtype(DType::F64).unwrap()).unwrap();
                    let view = |t: &Tensor| {
                        if channel_major {
                            t.transpose(0, 1).unwrap()
                        } else {
                            t.clone()
                        }
                    };
                    let y = bn.forward(&view(&x), true, relu).unwrap();
                    let expected = reference.forward_t(&view(&x64), true).unwrap();
                    let expected = if relu { expected.relu().unwrap() } else { expected };
                    assert_close(&y, &expected, 1e-6, &format!("{what}: output"));
                    assert!(y.is_contiguous());

                    // Through a concatenation on channels, as in GoogLeNet: dy then
                    // arrives as a strided slice of the concatenation's gradient.
                    let (y, expected) = (
                        Tensor::cat(&[&y, &y.ones_like().unwrap()], 1).unwrap(),
                        Tensor::cat(&[&expected, &expected.ones_like().unwrap()], 1).unwrap(),
                    );
                    let weights = Tensor::from_vec(pseudo(y.elem_count(), 7), y.shape(), &dev).unwrap();
                    let g_ours = (y * &weights).unwrap().sum_all().unwrap().backward().unwrap();
                    let g_ref = (expected * weights.to_dtype(DType::F64).unwrap())
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .backward()
                        .unwrap();
                    // The input gradient is a difference of nearly equal terms: in
                    // f32 candle-nn's own op was off by up to 7.8e-5 in these cases
                    // without the concatenation; with two values a channel
                    // (2x6x1x1) ours is off by 1.4e-4, the same with dy copied.
                    assert_close(
                        g_ours.get(&x).unwrap(),
                        g_ref.get(&x64).unwrap(),
                        3e-4,
                        &format!("{what}: input gradient"),
                    );
                    assert_close(
                        g_ours.get(&bn.weight).unwrap(),
                        g_ref.get(&wt64).unwrap(),
                        1e-6,
                        &format!("{what}: weight gradient"),
                    );
                    assert_close(
                        g_ours.get(&bn.bias).unwrap(),
                        g_ref.get(&bs64).unwrap(),
                        1e-6,
                        &format!("{what}: bias gradient"),
                    );
                    assert_close(
                        bn.running_mean.as_tensor(),
                        reference.running_mean(),
                        1e-6,
                        &format!("{what}: running mean"),
                    );
                    assert_close(
                        bn.running_var.as_tensor(),
                        reference.running_var(),
                        1e-6,
                        &format!("{what}: running variance"),
                    );
                }
            }
        }
    }

    /// The input gradient against central finite differences in f64 of the
    /// same loss, computed by candle-nn's batch norm on f64 (no ReLU: its kink
    /// would spoil the differences).
    #[test]
    fn input_gradient_matches_finite_differences() {
        let dev = Device::Cpu;
        let (n, c, h, w) = (3, 2, 3, 4);
        let ours = ours(c);
        let x = Var::from_vec(pseudo(n * c * h * w, 3), (n, c, h, w), &dev).unwrap();
        let weights = Tensor::from_vec(pseudo(n * c * h * w, 4), (n, c, h, w), &dev).unwrap();
        let y = ours.forward(&x, true, false).unwrap();
        let grad = (y * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let grad: Vec<f32> = grad.get(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();

        let to64 = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let (gamma, beta, w64) = (to64(&ours.weight), to64(&ours.bias), to64(&weights));
        let loss = |xs: &[f64]| -> f64 {
            let x = Tensor::from_vec(xs.to_vec(), (n, c, h, w), &dev).unwrap();
            let bn = BatchNorm::new(
                c,
                Tensor::zeros(c, DType::F64, &dev).unwrap(),
                Tensor::ones(c, DType::F64, &dev).unwrap(),
                gamma.clone(),
                beta.clone(),
                1e-3,
            )
            .unwrap();
            (bn.forward_t(&x, true).unwrap() * &w64).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
        };
        let x0: Vec<f64> = pseudo(n * c * h * w, 3).into_iter().map(f64::from).collect();
        let step = 1e-5;
        for i in 0..x0.len() {
            let (mut up, mut down) = (x0.clone(), x0.clone());
            up[i] += step;
            down[i] -= step;
            let numeric = (loss(&up) - loss(&down)) / (2.0 * step);
            assert!(
                (grad[i] as f64 - numeric).abs() <= 1e-3 * numeric.abs().max(1.0),
                "x[{i}]: {} vs finite difference {numeric}",
                grad[i]
            );
        }
    }
}
