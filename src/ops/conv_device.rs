//! The convolution as im2col, GEMMs and col2im on a candle backend storage:
//! the GPU path of the conv op. kernels/conv.cu writes the column matrices
//! and the input gradient (conv_cuda.rs), cuBLAS multiplies them through
//! candle's CUDA matmul, and candle's transposed-convolution kernel is not
//! used. Written once over `BackendStorage`, so the tests run these very
//! steps on CPU storage, where the column matrices are columns.rs's.
//!
//! Per group of images (a column matrix of at most `COLUMN_BYTES`):
//!   cols = im2col(x)                     (C*k*k, images*OH*OW)
//!   y    = W @ cols, permuted into (images, OC, OH*OW), then + bias, ReLU
//! and backward, the columns computed again (a GPU does that faster than
//! it would hold every layer's),
//!   dy'  = dy permuted into (OC, images*OH*OW)
//!   dW  += dy' @ cols^T
//!   dx   = col2im(W^T @ dy')
//!   db   = dy summed over images and pixels.

use std::ops::Range;

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::op::{Add, ReduceOp, Relu};
use candle_core::{CpuStorage, DType, Layout, Result, Shape};

use super::columns::{col2im, im2col, Dims, Wanted};
use super::cpu_slice::f32_storage;

/// What a storage adds to candle's backend for the convolution: its column
/// matrices, in columns.rs's layout.
pub trait Columns: BackendStorage<Device: BackendDevice<Storage = Self>> {
    /// cols (C*k*k, images*OH*OW) of the images `images` of x, which is
    /// contiguous (N, C, H, W) from element `offset`.
    fn im2col(&self, offset: usize, d: &Dims, images: Range<usize>) -> Result<Self>;
    /// col2im(self) written over the images `images` of dx, contiguous
    /// (N, C, H, W) and zero there before.
    fn col2im_into(&self, d: &Dims, images: Range<usize>, dx: &mut Self) -> Result<()>;
}

impl Columns for CpuStorage {
    fn im2col(&self, offset: usize, d: &Dims, images: Range<usize>) -> Result<Self> {
        let x = f32_storage(self, "conv2d (device path): input")?;
        let mut cols = Vec::new();
        im2col(&x[offset..], d, images, &mut cols);
        Ok(CpuStorage::F32(cols))
    }
    fn col2im_into(&self, d: &Dims, images: Range<usize>, dx: &mut Self) -> Result<()> {
        let cols = f32_storage(self, "conv2d (device path): column gradient")?;
        let CpuStorage::F32(dx) = dx else { candle_core::bail!("conv2d (device path): input gradient must be f32") };
        let chw = d.c * d.hw();
        col2im(cols, d, images.clone(), &mut dx[images.start * chw..images.end * chw]);
        Ok(())
    }
}

/// Bytes a group's column matrix may take on the GPU: the images of a layer
/// are taken in groups so that no layer holds all its columns at once.
pub const COLUMN_BYTES: usize = 256 << 20;

/// The groups of images, in order, each at most `column_bytes` of columns
/// (one image at least).
fn groups(d: &Dims, column_bytes: usize) -> Vec<Range<usize>> {
    let per_image = 4 * d.ckk() * d.ohw();
    let size = (column_bytes / per_image.max(1)).clamp(1, d.n.max(1));
    (0..d.n).step_by(size).map(|b| b..(b + size).min(d.n)).collect()
}

fn zeros<S: Columns>(dev: &S::Device, len: usize) -> Result<S> {
    dev.zeros_impl(&Shape::from(len.max(1)), DType::F32)
}

/// The first element of a contiguous tensor, or an error naming it.
fn start(l: &Layout, what: &str) -> Result<usize> {
    l.contiguous_offsets()
        .map(|(a, _)| a)
        .ok_or_else(|| candle_core::Error::Msg(format!("conv2d (device path): {what} must be contiguous")))
}

