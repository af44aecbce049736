//! Convolution on the CPU as GEMMs, one custom op each way.
//!
//! candle's CPU backend computes a convolution's input gradient with
//! conv_transpose2d, a loop of dot products. Here, for a group of images,
//!   cols = im2col(x)                  (C*k*k, images*OH*OW)
//!   y    = W (OC, C*k*k) @ cols       (OC, images*OH*OW)
//! and backward, with the cols forward kept (up to 16 MiB a layer) or
//! computed again,
//!   dW  += dy @ cols^T                (OC, C*k*k; or as dW^T, see backward)
//!   dx   = col2im(W^T @ dy)            (not where x is data: a first layer)
//! GEMMs are the gemm crate's (candle's), called on views (gemm_cpu.rs).
//! A group is one image where OH*OW alone gives the GEMM enough columns (the
//! product then lands in the image's (OC, OH, OW) planes as it is, and a 1x1
//! stride-1 convolution multiplies the image itself, no im2col), and several
//! small images otherwise (their product is scattered into their planes);
//! a batch that would be one group is two where each half is wide enough.
//! Groups also bound im2col's memory at large inputs (only the group's cols
//! exist at a time where a layer's would exceed 16 MiB). The whole convolution is
//! one node of candle's graph: candle accumulates each node's input gradient
//! into a zero-filled tensor, which for im2col's output had been a pass over
//! nine times the activation of every 3x3 layer. Square kernels, groups 1:
//! what the four networks use. On a GPU the same op runs conv_device.rs's
//! steps (kernels/conv.cu's im2col and col2im, cuBLAS GEMMs).

use std::ops::Range;

use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CudaStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor};

use super::columns::{col2im, im2col, Dims, Wanted};
pub use super::columns::{col2im_all, im2col_all, Geometry};
use super::conv_cuda;
use super::cpu_slice::f32_slice;
use super::gemm_cpu::{column_parts_keep_bits, matmul, Threads, View};
use super::handoff::HandOff;
use super::param_grads::hand_over;

/// Each slice's GEMMs on its own thread where there are several slices;
/// one slice gets every thread.
fn gemm_threads(slices: usize) -> Threads {
    if slices > 1 {
        Threads::One
    } else {
        Threads::All
    }
}

/// Images a part where a group of several images has its products
/// computed in parts side by side, one a compute thread: in a layer of one
/// slice, whose GEMMs the gemm crate would otherwise split itself (handing
/// its work to the pool once for every block of the inner dimension),
/// wherever parts of a product of `rows` rows keep the group's bits. The
/// whole group otherwise: the weight gradient, a sum over the group's
/// pixels, is never cut.
fn images_per_part(images: usize, ohw: usize, rows: usize, threads: Threads) -> usize {
    let parts = rayon::current_num_threads().min(images);
    if threads == Threads::One || parts < 2 {
        return images;
    }
    let per_part = images.div_ceil(parts);
    let last = images - (images.div_ceil(per_part) - 1) * per_part;
    let keeps_bits = [per_part, last].iter().all(|&p| column_parts_keep_bits(rows, images * ohw, p * ohw));
    if keeps_bits {
        per_part
    } else {
        images
    }
}

/// part(first image, values, threads, buffer) over a group's values,
/// `per_image` an image: whole, with the group's threads and the slice's
/// buffer, where a part is the whole group; else `per_part` images a part,
/// side by side, each on one thread with a buffer of its own.
fn in_parts(
    group: &mut [f32],
    per_image: usize,
    per_part: usize,
    threads: Threads,
    buf: &mut Vec<f32>,
    part: impl Fn(usize, &mut [f32], Threads, &mut Vec<f32>) + Sync + Send,
) {
    if per_part * per_image >= group.len() {
        part(0, group, threads, buf);
    } else {
        super::par::for_each_chunk(group, per_part * per_image, |p, values| {
            part(p * per_part, values, Threads::One, &mut Vec::new())
        });
    }
}

/// The length of each slice's part of a tensor, `per_image` values an image.
fn slice_lens(slices: &[Vec<Range<usize>>], per_image: usize) -> Vec<usize> {
    slices
        .iter()
        .map(|groups| (groups.last().map_or(0, |g| g.end) - groups.first().map_or(0, |g| g.start)) * per_image)
        .collect()
}

/// True where a group's column matrix is the image itself: a pointwise
/// convolution of a group of one image.
fn is_the_image(d: &Dims, images: &Range<usize>) -> bool {
    d.pointwise() && images.len() == 1
}

