//! Batch norm for (N, C, H, W) activations in training, with an optional
//! ReLU fused in: the op under `model::batch_norm::BatchNorm2d`.
//!
//! candle-nn's training-mode batch norm is a chain of tensor ops: a transposed
//! copy to (C, N*H*W), mean, subtract, square, mean, divide, multiply, add and
//! a transpose back, each a pass over the activations, and about twice as many
//! in backward; the ReLU after it is one more pass forward and four backward.
//! On the CPU in f32 this module does the same arithmetic as one custom op:
//!   forward:  per channel mean, then variance about it (two reading passes,
//!             sums per (image, channel) plane in f32 lanes, across planes in
//!             f64), then y = max(0, x*a + b) in one writing pass, with
//!             a = gamma / sqrt(var + eps), b = beta - mean * a;
//!   backward: per channel sum(g) and sum(g * (x - mean)) (one pass), then
//!             dx = a * (g - sum(g)/M - (x - mean) * sum(g*(x - mean)) / (M (var + eps)))
//!             (one pass), where g is dy masked by x*a + b >= 0 when the ReLU
//!             is fused (candle's ReLU gradient: 1 where its input is >= 0) and
//!             M = N*H*W.
//! The input may be any layout whose (H, W) planes are contiguous, such as the
//! convolution's output viewed from its (C, N, H, W) GEMM result, so that view
//! needs no copy; the input gradient comes back in the input's own layout.
//! The batch statistics are handed back for the layer's running statistics.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::handoff::HandOff;
use super::param_grads::hand_over;

/// Per-channel mean and (biased) variance of a forward pass.
#[derive(Clone, Debug)]
pub struct Stats {
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
}

/// relu(batch_norm(x)) (or batch norm alone) with batch statistics, x f32 on
/// the CPU, differentiable in x, weight and bias; and the statistics.
pub fn train_forward(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64, relu: bool) -> Result<(Tensor, Stats)> {
    let stats = HandOff::default();
    let y = x.apply_op3(weight, bias, BatchNormTrain { eps, relu, stats: stats.clone() })?;
    // A copy: the op keeps its own for backward.
    let stats = stats.get().expect("the forward op leaves its statistics");
    Ok((y, stats))
}

/// Forward on (x, weight, bias); leaves the batch statistics in `stats`.
struct BatchNormTrain {
    eps: f64,
    relu: bool,
    stats: HandOff<Stats>,
}

/// Backward on (x, dy, weight), given the forward's statistics: dx; the
/// weight and bias gradients are left in `param_grads`.
struct BatchNormGrad {
    eps: f64,
    relu: bool,
    bias: Vec<f32>,
    mean: Vec<f64>,
    var: Vec<f64>,
    param_grads: HandOff<(Vec<f32>, Vec<f32>)>,
}

/// Where each (image, channel) plane of H*W contiguous values starts.
struct Planes {
    n: usize,
    c: usize,
    hw: usize,
    /// Whether the storage is channel-major ((C, N, H, W) viewed as (N, C, H, W)).
    channel_major: bool,
    offset: usize,
    stride: (usize, usize),
}

impl Planes {
    fn new(l: &Layout, what: &str) -> Result<Self> {
        let (n, c, h, w) = l.shape().dims4()?;
        let s = l.stride();
        if !(w == 1 || s[3] == 1) || !(h == 1 || s[2] == w) {
            candle_core::bail!("{what}: (H, W) planes must be contiguous, got strides {s:?} for {:?}", l.dims());
        }
        let channel_major = c > 1 && n > 1 && s[1] > s[0];
        Ok(Self { n, c, hw: h * w, channel_major, offset: l.start_offset(), stride: (s[0], s[1]) })
    }

    /// The plane of image `i`, channel `ch`.
    fn plane<'a>(&self, data: &'a [f32], i: usize, ch: usize) -> &'a [f32] {
        &data[self.offset + i * self.stride.0 + ch * self.stride.1..][..self.hw]
    }

    fn count(&self) -> usize {
        self.n * self.c
    }
}

fn channel_vector(s: &CpuStorage, l: &Layout, c: usize, what: &str) -> Result<Vec<f32>> {
    let v = super::cpu_slice::f32_slice(s, l, what)?;
    if v.len() != c {
        candle_core::bail!("{what}: {} values for {c} channels", v.len());
    }
    Ok(v.to_vec())
}

/// Sums of f(x) for a plane: f32 lanes within blocks of 2048 values, the
/// blocks added in f64, so long planes keep their precision.
#[inline(always)]
fn plane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut total = 0f64;
    for block in x.chunks(2048) {
        let mut lanes = [0f32; 8];
        let mut chunks = block.chunks_exact(8);
        for ch in &mut chunks {
            for (acc, &v) in lanes.iter_mut().zip(ch) {
                *acc += f(v);
            }
        }
        let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
        total += lanes.iter().map(|&v| v as f64).sum::<f64>() + tail as f64;
    }
    total
}

