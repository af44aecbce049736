//! Convolution on the CPU as one GEMM each way (issue 8).
//!
//! candle's CPU backend computes a convolution's input gradient with
//! conv_transpose2d, a loop of dot products. Here a convolution is written as
//!   colsT = im2col(x)                  (C*k*k, N*OH*OW)
//!   y     = W (OC, C*k*k) @ colsT      (OC, N*OH*OW) -> (N, OC, OH, OW)
//! so that autograd's matmul backward gives both gradients as GEMMs:
//!   dW     = dy @ colsT^T              (OC, C*k*k), contiguous
//!   dcolsT = W^T @ dy                  (C*k*k, N*OH*OW) -> col2im -> dx
//! im2col is a custom op whose backward is col2im; the GEMMs are candle's
//! (the gemm crate). 1x1 stride-1 convolutions skip im2col: colsT is x with
//! its batch and channel axes swapped. Square kernels, groups 1: what the
//! four networks use. On other devices the layer keeps candle's conv2d.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use crate::cpu_slice::f32_slice;

/// A square convolution's geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Geometry {
    fn out_len(&self, input: usize) -> usize {
        (input + 2 * self.padding - self.kernel) / self.stride + 1
    }
}

/// x (N, C, H, W) -> colsT (C*k*k, N*OH*OW); row (c, ki, kj), column (n, oh, ow).
struct Im2Col {
    g: Geometry,
    dims: (usize, usize, usize, usize),
}