/// The column matrix of a group: the image itself (see `is_the_image`),
/// else im2col into `buf`.
fn columns<'a>(x: &'a [f32], d: &Dims, images: &Range<usize>, buf: &'a mut Vec<f32>) -> &'a [f32] {
    if is_the_image(d, images) {
        &x[images.start * d.c * d.hw()..][..d.c * d.hw()]
    } else {
        im2col(x, d, images.clone(), buf);
        buf
    }
}

/// Column matrices (f32 values, 16 MiB) up to which forward keeps a layer's
/// cols for backward instead of backward computing them again.
const KEEP_COLS_UP_TO: usize = 4 << 20;

/// The column matrices forward kept, one per group; None for a group whose
/// columns are the image itself (a pointwise layer's last group can be one
/// image where the others are several).
type KeptCols = Vec<Option<Vec<f32>>>;

/// y (N, OC, OH, OW) = conv(x, weight) + bias, and the groups' column
/// matrices when they are small enough to keep (and not the input itself).
fn forward(x: &[f32], weight: &[f32], bias: Option<&[f32]>, d: &Dims, relu: bool) -> (Vec<f32>, Option<KeptCols>) {
    let (oc, ohw) = (d.oc, d.ohw());
    let wv = View::rows(weight, oc, d.ckk());
    // A pointwise layer of one image a group multiplies the images themselves: nothing to keep.
    let keep = d.ckk() * d.n * ohw <= KEEP_COLS_UP_TO && !(d.pointwise() && d.group_size() == 1);
    let slices = d.slices((d.ckk() + oc) * d.group_width());
    let threads = gemm_threads(slices.len());
    let lens = slice_lens(&slices, oc * ohw);
    let (mut y, kept) = super::par::filled_parts(&lens, slices, |groups, y_slice| {
        let first = groups.first().map_or(0, |g| g.start);
        let (mut buf, mut product, mut kept) = (Vec::new(), Vec::new(), Vec::new());
        for images in groups {
            let width = images.len() * ohw;
            let cols = columns(x, d, &images, &mut buf);
            let y_group = &mut y_slice[(images.start - first) * oc * ohw..(images.end - first) * oc * ohw];
            let colsv = View::rows(cols, d.ckk(), width);
            if images.len() == 1 {
                matmul(y_group, ohw, false, wv, colsv, threads);
            } else {
                // The images from `start` on: (OC, images, OH*OW) -> (images, OC, OH*OW).
                let part = |start: usize, y_part: &mut [f32], threads: Threads, product: &mut Vec<f32>| {
                    let part_width = y_part.len() / oc;
                    product.resize(oc * part_width, 0.0);
                    matmul(product, part_width, false, wv, colsv.columns(start * ohw, part_width), threads);
                    for (j, image) in y_part.chunks_mut(oc * ohw).enumerate() {
                        for (o, plane) in image.chunks_mut(ohw).enumerate() {
                            plane.copy_from_slice(&product[o * part_width + j * ohw..][..ohw]);
                        }
                    }
                };
                let per_part = images_per_part(images.len(), ohw, oc, threads);
                in_parts(y_group, oc * ohw, per_part, threads, &mut product, part);
            }
            if keep {
                // The next group gets a new buffer.
                kept.push((!is_the_image(d, &images)).then(|| std::mem::take(&mut buf)));
            }
        }
        kept
    });
    if bias.is_some() || relu {
        super::par::for_each_chunk(&mut y, ohw, |p, plane| {
            let b = bias.map_or(0.0, |b| b[p % oc]);
            if relu {
                plane.iter_mut().for_each(|v| *v = (*v + b).max(0.0));
            } else {
                plane.iter_mut().for_each(|v| *v += b);
            }
        });
    }
    (y, keep.then(|| kept.into_iter().flatten().collect()))
}