/// g where the fused ReLU passed its input `pre` (pre >= 0, or NaN: candle's
/// ReLU gradient), else +0, written as a mask on the bits. The compiler may
/// still make it a branch where the term is summed as it is made (see
/// `plane_sum2`).
#[inline(always)]
fn through_relu(g: f32, pre: f32) -> f32 {
    let blocked = ((pre < 0.0) as u32).wrapping_neg();
    f32::from_bits(g.to_bits() & !blocked)
}

/// Two sums over a plane pair at once (backward's first pass). The terms of
/// each 32 values are written out first and summed after: summed as they
/// were made, the compiler turned a masked term (the fused ReLU) into a
/// branch per value. The sums are added in the same order either way.
#[inline(always)]
fn plane_sum2(x: &[f32], dy: &[f32], f: impl Fn(f32, f32) -> (f32, f32)) -> (f64, f64) {
    const TERMS: usize = 32;
    let (mut t0, mut t1) = (0f64, 0f64);
    for (xb, gb) in x.chunks(2048).zip(dy.chunks(2048)) {
        let (mut l0, mut l1) = ([0f32; 8], [0f32; 8]);
        for (xs, gs) in xb.chunks(TERMS).zip(gb.chunks(TERMS)) {
            if xs.len() < 8 {
                // A plane of a few values (GoogLeNet's 2x2): no lanes to fill.
                for (&v, &g) in xs.iter().zip(gs) {
                    let (a, b) = f(v, g);
                    t0 += a as f64;
                    t1 += b as f64;
                }
                continue;
            }
            let (mut terms0, mut terms1) = ([0f32; TERMS], [0f32; TERMS]);
            for (((&v, &g), a), b) in xs.iter().zip(gs).zip(&mut terms0).zip(&mut terms1) {
                (*a, *b) = f(v, g);
            }
            // Only a block's last piece is shorter than TERMS: its tail of
            // fewer than 8 values is added one by one, as ever.
            let (mut ac, mut bc) = (terms0[..xs.len()].chunks_exact(8), terms1[..xs.len()].chunks_exact(8));
            for (a8, b8) in (&mut ac).zip(&mut bc) {
                for i in 0..8 {
                    l0[i] += a8[i];
                    l1[i] += b8[i];
                }
            }
            for (&a, &b) in ac.remainder().iter().zip(bc.remainder()) {
                t0 += a as f64;
                t1 += b as f64;
            }
        }
        t0 += l0.iter().map(|&v| v as f64).sum::<f64>();
        t1 += l1.iter().map(|&v| v as f64).sum::<f64>();
    }
    (t0, t1)
}

/// Per-channel sums of f(image, channel) over all planes (K sums at once):
/// the images in parallel, each channel's added in image order (the order
/// of storage, whichever layout).
fn channel_sums<const K: usize>(
    p: &Planes,
    per_plane: impl Fn(usize, usize) -> [f64; K] + Sync + Send,
) -> Vec<[f64; K]> {
    let per_image = super::par::map(p.n, |i| (0..p.c).map(|ch| per_plane(i, ch)).collect::<Vec<_>>());
    let mut out = vec![[0f64; K]; p.c];
    for sums in per_image {
        for (total, s) in out.iter_mut().zip(sums) {
            for (t, v) in total.iter_mut().zip(s) {
                *t += v;
            }
        }
    }
    out
}

/// A new tensor's values, f(image, channel, plane) writing each hw-sized
/// plane, the planes in (image, channel) order, or (channel, image) when
/// `channel_major`. One task per image (or channel) and a plane's place
/// counted, not divided out: with GoogLeNet's 2x2 and 4x4 planes, a division
/// per plane cost more than the plane's arithmetic.
fn plane_by_plane(p: &Planes, channel_major: bool, f: impl Fn(usize, usize, &mut [f32]) + Sync + Send) -> Vec<f32> {
    let block = if channel_major { p.n } else { p.c } * p.hw;
    super::par::filled(p.count() * p.hw, block, |outer, planes| {
        for (inner, plane) in planes.chunks_mut(p.hw).enumerate() {
            let (i, ch) = if channel_major { (inner, outer) } else { (outer, inner) };
            f(i, ch, plane);
        }
    })
}