/// colsT (C*k*k, N*OH*OW) -> x-shaped sums (N, C, H, W): im2col's adjoint.
struct Col2Im {
    g: Geometry,
    dims: (usize, usize, usize, usize),
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "candle-mpi im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "candle-mpi im2col: input")?;
        let (n, c, h, w) = self.dims;
        let Geometry { kernel: k, stride, padding } = self.g;
        let (oh, ow) = (self.g.out_len(h), self.g.out_len(w));
        let cols = n * oh * ow;
        let mut out = vec![0f32; c * k * k * cols];
        // One row of colsT per (c, ki, kj): rows are independent.
        crate::par::for_each_chunk(&mut out, cols, |row, dst| {
            let (ci, ki, kj) = (row / (k * k), (row / k) % k, row % k);
            for b in 0..n {
                let plane = &x[(b * c + ci) * h * w..][..h * w];
                for y in 0..oh {
                    let iy = (y * stride + ki) as isize - padding as isize;
                    let d = &mut dst[(b * oh + y) * ow..][..ow];
                    if iy < 0 || iy >= h as isize {
                        continue; // stays zero: padding
                    }
                    let src = &plane[iy as usize * w..][..w];
                    for (xo, v) in d.iter_mut().enumerate() {
                        let ix = (xo * stride + kj) as isize - padding as isize;
                        if ix >= 0 && ix < w as isize {
                            *v = src[ix as usize];
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((c * k * k, cols))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&Col2Im { g: self.g, dims: self.dims })?))
    }
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "candle-mpi col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let cols_t = f32_slice(s, l, "candle-mpi col2im: input")?;
        let (n, c, h, w) = self.dims;
        let Geometry { kernel: k, stride, padding } = self.g;
        let (oh, ow) = (self.g.out_len(h), self.g.out_len(w));
        let cols = n * oh * ow;
        let mut out = vec![0f32; n * c * h * w];
        // One (image, channel) plane per task; within it, rows in (ki, kj) order.
        crate::par::for_each_chunk(&mut out, h * w, |plane_index, plane| {
            let (b, ci) = (plane_index / c, plane_index % c);
            for ki in 0..k {
                for kj in 0..k {
                    let src = &cols_t[((ci * k + ki) * k + kj) * cols + b * oh * ow..][..oh * ow];
                    for y in 0..oh {
                        let iy = (y * stride + ki) as isize - padding as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        let row = &mut plane[iy as usize * w..][..w];
                        for xo in 0..ow {
                            let ix = (xo * stride + kj) as isize - padding as isize;
                            if ix >= 0 && ix < w as isize {
                                row[ix as usize] += src[y * ow + xo];
                            }
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, c, h, w))))
    }
}

/// y = conv2d(x, weight) (+ bias), x (N, C, H, W) f32 on the CPU, weight
/// (OC, C, k, k); differentiable in x, weight and bias.
pub fn conv2d_gemm(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, g: Geometry) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (oc, wc, kh, kw) = weight.dims4()?;
    if wc != c || kh != g.kernel || kw != g.kernel {
        candle_core::bail!("conv2d_gemm: weight {:?} does not fit input {:?} and kernel {}", weight.dims(), x.dims(), g.kernel);
    }
    if h + 2 * g.padding < g.kernel || w + 2 * g.padding < g.kernel {
        candle_core::bail!("conv2d_gemm: input {h}x{w} smaller than kernel {} with padding {}", g.kernel, g.padding);
    }
    let (oh, ow) = (g.out_len(h), g.out_len(w));
    let cols_t = if g.kernel == 1 && g.stride == 1 && g.padding == 0 {
        x.transpose(0, 1)?.contiguous()?.reshape((c, n * h * w))?
    } else {
        x.contiguous()?.apply_op1(Im2Col { g, dims: (n, c, h, w) })?
    };
    let y = weight.reshape((oc, c * g.kernel * g.kernel))?.matmul(&cols_t)?;
    let y = y.reshape((oc, n, oh, ow))?.transpose(0, 1)?;
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, oc, 1, 1))?),
        // Left as a view of the (OC, N, OH, OW) product: batch norm reads it
        // as it is (batch_norm.rs), other consumers copy it if they must.
        None => Ok(y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn pseudo(len: usize, seed: u32) -> Vec<f32> {
        (0..len).map(|i| (((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) % 1000) as f32 / 500.0 - 1.0).collect()
    }

    /// Output and all three gradients against candle's own conv2d.
    #[test]
    fn matches_candle_conv2d_forward_and_backward() {
        let dev = Device::Cpu;
        for (c, oc, hw, k, stride, padding) in [(3, 4, 11, 3, 1, 1), (2, 5, 13, 3, 2, 1), (3, 2, 16, 11, 4, 2), (4, 6, 7, 1, 1, 0), (4, 3, 9, 1, 2, 0), (2, 3, 10, 5, 1, 2), (3, 4, 9, 7, 2, 3)] {
            let x = Var::from_vec(pseudo(2 * c * hw * hw, 1), (2, c, hw, hw), &dev).unwrap();
            let wt = Var::from_vec(pseudo(oc * c * k * k, 2), (oc, c, k, k), &dev).unwrap();
            let b = Var::from_vec(pseudo(oc, 3), oc, &dev).unwrap();
            let g = Geometry { kernel: k, stride, padding };
            let ours = conv2d_gemm(&x, &wt, Some(&b), g).unwrap();
            let theirs = x.conv2d(&wt, padding, stride, 1, 1).unwrap().broadcast_add(&b.reshape((1, oc, 1, 1)).unwrap()).unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            let weights = Tensor::from_vec(pseudo(theirs.elem_count(), 4), theirs.shape(), &dev).unwrap();
            let go = (ours.clone() * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let gt = (theirs.clone() * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let close = |a: &Tensor, b: &Tensor, what: &str| {
                let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
                let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
                let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
                let worst = a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0.0, f32::max);
                assert!(worst <= 1e-5 * scale, "{what} (c {c} oc {oc} hw {hw} k {k} s {stride} p {padding}): off by {worst} of {scale}");
            };
            close(&ours, &theirs, "output");
            close(go.get(&x).unwrap(), gt.get(&x).unwrap(), "input gradient");
            close(go.get(&wt).unwrap(), gt.get(&wt).unwrap(), "weight gradient");
            close(go.get(&b).unwrap(), gt.get(&b).unwrap(), "bias gradient");
        }
    }

    /// col2im is im2col's adjoint: <im2col(x), y> = <x, col2im(y)>.
    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        let dev = Device::Cpu;
        let g = Geometry { kernel: 3, stride: 2, padding: 1 };
        let dims = (2, 3, 7, 6);
        let x = Tensor::from_vec(pseudo(2 * 3 * 7 * 6, 5), (2, 3, 7, 6), &dev).unwrap();
        let cols = x.apply_op1_no_bwd(&Im2Col { g, dims }).unwrap();
        let y = Tensor::from_vec(pseudo(cols.elem_count(), 6), cols.shape(), &dev).unwrap();
        let back = y.apply_op1_no_bwd(&Col2Im { g, dims }).unwrap();
        let lhs = (cols * &y).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        let rhs = (x * back).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!((lhs - rhs).abs() <= 1e-4 * lhs.abs().max(1.0), "{lhs} vs {rhs}");
    }
}