/// Gradients from dy (N, OC, OH, OW): (dx if asked, else empty; dweight;
/// dbias if asked).
fn backward(
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    d: &Dims,
    wanted: Wanted,
    kept: Option<KeptCols>,
) -> (Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
    let (oc, ohw, ckk, chw) = (d.oc, d.ohw(), d.ckk(), d.c * d.hw());
    // The weight gradient's GEMM has the pixels as its inner dimension, and
    // both operands hold them contiguous, so the gemm crate gathers one of
    // them element by element into its packed blocks: for a row-major
    // destination, the operand of the destination's rows. So the destination
    // is whichever of dW (OC, C*k*k) and dW^T (C*k*k, OC) has fewer rows:
    // dW^T in a 3x3 layer (OC rows of dy gathered, not 9*C rows of cols),
    // dW where the input has few channels and OC is wide. dW^T costs a
    // transpose at the end, which outweighs the saving where the layer has
    // few pixels, so it is taken only where the pixels number at least half
    // cols' rows (both limits measured in docs/performance.md).
    let transposed = oc < ckk && 2 * d.n * ohw >= ckk;
    let slices = d.slices((2 * ckk + oc) * d.group_width());
    let threads = gemm_threads(slices.len());
    let dx_lens = slice_lens(&slices, if wanted.dx { chw } else { 0 });
    // Each slice sums its groups' weight gradients into a partial sum of its own.
    let mut first_group = 0;
    let work: Vec<_> = slices
        .into_iter()
        .map(|groups| {
            first_group += groups.len();
            (first_group - groups.len(), groups)
        })
        .collect();
    let wt = View::rows(weight, oc, ckk).t();
    let (dx, partials) = super::par::filled_parts(&dx_lens, work, |(first_group, groups), dx_slice| {
        let first = groups.first().map_or(0, |g| g.start);
        let mut dw = vec![0f32; oc * ckk];
        let (mut cols, mut dy_cols, mut dcols) = (Vec::new(), Vec::new(), Vec::new());
        for (i, images) in groups.into_iter().enumerate() {
            let width = images.len() * ohw;
            let dyv = View::rows(output_columns(dy, d, &images, &mut dy_cols), oc, width);
            let cols = match kept.as_ref().and_then(|k| k[first_group + i].as_deref()) {
                Some(kept) => kept,
                None => columns(x, d, &images, &mut cols),
            };
            let colsv = View::rows(cols, ckk, width);
            let dw = &mut dw;
            let mut weight_grad = || {
                if transposed {
                    matmul(dw, oc, i > 0, colsv, dyv.t(), threads); // dW^T += cols @ dy^T
                } else {
                    matmul(dw, ckk, i > 0, dyv, colsv.t(), threads); // dW += dy @ cols^T
                }
            };
            if !wanted.dx {
                weight_grad();
                continue;
            }
            let dx_group = &mut dx_slice[(images.start - first) * chw..(images.end - first) * chw];
            // The input gradient of the group's images from `start` on.
            let part = |start: usize, dx_part: &mut [f32], threads: Threads, dcols: &mut Vec<f32>| {
                let count = dx_part.len() / chw;
                if is_the_image(d, &images) {
                    return matmul(dx_part, d.hw(), false, wt, dyv, threads);
                }
                dcols.resize(ckk * count * ohw, 0.0);
                matmul(dcols, count * ohw, false, wt, dyv.columns(start * ohw, count * ohw), threads);
                let first_image = images.start + start;
                col2im(dcols, d, first_image..first_image + count, dx_part);
            };
            let per_part = images_per_part(images.len(), ohw, ckk, threads);
            let mut input_grad = || in_parts(dx_group, chw, per_part, threads, &mut dcols, part);
            if threads == Threads::All && per_part == images.len() {
                // The gemm crate splits each of the two GEMMs itself.
                weight_grad();
                input_grad();
            } else {
                // The weight gradient's GEMM, one sum over all the group's
                // pixels, stays whole, beside the input gradient.
                super::par::join(weight_grad, input_grad);
            }
        }
        dw
    });
    let mut dw = sum_in_order(partials, oc * ckk);
    if transposed {
        dw = transpose(&dw, ckk, oc);
    }
    (dx, dw, wanted.db.then(|| bias_grad(dy, d)))
}

/// The output gradient of a group's images as (OC, images*OH*OW): the
/// image's own (OC, OH*OW) for one, gathered into `buf` for several.
fn output_columns<'a>(dy: &'a [f32], d: &Dims, images: &Range<usize>, buf: &'a mut Vec<f32>) -> &'a [f32] {
    let (oc, ohw) = (d.oc, d.ohw());
    let dy_group = &dy[images.start * oc * ohw..images.end * oc * ohw];
    if images.len() == 1 {
        return dy_group;
    }
    let width = images.len() * ohw;
    buf.resize(oc * width, 0.0);
    for (j, image) in dy_group.chunks(oc * ohw).enumerate() {
        for (o, plane) in image.chunks(ohw).enumerate() {
            buf[o * width + j * ohw..][..ohw].copy_from_slice(plane);
        }
    }
    buf
}

/// The bias gradient: each channel's planes summed in image order, as one
/// pass over dy would sum them.
fn bias_grad(dy: &[f32], d: &Dims) -> Vec<f32> {
    let (oc, ohw) = (d.oc, d.ohw());
    super::par::map(oc, |o| {
        (0..d.n).map(|n| dy[(n * oc + o) * ohw..][..ohw].iter().map(|&v| f64::from(v)).sum::<f64>()).sum::<f64>() as f32
    })
}