/// y (N, OC, OH, OW) = relu?(conv(x, weight) + bias), contiguous; column
/// matrices of at most `column_bytes`.
pub fn forward<S: Columns>(
    x: (&S, &Layout),
    weight: (&S, &Layout),
    bias: Option<(&S, &Layout)>,
    d: &Dims,
    relu: bool,
    column_bytes: usize,
) -> Result<S> {
    let (oc, ohw, ckk) = (d.oc, d.ohw(), d.ckk());
    let (x_at, w_at) = (start(x.1, "input")?, start(weight.1, "weight")?);
    let w_rows = Layout::contiguous_with_offset((oc, ckk), w_at);
    let mut y: S = zeros(x.0.device(), d.n * oc * ohw)?;
    for images in groups(d, column_bytes) {
        let width = images.len() * ohw;
        let cols = x.0.im2col(x_at, d, images.clone())?;
        let product = weight.0.matmul(&cols, (1, oc, width, ckk), &w_rows, &Layout::contiguous((ckk, width)))?;
        // (OC, images, OH*OW) read as (images, OC, OH*OW), into y's planes.
        let as_images = Layout::contiguous((oc, images.len(), ohw)).transpose(0, 1)?;
        product.copy_strided_src(&mut y, images.start * oc * ohw, &as_images)?;
    }
    let planes = Layout::contiguous((d.n, oc, ohw));
    if let Some((b, bl)) = bias {
        let per_channel = Layout::new(Shape::from((d.n, oc, ohw)), vec![0, 1, 0], start(bl, "bias")?);
        y = y.binary_impl::<Add>(b, &planes, &per_channel)?;
    }
    if relu {
        y = y.unary_impl::<Relu>(&planes)?;
    }
    Ok(y)
}