/// Per-channel scale and shift: y = x * a + b.
fn scale_shift(gamma: &[f32], beta: &[f32], mean: &[f64], var: &[f64], eps: f64) -> (Vec<f32>, Vec<f32>) {
    let a: Vec<f32> = gamma.iter().zip(var).map(|(&g, &v)| (g as f64 / (v + eps).sqrt()) as f32).collect();
    let b = beta.iter().zip(mean).zip(&a).map(|((&be, &m), &s)| (be as f64 - m * s as f64) as f32).collect();
    (a, b)
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "candle-mpi batch-norm"
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
        let x = super::cpu_slice::f32_storage(s1, "batch norm: input")?;
        let p = Planes::new(l1, "batch norm: input")?;
        let gamma = channel_vector(s2, l2, p.c, "batch norm: weight")?;
        let beta = channel_vector(s3, l3, p.c, "batch norm: bias")?;
        let per_channel = (p.n * p.hw) as f64;
        let mean: Vec<f64> = channel_sums(&p, |i, ch| [plane_sum(p.plane(x, i, ch), |v| v)])
            .into_iter()
            .map(|[s]| s / per_channel)
            .collect();
        let var: Vec<f64> = channel_sums(&p, |i, ch| {
            let m = mean[ch] as f32;
            [plane_sum(p.plane(x, i, ch), |v| (v - m) * (v - m))]
        })
        .into_iter()
        .map(|[s]| s / per_channel)
        .collect();
        let (a, b) = scale_shift(&gamma, &beta, &mean, &var, self.eps);
        let relu = self.relu;
        // The output is (N, C, H, W) contiguous whatever the input's layout.
        let y = plane_by_plane(&p, false, |i, ch, out| {
            let (a, b) = (a[ch], b[ch]);
            let src = p.plane(x, i, ch);
            if relu {
                out.iter_mut().zip(src).for_each(|(o, &v)| *o = (v * a + b).max(0.0));
            } else {
                out.iter_mut().zip(src).for_each(|(o, &v)| *o = v * a + b);
            }
        });
        self.stats.put(Stats { mean, var });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The statistics of this op's own forward pass.
        let Some(Stats { mean, var }) = self.stats.get() else {
            candle_core::bail!("batch norm: backward before forward")
        };
        let param_grads = HandOff::default();
        let grad_op = BatchNormGrad {
            eps: self.eps,
            relu: self.relu,
            bias: bias.to_vec1()?,
            mean,
            var,
            param_grads: param_grads.clone(),
        };
        // dy as it comes: a slice of a concatenation's gradient is read in place.
        let dx = x.apply_op3_no_bwd(dy, weight, &grad_op)?;
        // dx comes back in x's storage order; give it x's shape.
        let dx = if Planes::new(x.layout(), "batch norm: input")?.channel_major { dx.transpose(0, 1)? } else { dx };
        let (dgamma, dbeta) = param_grads.take().expect("the gradient op leaves the parameter gradients");
        let c = dgamma.len();
        let dgamma = hand_over(weight, Tensor::from_vec(dgamma, c, x.device())?);
        Ok((Some(dx), dgamma, hand_over(bias, Tensor::from_vec(dbeta, c, x.device())?)))
    }
}

impl CustomOp3 for BatchNormGrad {
    fn name(&self) -> &'static str {
        "candle-mpi batch-norm backward"
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
        let x = super::cpu_slice::f32_storage(s1, "batch norm backward: input")?;
        let p = Planes::new(l1, "batch norm backward: input")?;
        let dy = super::cpu_slice::f32_storage(s2, "batch norm backward: output gradient")?;
        let dy_planes = Planes::new(l2, "batch norm backward: output gradient")?;
        let gamma = channel_vector(s3, l3, p.c, "batch norm backward: weight")?;
        let (a, b) = scale_shift(&gamma, &self.bias, &self.mean, &self.var, self.eps);
        let relu = self.relu;
        let dy_plane = |i: usize, ch: usize| dy_planes.plane(dy, i, ch);
        let sums = channel_sums(&p, |i, ch| {
            let (a, b, m) = (a[ch], b[ch], self.mean[ch] as f32);
            let (xs, gs) = (p.plane(x, i, ch), dy_plane(i, ch));
            let (g, gx) = if relu {
                plane_sum2(xs, gs, |v, g| {
                    let g = through_relu(g, v * a + b);
                    (g, g * (v - m))
                })
            } else {
                plane_sum2(xs, gs, |v, g| (g, g * (v - m)))
            };
            [g, gx]
        });
        let (sum_g, sum_gx): (Vec<f64>, Vec<f64>) = sums.into_iter().map(|[g, gx]| (g, gx)).unzip();
        let per_channel = (p.n * p.hw) as f64;
        let inv_std: Vec<f64> = self.var.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect();
        // dx = a * (g - mean_g - (x - mean) * k), k = sum_gx / (M (var + eps)).
        let mean_g: Vec<f32> = sum_g.iter().map(|s| (s / per_channel) as f32).collect();
        let k: Vec<f32> = sum_gx.iter().zip(&inv_std).map(|(s, is)| (s * is * is / per_channel) as f32).collect();
        // dx in x's storage order (channel-major where x is).
        let dx = plane_by_plane(&p, p.channel_major, |i, ch, out| {
            let (a, b, m, mg, kk) = (a[ch], b[ch], self.mean[ch] as f32, mean_g[ch], k[ch]);
            for ((o, &v), &g) in out.iter_mut().zip(p.plane(x, i, ch)).zip(dy_plane(i, ch)) {
                let g = if relu { through_relu(g, v * a + b) } else { g };
                *o = a * (g - mg - (v - m) * kk);
            }
        });
        let dgamma = sum_gx.iter().zip(&inv_std).map(|(s, is)| (s * is) as f32).collect();
        let dbeta = sum_g.iter().map(|&s| s as f32).collect();
        self.param_grads.put((dgamma, dbeta));
        let (n, c, h, w) = l1.shape().dims4()?;
        let shape = if p.channel_major { Shape::from((c, n, h, w)) } else { Shape::from((n, c, h, w)) };
        Ok((CpuStorage::F32(dx), shape))
    }
}