/// The sum of `parts` (each `len` long), first to last, element by element.
fn sum_in_order(parts: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    const CHUNK: usize = 1 << 14;
    let mut parts = parts.into_iter();
    let mut sum = parts.next().unwrap_or_else(|| vec![0f32; len]);
    let rest: Vec<Vec<f32>> = parts.collect();
    if !rest.is_empty() {
        super::par::for_each_chunk(&mut sum, CHUNK, |k, out| {
            for part in &rest {
                for (o, &v) in out.iter_mut().zip(&part[k * CHUNK..]) {
                    *o += v;
                }
            }
        });
    }
    sum
}

/// The (cols, rows) transpose of a row-major (rows, cols) matrix, by 32 x 32
/// tiles (a large weight gradient, transposed an element at a time, misses
/// the cache on every write).
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut t = vec![0f32; m.len()];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    t[c * rows + r] = m[r * cols + c];
                }
            }
        }
    }
    t
}

/// The convolution as one graph node: on (x, weight), or (x, weight, bias).
struct Conv2dOp {
    g: Geometry,
    /// relu(conv(x)): backward passes the gradient where the output is
    /// above 0 (PyTorch's in-place ReLU's rule), so the layer keeps one
    /// activation where conv and ReLU as two nodes kept two.
    relu: bool,
    /// The column matrices forward kept for backward (taken by backward).
    kept: HandOff<KeptCols>,
}

/// The weight and bias gradients, on the device backward ran on.
type ParamGrads = (Storage, Option<Storage>);

/// Backward on (x, weight, dy): dx (empty when not wanted); the weight and
/// bias gradients are left in `param_grads`.
struct Conv2dGrad {
    g: Geometry,
    wanted: Wanted,
    kept: HandOff<KeptCols>,
    param_grads: HandOff<ParamGrads>,
}

impl Conv2dOp {
    fn fwd(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let d = Dims::new(x.1, w.1, self.g)?;
        let xs = f32_slice(x.0, x.1, "conv2d_gemm: input")?;
        let ws = f32_slice(w.0, w.1, "conv2d_gemm: weight")?;
        let bs = bias.map(|(s, l)| f32_slice(s, l, "conv2d_gemm: bias")).transpose()?;
        if bs.is_some_and(|b| b.len() != d.oc) {
            candle_core::bail!(
                "conv2d_gemm: bias of {} values for {} output channels",
                bs.map_or(0, |b| b.len()),
                d.oc
            );
        }
        let (y, kept) = forward(xs, ws, bs, &d, self.relu);
        match kept {
            Some(kept) => self.kept.put(kept),
            None => drop(self.kept.take()),
        }
        Ok((CpuStorage::F32(y), Shape::from((d.n, d.oc, d.oh, d.ow))))
    }

    /// (dx where x is part of the graph, dweight, dbias) as tensors.
    fn grads(
        &self,
        x: &Tensor,
        weight: &Tensor,
        y: &Tensor,
        dy: &Tensor,
        with_bias: bool,
    ) -> Result<(Option<Tensor>, Tensor, Option<Tensor>)> {
        let dy = if self.relu { super::relu_mask::mask(y, dy)? } else { dy.clone() };
        let param_grads = HandOff::default();
        let wanted = Wanted { dx: x.track_op(), db: with_bias };
        let op = Conv2dGrad { g: self.g, wanted, kept: self.kept.clone(), param_grads: param_grads.clone() };
        let dx = x.apply_op3_no_bwd(weight, &dy.contiguous()?, &op)?;
        let dx = wanted.dx.then_some(dx);
        let (dw, db) = param_grads.take().expect("the gradient op leaves the parameter gradients");
        let dw = Tensor::from_storage(dw, weight.shape(), BackpropOp::none(), false);
        let db = db.map(|db| Tensor::from_storage(db, weight.dim(0).unwrap_or(0), BackpropOp::none(), false));
        Ok((dx, dw, db))
    }

    /// The forward on the GPU (conv_device.rs over conv_cuda.rs).
    fn cuda(
        &self,
        x: (&CudaStorage, &Layout),
        w: (&CudaStorage, &Layout),
        bias: Option<(&CudaStorage, &Layout)>,
    ) -> Result<(CudaStorage, Shape)> {
        let d = Dims::new(x.1, w.1, self.g)?;
        if let Some((_, l)) = bias.filter(|(_, l)| l.shape().elem_count() != d.oc) {
            candle_core::bail!("conv2d_gemm: bias of {} values for {} output channels", l.shape().elem_count(), d.oc);
        }
        let y = conv_cuda::forward(x, w, bias, &d, self.relu)?;
        Ok((y, Shape::from((d.n, d.oc, d.oh, d.ow))))
    }
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "candle-mpi conv2d"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.fwd((s1, l1), (s2, l2), None)
    }
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        self.cuda((s1, l1), (s2, l2), None)
    }
    fn bwd(&self, x: &Tensor, weight: &Tensor, y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.grads(x, weight, y, dy, false)?;
        Ok((dx, hand_over(weight, dw)))
    }
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "candle-mpi conv2d with bias"
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
        self.fwd((s1, l1), (s2, l2), Some((s3, l3)))
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
        self.cuda((s1, l1), (s2, l2), Some((s3, l3)))
    }
    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = self.grads(x, weight, y, dy, true)?;
        Ok((dx, hand_over(weight, dw), db.and_then(|db| hand_over(bias, db))))
    }
}