/// The gradients from dy (N, OC, OH, OW): dx (N, C, H, W) where wanted,
/// else a placeholder; dW (OC, C, k, k); db (OC) where wanted; column
/// matrices of at most `column_bytes`.
pub fn backward<S: Columns>(
    x: (&S, &Layout),
    weight: (&S, &Layout),
    dy: (&S, &Layout),
    d: &Dims,
    wanted: Wanted,
    column_bytes: usize,
) -> Result<(S, S, Option<S>)> {
    let (oc, ohw, ckk) = (d.oc, d.ohw(), d.ckk());
    let (x_at, w_at, dy_at) = (start(x.1, "input")?, start(weight.1, "weight")?, start(dy.1, "output gradient")?);
    let dev = x.0.device();
    let mut dx: S = zeros(dev, if wanted.dx { d.n * d.c * d.hw() } else { 0 })?;
    // W^T (C*k*k, OC) as a transposed view of W.
    let w_t = Layout::contiguous_with_offset((oc, ckk), w_at).transpose(0, 1)?;
    let mut dw: Option<S> = None;
    for images in groups(d, column_bytes) {
        let width = images.len() * ohw;
        // dy' (OC, images*OH*OW): the group's (images, OC, OH*OW) read channel first.
        let by_channel =
            Layout::new(Shape::from((oc, images.len(), ohw)), vec![ohw, oc * ohw, 1], dy_at + images.start * oc * ohw);
        let mut dy_g: S = zeros(dev, oc * width)?;
        dy.0.copy_strided_src(&mut dy_g, 0, &by_channel)?;
        let dy_rows = Layout::contiguous((oc, width));
        let cols = x.0.im2col(x_at, d, images.clone())?;
        let cols_t = Layout::contiguous((ckk, width)).transpose(0, 1)?;
        let part = dy_g.matmul(&cols, (1, oc, ckk, width), &dy_rows, &cols_t)?;
        let whole = Layout::contiguous(oc * ckk);
        dw = Some(match dw {
            None => part,
            Some(sum) => sum.binary_impl::<Add>(&part, &whole, &whole)?,
        });
        if wanted.dx {
            let dcols = weight.0.matmul(&dy_g, (1, ckk, width, oc), &w_t, &dy_rows)?;
            dcols.col2im_into(d, images, &mut dx)?;
        }
    }
    let dw = match dw {
        Some(dw) => dw,
        None => zeros(dev, oc * ckk)?,
    };
    let db = if wanted.db {
        Some(dy.0.reduce_op(ReduceOp::Sum, &Layout::contiguous_with_offset((d.n, oc, ohw), dy_at), &[0, 2])?)
    } else {
        None
    };
    Ok((dx, dw, db))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::columns::Geometry;
    use crate::ops::conv::conv2d_gemm;
    use candle_core::{Device, Storage, Tensor, Var};

    fn pseudo(len: usize, seed: usize) -> Vec<f32> {
        (0..len).map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0) - 1.0).collect()
    }

    fn cpu(t: &Tensor) -> (CpuStorage, Layout) {
        let (s, l) = t.storage_and_layout();
        let Storage::Cpu(s) = &*s else { panic!("a CPU tensor") };
        (s.clone(), l.clone())
    }

    fn values(s: &CpuStorage, len: usize) -> Vec<f32> {
        f32_storage(s, "test").unwrap()[..len].to_vec()
    }

    fn close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst <= 1e-4 * scale, "{what}: differs by {worst} (largest value {scale})");
    }

    /// The device path's steps, run on CPU storage in groups of one image
    /// and of the whole batch, give the CPU op's output and gradients
    /// (up to the GEMMs' order of additions), with bias and ReLU, strides,
    /// padding, pointwise and first-layer (no dx) cases.
    #[test]
    fn device_steps_on_cpu_storage_match_the_cpu_op() {
        let dev = Device::Cpu;
        let cases = [(3, 5, 9, 4, 3, 1, 1), (2, 3, 7, 6, 3, 2, 1), (4, 8, 5, 16, 1, 1, 0), (2, 2, 11, 3, 5, 2, 2)];
        for (case, &(n, c, hw, oc, k, stride, padding)) in cases.iter().enumerate() {
            let g = Geometry { kernel: k, stride, padding };
            let x = Var::from_vec(pseudo(n * c * hw * hw, case), (n, c, hw, hw), &dev).unwrap();
            let w = Var::from_vec(pseudo(oc * c * k * k, case + 10), (oc, c, k, k), &dev).unwrap();
            let b = Var::from_vec(pseudo(oc, case + 20), oc, &dev).unwrap();
            let y = conv2d_gemm(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), g).unwrap();
            let r = Tensor::from_vec(pseudo(y.elem_count(), case + 30), y.shape(), &dev).unwrap();
            let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let d = Dims::new(x.layout(), w.layout(), g).unwrap();
            let ((xs, xl), (ws, wl), (bs, bl), (rs, rl)) = (cpu(&x), cpu(&w), cpu(&b), cpu(&r));
            let one_image = 4 * d.ckk() * d.ohw();
            for column_bytes in [one_image, COLUMN_BYTES] {
                let what = format!("case {case}, {column_bytes} column bytes");
                let ours = forward((&xs, &xl), (&ws, &wl), Some((&bs, &bl)), &d, false, column_bytes).unwrap();
                close(&values(&ours, y.elem_count()), &flat(&y), &format!("{what}: y"));
                let relu = forward((&xs, &xl), (&ws, &wl), Some((&bs, &bl)), &d, true, column_bytes).unwrap();
                let relu_y: Vec<f32> = flat(&y).iter().map(|v| v.max(0.0)).collect();
                close(&values(&relu, y.elem_count()), &relu_y, &format!("{what}: relu y"));
                let want = Wanted { dx: case != 3, db: true };
                let (dx, dw, db) = backward((&xs, &xl), (&ws, &wl), (&rs, &rl), &d, want, column_bytes).unwrap();
                if want.dx {
                    close(&values(&dx, x.elem_count()), &flat(grads.get(&x).unwrap()), &format!("{what}: dx"));
                }
                close(&values(&dw, w.elem_count()), &flat(grads.get(&w).unwrap()), &format!("{what}: dw"));
                close(&values(&db.unwrap(), oc), &flat(grads.get(&b).unwrap()), &format!("{what}: db"));
            }
        }
    }
}