impl CustomOp3 for Conv2dGrad {
    fn name(&self) -> &'static str {
        "candle-mpi conv2d backward"
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
        let d = Dims::new(l1, l2, self.g)?;
        let x = f32_slice(s1, l1, "conv2d_gemm backward: input")?;
        let w = f32_slice(s2, l2, "conv2d_gemm backward: weight")?;
        let dy = f32_slice(s3, l3, "conv2d_gemm backward: output gradient")?;
        if dy.len() != d.n * d.oc * d.ohw() {
            candle_core::bail!(
                "conv2d_gemm backward: output gradient of {} values, expected {}",
                dy.len(),
                d.n * d.oc * d.ohw()
            );
        }
        let (dx, dw, db) = backward(x, w, dy, &d, self.wanted, self.kept.take());
        self.param_grads.put((Storage::Cpu(CpuStorage::F32(dw)), db.map(|db| Storage::Cpu(CpuStorage::F32(db)))));
        Ok((CpuStorage::F32(dx), self.dx_shape(l1)))
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
        let d = Dims::new(l1, l2, self.g)?;
        let (dx, dw, db) = conv_cuda::backward((s1, l1), (s2, l2), (s3, l3), &d, self.wanted)?;
        self.param_grads.put((Storage::Cuda(dw), db.map(Storage::Cuda)));
        Ok((dx, self.dx_shape(l1)))
    }
}

impl Conv2dGrad {
    /// The input's shape where its gradient is wanted, else an empty one.
    fn dx_shape(&self, x: &Layout) -> Shape {
        if self.wanted.dx {
            x.shape().clone()
        } else {
            Shape::from(0)
        }
    }
}

/// y = conv2d(x, weight) (+ bias), x (N, C, H, W) f32 on the CPU or a GPU, weight
/// (OC, C, k, k); differentiable in x, weight and bias. The output is
/// contiguous (N, OC, OH, OW).
pub fn conv2d_gemm(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, g: Geometry) -> Result<Tensor> {
    conv2d_gemm_with(x, weight, bias, g, false)
}

/// relu(conv2d_gemm(...)) as one node (see `Conv2dOp::relu`).
pub fn conv2d_gemm_relu(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, g: Geometry) -> Result<Tensor> {
    conv2d_gemm_with(x, weight, bias, g, true)
}

fn conv2d_gemm_with(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, g: Geometry, relu: bool) -> Result<Tensor> {
    Dims::new(x.layout(), weight.layout(), g)?;
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    let op = Conv2dOp { g, relu, kept: HandOff::default() };
    match bias {
        Some(b) => x.apply_op3(&weight, &b.contiguous()?, op),
        None => x.apply_op2(&weight, op),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::columns::MIN_GROUP_COLUMNS;
    use candle_core::{Device, Var};

    fn pseudo(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    /// Output and all three gradients against candle's own conv2d.
    #[test]
    fn matches_candle_conv2d_forward_and_backward() {
        let dev = Device::Cpu;
        // Groups of several images (small outputs), of one image (17x17 and
        // 16x16 outputs: 256 columns or more), and a batch of 5 that splits
        // into groups of 3 and 2 (10x10 outputs). The weight gradient is
        // taken as dW^T (e.g. the first), as dW for OC > C*k*k (the fourth)
        // and for few pixels (the seventh).
        for (n, c, oc, hw, k, stride, padding) in [
            (2, 3, 4, 11, 3, 1, 1),
            (2, 2, 5, 13, 3, 2, 1),
            (2, 3, 2, 16, 11, 4, 2),
            (2, 4, 6, 7, 1, 1, 0),
            (2, 4, 3, 9, 1, 2, 0),
            (2, 2, 3, 10, 5, 1, 2),
            (2, 3, 4, 9, 7, 2, 3),
            (2, 3, 4, 17, 3, 1, 1),
            (3, 5, 4, 16, 1, 1, 0),
            (5, 2, 3, 10, 3, 1, 1),
            (5, 2, 3, 10, 1, 1, 0),
        ] {
            let x = Var::from_vec(pseudo(n * c * hw * hw, 1), (n, c, hw, hw), &dev).unwrap();
            let wt = Var::from_vec(pseudo(oc * c * k * k, 2), (oc, c, k, k), &dev).unwrap();
            let b = Var::from_vec(pseudo(oc, 3), oc, &dev).unwrap();
            let g = Geometry { kernel: k, stride, padding };
            let ours = conv2d_gemm(&x, &wt, Some(&b), g).unwrap();
            let theirs = x
                .conv2d(&wt, padding, stride, 1, 1)
                .unwrap()
                .broadcast_add(&b.reshape((1, oc, 1, 1)).unwrap())
                .unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            let weights = Tensor::from_vec(pseudo(theirs.elem_count(), 4), theirs.shape(), &dev).unwrap();
            let go = (ours.clone() * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let gt = (theirs.clone() * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let close = |a: &Tensor, b: &Tensor, what: &str| {
                let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
                let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
                let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
                let worst = a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0.0, f32::max);
                assert!(
                    worst <= 1e-5 * scale,
                    "{what} (n {n} c {c} oc {oc} hw {hw} k {k} s {stride} p {padding}): off by {worst} of {scale}"
                );
            };
            close(&ours, &theirs, "output");
            close(go.get(&x).unwrap(), gt.get(&x).unwrap(), "input gradient");
            close(go.get(&wt).unwrap(), gt.get(&wt).unwrap(), "weight gradient");
            close(go.get(&b).unwrap(), gt.get(&b).unwrap(), "bias gradient");
        }
    }

    /// A first layer, whose input is data and not part of the graph: no
    /// input gradient is made, and the weight and bias gradients are the
    /// ones the same layer gets when its input is a variable.
    #[test]
    fn data_input_gets_no_gradient_and_the_same_parameter_gradients() {
        let dev = Device::Cpu;
        let (n, c, oc, hw, k) = (2, 3, 4, 11, 3);
        let data = Tensor::from_vec(pseudo(n * c * hw * hw, 1), (n, c, hw, hw), &dev).unwrap();
        let as_var = Var::from_tensor(&data).unwrap();
        let wt = Var::from_vec(pseudo(oc * c * k * k, 2), (oc, c, k, k), &dev).unwrap();
        let b = Var::from_vec(pseudo(oc, 3), oc, &dev).unwrap();
        let g = Geometry { kernel: k, stride: 1, padding: 1 };
        let grads = |x: &Tensor| {
            conv2d_gemm(x, &wt, Some(&b), g).unwrap().sqr().unwrap().sum_all().unwrap().backward().unwrap()
        };
        let (from_data, from_var) = (grads(&data), grads(as_var.as_tensor()));
        assert!(from_data.get(&data).is_none(), "no gradient for the data");
        assert!(from_var.get(&as_var).is_some());
        for (p, what) in [(wt.as_tensor(), "weight"), (b.as_tensor(), "bias")] {
            let a: Vec<f32> = from_data.get(p).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let e: Vec<f32> = from_var.get(p).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(a, e, "{what} gradient");
        }
    }

    /// col2im is im2col's adjoint: <im2col(x), y> = <x, col2im(y)>, for a
    /// group of images inside a batch.
    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        for g in [
            Geometry { kernel: 3, stride: 2, padding: 1 },
            Geometry { kernel: 3, stride: 1, padding: 1 },
            Geometry { kernel: 5, stride: 3, padding: 2 },
        ] {
            let d = Dims { n: 3, c: 3, h: 7, w: 6, oc: 1, oh: g.out_len(7), ow: g.out_len(6), g };
            let x = pseudo(3 * 3 * 7 * 6, 5);
            let images = 1..3;
            let mut cols = Vec::new();
            im2col(&x, &d, images.clone(), &mut cols);
            let y = pseudo(cols.len(), 6);
            let mut back = vec![0f32; 2 * 3 * 7 * 6];
            col2im(&y, &d, images, &mut back);
            let lhs: f64 = cols.iter().zip(&y).map(|(a, b)| (a * b) as f64).sum();
            let rhs: f64 = x[3 * 7 * 6..].iter().zip(&back).map(|(a, b)| (a * b) as f64).sum();
            assert!((lhs - rhs).abs() <= 1e-5 * lhs.abs().max(1.0), "{g:?}: {lhs} vs {rhs}");
        }
    }

    /// The convolution by its definition, in f64: output and the gradients
    /// of x, the weight and the bias for the loss sum(y * dy). (candle's own
    /// conv2d backward refuses some of these geometries: strides that leave
    /// input rows unread.)
    fn reference(d: &Dims, x: &[f32], w: &[f32], b: &[f32], dy: &[f32]) -> [Vec<f32>; 4] {
        let Geometry { kernel: k, stride, padding } = d.g;
        let (mut y, mut dx, mut dw, mut db) =
            (vec![0f64; d.n * d.oc * d.ohw()], vec![0f64; x.len()], vec![0f64; w.len()], vec![0f64; d.oc]);
        for n in 0..d.n {
            for o in 0..d.oc {
                for (oy, ox) in (0..d.oh).flat_map(|a| (0..d.ow).map(move |b| (a, b))) {
                    let at = ((n * d.oc + o) * d.oh + oy) * d.ow + ox;
                    let mut acc = f64::from(b[o]);
                    for (c, ki, kj) in (0..d.c).flat_map(|c| (0..k).flat_map(move |i| (0..k).map(move |j| (c, i, j)))) {
                        let (iy, ix) = (
                            (oy * stride + ki) as isize - padding as isize,
                            (ox * stride + kj) as isize - padding as isize,
                        );
                        if iy < 0 || ix < 0 || iy >= d.h as isize || ix >= d.w as isize {
                            continue;
                        }
                        let xi = ((n * d.c + c) * d.h + iy as usize) * d.w + ix as usize;
                        let wi = ((o * d.c + c) * k + ki) * k + kj;
                        acc += f64::from(x[xi]) * f64::from(w[wi]);
                        dx[xi] += f64::from(w[wi]) * f64::from(dy[at]);
                        dw[wi] += f64::from(x[xi]) * f64::from(dy[at]);
                    }
                    y[at] = acc;
                    db[o] += f64::from(dy[at]);
                }
            }
        }
        let f = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect();
        [f(y), f(dx), f(dw), f(db)]
    }

    /// Every layer geometry a network can meet, generated, against the
    /// definition: kernels 1/3/5/7/11, strides 1/2/4, padding 0-3, outputs from
    /// 1x1 to both sides of the one-image-group threshold (15, 16 and 17
    /// pixels a side around 256 pixels), batches that split into uneven
    /// groups (a last group of one image: a pointwise layer's columns are the
    /// image itself there, which the kept columns once got wrong at 160 px),
    /// channel counts that take the weight gradient both ways; forward, the
    /// three gradients, with the columns kept and computed again.
    #[test]
    fn matches_the_definition_over_generated_geometries() {
        let mut cases = 0;
        for kernel in [1usize, 3, 5, 7, 11] {
            for stride in [1usize, 2, 4] {
                for padding in 0..=3usize {
                    for out in [1usize, 2, 5, 15, 16, 17] {
                        let Some(side) = ((out - 1) * stride + kernel).checked_sub(2 * padding).filter(|&s| s >= 1)
                        else {
                            continue;
                        };
                        let g = Geometry { kernel, stride, padding };
                        // The group size for this output, plus one: the last group holds one image.
                        let uneven = (MIN_GROUP_COLUMNS.div_ceil(out * out) + 1).min(9);
                        for (n, c, oc) in [(1, 2, 3), (uneven, 2, 3), (2, 1, 12)] {
                            let d = Dims { n, c, h: side, w: side + 1, oc, oh: out, ow: g.out_len(side + 1), g };
                            if d.ow == 0 || side + 1 + 2 * padding < kernel {
                                continue;
                            }
                            check_geometry(&d);
                            cases += 1;
                        }
                    }
                }
            }
        }
        assert!(cases > 500, "{cases} geometries");
    }

    fn check_geometry(d: &Dims) {
        let x = pseudo(d.n * d.c * d.hw(), 1);
        let w = pseudo(d.oc * d.ckk(), 2);
        let b = pseudo(d.oc, 3);
        let (y, kept) = forward(&x, &w, Some(&b), d, false);
        let dy = pseudo(y.len(), 4);
        let [ry, rdx, rdw, rdb] = reference(d, &x, &w, &b, &dy);
        let close = |a: &[f32], e: &[f32], what: &str| {
            assert_eq!(a.len(), e.len(), "{what} {d:?}");
            let scale = e.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            let worst = a.iter().zip(e).map(|(p, q)| (p - q).abs()).fold(0.0, f32::max);
            assert!(worst <= 2e-5 * scale, "{what} {d:?}: off by {worst} of {scale}");
        };
        close(&y, &ry, "output");
        let wanted = Wanted { dx: true, db: true };
        let recomputed = backward(&x, &w, &dy, d, wanted, None);
        let with_kept = backward(&x, &w, &dy, d, wanted, kept);
        for (dx, dw, db) in [&recomputed, &with_kept] {
            close(dx, &rdx, "input gradient");
            close(dw, &rdw, "weight gradient");
            close(db.as_ref().unwrap(), &rdb, "bias gradient");
        }
        assert_eq!(recomputed, with_kept, "kept and recomputed columns, {d:?}");
    }

    /// Backward gives the same bits whether forward kept the column matrices
    /// or backward computes them again.
    #[test]
    fn kept_and_recomputed_columns_give_the_same_gradients() {
        for (n, c, oc, hw, g) in [
            (5, 2, 3, 10, Geometry { kernel: 3, stride: 1, padding: 1 }),
            (2, 3, 4, 17, Geometry { kernel: 3, stride: 2, padding: 1 }),
            (4, 3, 2, 6, Geometry { kernel: 1, stride: 1, padding: 0 }),
        ] {
            let d = Dims { n, c, h: hw, w: hw, oc, oh: g.out_len(hw), ow: g.out_len(hw), g };
            let x = pseudo(n * c * hw * hw, 1);
            let w = pseudo(oc * d.ckk(), 2);
            let (y, kept) = forward(&x, &w, None, &d, false);
            assert!(kept.is_some(), "{d:?}: small column matrices are kept");
            let dy = pseudo(y.len(), 3);
            let with = backward(&x, &w, &dy, &d, Wanted { dx: true, db: true }, kept);
            let without = backward(&x, &w, &dy, &d, Wanted { dx: true, db: true }, None);
            assert_eq!(with, without, "{d:?}");
        }
    }

    /// A layer of one group (small planes), whose products are computed in
    /// parts side by side on several threads and whole on one: the output
    /// and every gradient keep their bits, for an even batch and an odd one
    /// (a shorter last part), 3x3 and 1x1, with depths past one GEMM block.
    #[test]
    fn one_group_layers_give_the_same_bits_on_one_two_and_three_threads() {
        for (n, c, oc, hw, g) in [
            (16, 64, 96, 2, Geometry { kernel: 3, stride: 1, padding: 1 }),
            (7, 96, 80, 3, Geometry { kernel: 3, stride: 1, padding: 1 }),
            (16, 600, 72, 2, Geometry { kernel: 1, stride: 1, padding: 0 }),
            (16, 832, 48, 2, Geometry { kernel: 1, stride: 1, padding: 0 }),
        ] {
            let d = Dims { n, c, h: hw, w: hw, oc, oh: g.out_len(hw), ow: g.out_len(hw), g };
            assert_eq!(d.groups().count(), 1, "{d:?}: one group");
            let x = pseudo(n * c * hw * hw, 1);
            let w = pseudo(oc * d.ckk(), 2);
            let dy = pseudo(n * oc * d.ohw(), 3);
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| {
                    let (y, kept) = forward(&x, &w, None, &d, false);
                    (y, backward(&x, &w, &dy, &d, Wanted { dx: true, db: true }, kept))
                })
            };
            let one = run(1);
            for threads in [2, 3] {
                assert!(run(threads) == one, "{d:?}: {threads} threads and one differ");
            }
        }
    }

    /// The fused ReLU gives conv then ReLU: the same output bits, and the
    /// same gradients where no output is exactly 0 (there PyTorch's in-place
    /// ReLU, like this op, passes nothing; candle's ReLU passes the gradient).
    #[test]
    fn fused_relu_is_conv_then_relu() {
        let dev = Device::Cpu;
        let (n, c, oc, hw, k) = (3, 4, 5, 9, 3);
        let x = Var::from_vec(pseudo(n * c * hw * hw, 1), (n, c, hw, hw), &dev).unwrap();
        let wt = Var::from_vec(pseudo(oc * c * k * k, 2), (oc, c, k, k), &dev).unwrap();
        let b = Var::from_vec(pseudo(oc, 3), oc, &dev).unwrap();
        let g = Geometry { kernel: k, stride: 1, padding: 1 };
        let fused = conv2d_gemm_relu(&x, &wt, Some(&b), g).unwrap();
        let apart = conv2d_gemm(&x, &wt, Some(&b), g).unwrap().relu().unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (yf, ya) = (flat(&fused), flat(&apart));
        assert_eq!(yf, ya);
        let zeros = yf.iter().filter(|&&v| v == 0.0).count();
        assert!(zeros > yf.len() / 4, "the ReLU cuts: {zeros} of {}", yf.len());
        let weights = Tensor::from_vec(pseudo(yf.len(), 4), fused.shape(), &dev).unwrap();
        let gf = (fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let ga = (apart * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &wt, &b] {
            assert_eq!(flat(gf.get(v).unwrap()), flat(ga.get(v).unwrap()));
        }
    }
}
