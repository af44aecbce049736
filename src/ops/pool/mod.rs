//! Pooling that trains: max and average pooling with kernel, stride, padding and
//! ceil mode, and adaptive average pooling, as candle custom ops with a CPU forward
//! and backward.
//!
//! candle's own `max_pool2d`/`avg_pool2d` have no padding and refuse the backward
//! pass when the kernel differs from the stride, yet AlexNet, ResNet50 and
//! GoogLeNet pool 3x3 with stride 2 (and GoogLeNet 3x3 with stride 1, padded, in
//! ceil mode). Semantics follow PyTorch: padding is never the maximum, average
//! pooling counts padded cells in its divisor (`count_include_pad=True`), a
//! ceil-mode window must start inside the input or its left padding, and max
//! pooling sends the gradient to the first maximum in row-major order.
//!
//! Each op is described by the windows it reads along each axis; the same
//! description drives the forward and the backward, so they cannot disagree.
//! The CUDA kernels (`cuda.rs`, kernels/pool.cu) read the same windows.

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "cuda_absent.rs"]
mod cuda;

use std::ops::Range;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};

use super::handoff::HandOff;

/// Kernel, stride, padding and rounding of a square pooling window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2d {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub ceil_mode: bool,
}

impl Pool2d {
    pub fn new(kernel: usize, stride: usize) -> Self {
        Self { kernel, stride, padding: 0, ceil_mode: false }
    }
    pub fn padding(self, padding: usize) -> Self {
        Self { padding, ..self }
    }
    pub fn ceil(self) -> Self {
        Self { ceil_mode: true, ..self }
    }

    /// Output length along one axis of `input` cells (PyTorch's rule), or an error
    /// saying why the window does not fit.
    pub fn output_len(&self, input: usize) -> Result<usize> {
        let Pool2d { kernel, stride, padding, ceil_mode } = *self;
        if kernel == 0 || stride == 0 {
            candle_core::bail!("pooling needs kernel and stride of at least 1, got kernel {kernel}, stride {stride}");
        }
        if padding > kernel / 2 {
            candle_core::bail!("pooling padding {padding} must be at most half the kernel {kernel}");
        }
        let padded = input + 2 * padding;
        if padded < kernel {
            candle_core::bail!(
                "pooling window {kernel} (padding {padding}) is larger than the input's {input} cells: the image is too small for this network"
            );
        }
        let span = padded - kernel;
        let mut out = if ceil_mode { span.div_ceil(stride) } else { span / stride } + 1;
        // In ceil mode the last window must start inside the input or its left padding.
        if ceil_mode && (out - 1) * stride >= input + padding {
            out -= 1;
        }
        Ok(out)
    }
}

/// The windows read along one axis: for output `o`, input cells `start[o]..end[o]`
/// (already clipped to the input), and the divisor average pooling uses.
#[derive(Clone, Debug, PartialEq, Eq)]
struct AxisWindows {
    input: usize,
    start: Vec<usize>,
    end: Vec<usize>,
    divisor: Vec<usize>,
    /// The outputs whose windows lie whole inside the input, `stride` cells
    /// apart and `kernel` long (none for adaptive windows): max pooling
    /// searches them tap by tap, without each window's bounds.
    interior: Range<usize>,
    stride: usize,
    kernel: usize,
}

impl AxisWindows {
    fn strided(input: usize, p: &Pool2d) -> Result<Self> {
        let out = p.output_len(input)?;
        let (mut start, mut end, mut divisor) = (vec![], vec![], vec![]);
        for o in 0..out {
            let lo = (o * p.stride) as isize - p.padding as isize;
            // The divisor counts padding but not cells beyond the padded input.
            let hi_padded = (lo + p.kernel as isize).min((input + p.padding) as isize);
            divisor.push((hi_padded - lo) as usize);
            start.push(lo.max(0) as usize);
            end.push(hi_padded.min(input as isize) as usize);
        }
        // Window o spans o * stride - padding .. + kernel, whole where that
        // starts at or after 0 and ends at or before the input's end.
        let first = p.padding.div_ceil(p.stride).min(out);
        let last = match (input + p.padding).checked_sub(p.kernel) {
            Some(room) => (room / p.stride + 1).clamp(first, out),
            None => first,
        };
        Ok(Self { input, start, end, divisor, interior: first..last, stride: p.stride, kernel: p.kernel })
    }

    /// PyTorch's adaptive windows: floor(o*in/out) .. ceil((o+1)*in/out).
    fn adaptive(input: usize, out: usize) -> Result<Self> {
        if input == 0 || out == 0 {
            candle_core::bail!("adaptive pooling from {input} to {out} cells: both must be at least 1");
        }
        let start: Vec<usize> = (0..out).map(|o| o * input / out).collect();
        let end: Vec<usize> = (0..out).map(|o| ((o + 1) * input).div_ceil(out)).collect();
        let divisor = start.iter().zip(&end).map(|(s, e)| e - s).collect();
        Ok(Self { input, start, end, divisor, interior: 0..0, stride: 0, kernel: 0 })
    }

    fn len(&self) -> usize {
        self.start.len()
    }

    /// The first maximum of each window of `row` (one line of cells along
    /// this axis): its value in `val` and its cell in `at`, as `takes`
    /// decides. The windows at the edges are searched one by one, the
    /// interior ones a tap at a time across all of them.
    fn first_maxima<T: PoolFloat>(&self, row: &[T], val: &mut [T], at: &mut [u32]) {
        for o in (0..self.len()).filter(|o| !self.interior.contains(o)) {
            let (mut best, mut cell) = (row[self.start[o]], self.start[o]);
            for (i, &v) in row.iter().enumerate().take(self.end[o]).skip(self.start[o] + 1) {
                if takes(v, best) {
                    (best, cell) = (v, i);
                }
            }
            (val[o], at[o]) = (best, cell as u32);
        }
        let outputs = self.interior.clone();
        if outputs.is_empty() {
            return;
        }
        let (val, at) = (&mut val[outputs.clone()], &mut at[outputs.clone()]);
        let (first, stride, n) = (self.start[outputs.start], self.stride, outputs.len());
        // Each tap's cells, side by side (copied out where the stride is not 1).
        let mut cells = Vec::new();
        for tap in 0..self.kernel {
            let start = first + tap;
            let taken: &[T] = if stride == 1 {
                &row[start..start + n]
            } else {
                let span = &row[start..start + (n - 1) * stride + 1];
                cells.resize(n, T::ZERO);
                for (k, c) in cells.iter_mut().enumerate() {
                    *c = span[k * stride];
                }
                &cells
            };
            if tap == 0 {
                val.copy_from_slice(taken);
                at.iter_mut().enumerate().for_each(|(k, a)| *a = (start + k * stride) as u32);
            } else {
                fold_maxima(val, at, taken, |k| (start + k * stride) as u32);
            }
        }
    }
}

/// Running first maxima, met in order: where `cand[k]` takes over `val[k]`
/// (see `takes`), `val[k] = cand[k]` and `at[k] = cell(k)`. Masks rather
/// than branches, so the compiler vectorizes it.
#[inline(always)]
fn fold_maxima<T: PoolFloat>(val: &mut [T], at: &mut [u32], cand: &[T], cell: impl Fn(usize) -> u32) {
    let n = val.len();
    let (at, cand) = (&mut at[..n], &cand[..n]);
    for k in 0..n {
        let take = takes(cand[k], val[k]);
        val[k] = T::pick(take, cand[k], val[k]);
        let mask = 0u32.wrapping_sub(take as u32);
        at[k] = (cell(k) & mask) | (at[k] & !mask);
    }
}

/// Whether `v`, met after `best` in a window's row-major order, becomes its
/// maximum: when larger, or the window's first NaN (a NaN is the maximum,
/// as in PyTorch).
#[inline(always)]
fn takes<T: PoolFloat>(v: T, best: T) -> bool {
    (v > best) | (v.is_nan() & !best.is_nan())
}

/// Output columns from which stride-1 max pooling is separable.
const SEPARABLE_MIN_WIDTH: usize = 16;

/// Input cells of the planes one task of pooling takes at least.
const PLANE_CELLS_PER_TASK: usize = 4096;

/// Planes a task takes: enough cells that a task outweighs its hand-over
/// (GoogLeNet's 4x4 and 2x2 planes are a few dozen cells each).
fn planes_per_task(plane_cells: usize) -> usize {
    (PLANE_CELLS_PER_TASK / plane_cells.max(1)).max(1)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Max,
    Avg,
}

/// One pooling op: its kind and its windows along height and width.
#[derive(Clone, Debug)]
struct PoolOp {
    kind: Kind,
    h: AxisWindows,
    w: AxisWindows,
    /// Max pooling on the CPU: each output's argmax (index in its plane),
    /// found by forward and taken by backward, which otherwise searches
    /// every window again.
    argmax: HandOff<Vec<u32>>,
}

/// Floats the CPU kernels run on.
trait PoolFloat:
    Copy
    + Default
    + Send
    + Sync
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::AddAssign
    + std::ops::Div<Output = Self>
    + 'static
{
    const ZERO: Self;
    const NEG_INF: Self;
    fn from_count(n: usize) -> Self;
    fn is_nan(self) -> bool;
    /// `new` if `take`, else `old`, by masking bits (no branch).
    fn pick(take: bool, new: Self, old: Self) -> Self;
}

macro_rules! pool_float {
    ($t:ty, $bits:ty) => {
        impl PoolFloat for $t {
            fn pick(take: bool, new: Self, old: Self) -> Self {
                let mask = <$bits>::wrapping_sub(0, take as $bits);
                <$t>::from_bits((new.to_bits() & mask) | (old.to_bits() & !mask))
            }
            const ZERO: Self = 0.0;
            const NEG_INF: Self = <$t>::NEG_INFINITY;
            fn from_count(n: usize) -> Self {
                n as $t
            }
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
        }
    };
}
pool_float!(f32, u32);
pool_float!(f64, u64);

/// The contiguous slice behind a storage and layout, or an error naming the op.
fn contiguous<'a, T>(data: &'a [T], layout: &Layout, op: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

fn plane_dims(layout: &Layout, op: &str) -> Result<(usize, usize, usize)> {
    match layout.shape().dims() {
        [n, c, h, w] => Ok((n * c, *h, *w)),
        d => candle_core::bail!("{op}: expected an (N, C, H, W) tensor, got shape {d:?}"),
    }
}

impl PoolOp {
    fn out_shape(&self, layout: &Layout) -> Shape {
        let d = layout.shape().dims();
        Shape::from((d[0], d[1], self.h.len(), self.w.len()))
    }

    /// Index (in the plane) of the first maximum of output cell (oh, ow).
    fn argmax<T: PoolFloat>(&self, plane: &[T], width: usize, oh: usize, ow: usize) -> usize {
        let mut best = T::NEG_INF;
        let mut at = self.h.start[oh] * width + self.w.start[ow];
        for ih in self.h.start[oh]..self.h.end[oh] {
            for iw in self.w.start[ow]..self.w.end[ow] {
                let v = plane[ih * width + iw];
                if v > best || v.is_nan() {
                    best = v;
                    at = ih * width + iw;
                    if v.is_nan() {
                        return at;
                    }
                }
            }
        }
        at
    }

    /// Max pooling: each output's value and the index in its plane of its
    /// window's first maximum in row-major order (what `argmax` finds, the
    /// first NaN winning), kept for backward. Separable: first the maxima
    /// of each input row's windows along the width, then the first maximum
    /// of those along the height, taking a later row only where `takes` does.
    fn max_forward<T: PoolFloat>(&self, x: &[T], planes: usize) -> (Vec<T>, Vec<u32>) {
        let (ih, iw) = (self.h.input, self.w.input);
        let (oh, ow) = (self.h.len(), self.w.len());
        let per_task = planes_per_task(ih * iw);
        let mut out = vec![T::ZERO; planes * oh * ow];
        let mut at = vec![0u32; planes * oh * ow];
        super::par::for_each_chunk_pair(&mut out, &mut at, per_task * oh * ow, |task, val, cell| {
            let (mut row_val, mut row_at) = (vec![T::ZERO; ih * ow], vec![0u32; ih * ow]);
            for (k, (val, cell)) in val.chunks_mut(oh * ow).zip(cell.chunks_mut(oh * ow)).enumerate() {
                let plane = &x[(task * per_task + k) * ih * iw..][..ih * iw];
                for r in 0..ih {
                    let (v, a) = (&mut row_val[r * ow..][..ow], &mut row_at[r * ow..][..ow]);
                    self.w.first_maxima(&plane[r * iw..][..iw], v, a);
                }
                for o_h in 0..oh {
                    let (val, cell) = (&mut val[o_h * ow..][..ow], &mut cell[o_h * ow..][..ow]);
                    let (top, bottom) = (self.h.start[o_h], self.h.end[o_h]);
                    val.copy_from_slice(&row_val[top * ow..][..ow]);
                    for (at, &a) in cell.iter_mut().zip(&row_at[top * ow..][..ow]) {
                        *at = (top * iw) as u32 + a;
                    }
                    for r in top + 1..bottom {
                        let (v, a) = (&row_val[r * ow..][..ow], &row_at[r * ow..][..ow]);
                        let base = (r * iw) as u32;
                        fold_maxima(val, cell, v, |k| base + a[k]);
                    }
                }
            }
        });
        (out, at)
    }

    /// Max pooling as `max_forward` gives it, each window searched in turn.
    fn max_forward_by_window<T: PoolFloat>(&self, x: &[T], planes: usize) -> (Vec<T>, Vec<u32>) {
        let (ih, iw) = (self.h.input, self.w.input);
        let (oh, ow) = (self.h.len(), self.w.len());
        let per_task = planes_per_task(ih * iw);
        let mut out = vec![T::ZERO; planes * oh * ow];
        let mut at = vec![0u32; planes * oh * ow];
        super::par::for_each_chunk_pair(&mut out, &mut at, per_task * oh * ow, |task, val, cell| {
            for (k, (val, cell)) in val.chunks_mut(oh * ow).zip(cell.chunks_mut(oh * ow)).enumerate() {
                let plane = &x[(task * per_task + k) * ih * iw..][..ih * iw];
                for o_h in 0..oh {
                    for o_w in 0..ow {
                        let a = self.argmax(plane, iw, o_h, o_w);
                        (val[o_h * ow + o_w], cell[o_h * ow + o_w]) = (plane[a], a as u32);
                    }
                }
            }
        });
        (out, at)
    }

    fn forward<T: PoolFloat>(&self, x: &[T], planes: usize) -> Vec<T> {
        let (ih, iw) = (self.h.input, self.w.input);
        let (oh, ow) = (self.h.len(), self.w.len());
        if self.kind == Kind::Max {
            // Separable where windows overlap most (stride 1: a cell is in
            // nine 3x3 windows) and rows are long enough for its vector
            // loops; elsewhere the window-by-window search is faster
            // (docs/performance.md).
            let (out, at) = if self.h.stride == 1 && self.w.stride == 1 && self.w.len() >= SEPARABLE_MIN_WIDTH {
                self.max_forward(x, planes)
            } else {
                self.max_forward_by_window(x, planes)
            };
            self.argmax.put(at);
            return out;
        }
        let per_task = planes_per_task(ih * iw);
        super::par::filled(planes * oh * ow, per_task * oh * ow, |task, dst| {
            for (k, dst) in dst.chunks_mut(oh * ow).enumerate() {
                let plane = &x[(task * per_task + k) * ih * iw..][..ih * iw];
                for o_h in 0..oh {
                    for o_w in 0..ow {
                        dst[o_h * ow + o_w] = match self.kind {
                            Kind::Max => plane[self.argmax(plane, iw, o_h, o_w)],
                            Kind::Avg => {
                                let mut sum = T::ZERO;
                                for i in self.h.start[o_h]..self.h.end[o_h] {
                                    for j in self.w.start[o_w]..self.w.end[o_w] {
                                        sum += plane[i * iw + j];
                                    }
                                }
                                sum / T::from_count(self.h.divisor[o_h] * self.w.divisor[o_w])
                            }
                        };
                    }
                }
            }
        })
    }

    /// Gradient of the input from the gradient of the output (`x` is needed by max only).
    fn backward<T: PoolFloat>(&self, x: Option<&[T]>, grad_out: &[T], planes: usize) -> Vec<T> {
        let (ih, iw) = (self.h.input, self.w.input);
        let (oh, ow) = (self.h.len(), self.w.len());
        let per_task = planes_per_task(ih * iw);
        // f(plane, its gradient) for each plane, the planes of a task in turn.
        let by_plane = |f: &(dyn Fn(usize, &mut [T]) + Sync)| {
            super::par::filled(planes * ih * iw, per_task * ih * iw, |task, dst| {
                for (k, dst) in dst.chunks_mut(ih * iw).enumerate() {
                    f(task * per_task + k, dst);
                }
            })
        };
        let kept = if x.is_some() { self.argmax.take() } else { None };
        if let Some(at) = kept.filter(|at| at.len() == grad_out.len()) {
            // Max pooling after a CPU forward: route each output's gradient to
            // its argmax, in the same order as the search below would.
            return by_plane(&|p, dst| {
                let range = p * oh * ow..(p + 1) * oh * ow;
                for (&a, &go) in at[range.clone()].iter().zip(&grad_out[range]) {
                    dst[a as usize] += go;
                }
            });
        }
        by_plane(&|p, dst| {
            let g = &grad_out[p * oh * ow..(p + 1) * oh * ow];
            for o_h in 0..oh {
                for o_w in 0..ow {
                    let go = g[o_h * ow + o_w];
                    match (self.kind, x) {
                        (Kind::Max, Some(x)) => {
                            let plane = &x[p * ih * iw..(p + 1) * ih * iw];
                            dst[self.argmax(plane, iw, o_h, o_w)] += go;
                        }
                        _ => {
                            let share = go / T::from_count(self.h.divisor[o_h] * self.w.divisor[o_w]);
                            for i in self.h.start[o_h]..self.h.end[o_h] {
                                for j in self.w.start[o_w]..self.w.end[o_w] {
                                    dst[i * iw + j] += share;
                                }
                            }
                        }
                    }
                }
            }
        })
    }
}

fn unsupported(op: &str, dtype: DType) -> candle_core::Error {
    candle_core::Error::Msg(format!("{op}: CPU pooling supports f32 and f64, got {dtype:?}"))
}

impl CustomOp1 for PoolOp {
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Max => "candle-mpi max_pool2d",
            Kind::Avg => "candle-mpi avg_pool2d",
        }
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (planes, h, w) = plane_dims(layout, self.name())?;
        if h != self.h.input || w != self.w.input {
            candle_core::bail!("{}: planned for {}x{}, got {h}x{w}", self.name(), self.h.input, self.w.input);
        }
        let out = match storage {
            CpuStorage::F32(v) => CpuStorage::F32(self.forward(contiguous(v, layout, self.name())?, planes)),
            CpuStorage::F64(v) => CpuStorage::F64(self.forward(contiguous(v, layout, self.name())?, planes)),
            s => return Err(unsupported(self.name(), s.dtype())),
        };
        Ok((out, self.out_shape(layout)))
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        let (_, h, w) = plane_dims(layout, self.name())?;
        if h != self.h.input || w != self.w.input {
            candle_core::bail!("{}: planned for {}x{}, got {h}x{w}", self.name(), self.h.input, self.w.input);
        }
        let d = self.cuda_dims(layout, self.name())?;
        let out = cuda::forward(storage, layout, &self.window_table(), d, self.kind == Kind::Max, self.name())?;
        Ok((out, self.out_shape(layout)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad_res = grad_res.contiguous()?;
        let grad = match self.kind {
            Kind::Max => arg.apply_op2_no_bwd(&grad_res, &MaxPoolGrad(self.clone()))?,
            Kind::Avg => grad_res.apply_op1_no_bwd(&AvgPoolGrad(self.clone()))?,
        };
        Ok(Some(grad))
    }
}

/// The backward of average pooling: spreads the output gradient over each window.
struct AvgPoolGrad(PoolOp);

/// The backward of max pooling: finds each window's argmax in the input again
/// and routes the output gradient there.
struct MaxPoolGrad(PoolOp);

impl PoolOp {
    /// The windows as the CUDA kernels read them: start, end, divisor along
    /// height, then along width.
    fn window_table(&self) -> Vec<u32> {
        [&self.h.start, &self.h.end, &self.h.divisor, &self.w.start, &self.w.end, &self.w.divisor]
            .iter()
            .flat_map(|v| v.iter().map(|&x| x as u32))
            .collect()
    }

    fn cuda_dims(&self, layout: &Layout, op: &str) -> Result<cuda::PoolDims> {
        let (planes, _, _) = plane_dims(layout, op)?;
        Ok(cuda::PoolDims { planes, ih: self.h.input, iw: self.w.input, oh: self.h.len(), ow: self.w.len() })
    }

    fn in_shape(&self, like: &Layout) -> Shape {
        let d = like.shape().dims();
        Shape::from((d[0], d[1], self.h.input, self.w.input))
    }
}

impl CustomOp1 for AvgPoolGrad {
    fn name(&self) -> &'static str {
        "candle-mpi avg_pool2d backward"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (planes, _, _) = plane_dims(layout, name)?;
        let out = match storage {
            CpuStorage::F32(g) => CpuStorage::F32(self.0.backward(None, contiguous(g, layout, name)?, planes)),
            CpuStorage::F64(g) => CpuStorage::F64(self.0.backward(None, contiguous(g, layout, name)?, planes)),
            s => return Err(unsupported(name, s.dtype())),
        };
        Ok((out, self.0.in_shape(layout)))
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        let d = self.0.cuda_dims(layout, self.name())?;
        let g = (storage, layout);
        let out = cuda::backward(g, g, &self.0.window_table(), d, false, self.name())?;
        Ok((out, self.0.in_shape(layout)))
    }
}

impl CustomOp2 for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "candle-mpi max_pool2d backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (planes, _, _) = plane_dims(l1, name)?;
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => {
                CpuStorage::F32(self.0.backward(Some(contiguous(x, l1, name)?), contiguous(g, l2, name)?, planes))
            }
            (CpuStorage::F64(x), CpuStorage::F64(g)) => {
                CpuStorage::F64(self.0.backward(Some(contiguous(x, l1, name)?), contiguous(g, l2, name)?, planes))
            }
            (s, _) => return Err(unsupported(name, s.dtype())),
        };
        Ok((out, self.0.in_shape(l1)))
    }

    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        let d = self.0.cuda_dims(l1, self.name())?;
        let out = cuda::backward((s1, l1), (s2, l2), &self.0.window_table(), d, true, self.name())?;
        Ok((out, self.0.in_shape(l1)))
    }
}

fn spatial(x: &Tensor) -> Result<(usize, usize)> {
    match x.dims() {
        [_, _, h, w] => Ok((*h, *w)),
        d => candle_core::bail!("pooling expects an (N, C, H, W) tensor, got shape {d:?}"),
    }
}

/// The windows of pooling an (h, w) plane with `p`, as the CUDA kernels read
/// them (see `PoolOp::window_table`), and the output's height and width.
pub fn kernel_windows(h: usize, w: usize, p: Pool2d) -> Result<(Vec<u32>, usize, usize)> {
    let op = PoolOp {
        kind: Kind::Max,
        h: AxisWindows::strided(h, &p)?,
        w: AxisWindows::strided(w, &p)?,
        argmax: HandOff::default(),
    };
    Ok((op.window_table(), op.h.len(), op.w.len()))
}

/// The windows of adaptive average pooling from (h, w) to (oh, ow), as the
/// CUDA kernels read them.
pub fn adaptive_kernel_windows(h: usize, w: usize, oh: usize, ow: usize) -> Result<Vec<u32>> {
    let op = PoolOp {
        kind: Kind::Avg,
        h: AxisWindows::adaptive(h, oh)?,
        w: AxisWindows::adaptive(w, ow)?,
        argmax: HandOff::default(),
    };
    Ok(op.window_table())
}

/// Max pooling with PyTorch's semantics (padding never wins; ties go to the first).
pub fn max_pool2d(x: &Tensor, p: Pool2d) -> Result<Tensor> {
    let (h, w) = spatial(x)?;
    let op = PoolOp {
        kind: Kind::Max,
        h: AxisWindows::strided(h, &p)?,
        w: AxisWindows::strided(w, &p)?,
        argmax: HandOff::default(),
    };
    x.contiguous()?.apply_op1(op)
}

/// Average pooling; padded cells count in the divisor (`count_include_pad=True`).
pub fn avg_pool2d(x: &Tensor, p: Pool2d) -> Result<Tensor> {
    let (h, w) = spatial(x)?;
    let op = PoolOp {
        kind: Kind::Avg,
        h: AxisWindows::strided(h, &p)?,
        w: AxisWindows::strided(w, &p)?,
        argmax: HandOff::default(),
    };
    x.contiguous()?.apply_op1(op)
}

/// Adaptive average pooling to `(out_h, out_w)`, as `nn.AdaptiveAvgPool2d`.
pub fn adaptive_avg_pool2d(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (h, w) = spatial(x)?;
    if (h, w) == (out_h, out_w) {
        return Ok(x.clone());
    }
    let op = PoolOp {
        kind: Kind::Avg,
        h: AxisWindows::adaptive(h, out_h)?,
        w: AxisWindows::adaptive(w, out_w)?,
        argmax: HandOff::default(),
    };
    x.contiguous()?.apply_op1(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Max pooling's backward gives the same bits from the argmax forward kept
    /// as from searching the windows again (what it does without a CPU forward).
    #[test]
    fn kept_and_searched_argmax_give_the_same_gradient() {
        for p in [Pool2d::new(3, 2).padding(1), Pool2d::new(3, 1).padding(1).ceil(), Pool2d::new(2, 2).ceil()] {
            let (planes, side) = (6, 9);
            // Ties on purpose: values repeat every 7, so windows hold equal maxima.
            let x: Vec<f32> = (0..planes * side * side).map(|i| ((i * 5) % 7) as f32).collect();
            let op = PoolOp {
                kind: Kind::Max,
                h: AxisWindows::strided(side, &p).unwrap(),
                w: AxisWindows::strided(side, &p).unwrap(),
                argmax: HandOff::default(),
            };
            let y = op.forward(&x, planes);
            let g: Vec<f32> = (0..y.len()).map(|i| 1.0 + (i % 11) as f32 * 0.25).collect();
            assert!(op.argmax.get().is_some(), "{p:?}: forward keeps the argmax");
            let kept = op.backward(Some(&x), &g, planes);
            assert!(op.argmax.get().is_none(), "{p:?}: backward takes it");
            let searched = op.backward(Some(&x), &g, planes);
            assert_eq!(kept, searched, "{p:?}");
        }
    }

    /// The separable forward finds, for every window, the cell the
    /// row-major search finds: ties to the first, a NaN before all else,
    /// -inf windows to their first cell, edge and interior windows alike.
    #[test]
    fn separable_max_finds_the_first_maximum_of_every_window() {
        let pools = [
            Pool2d::new(3, 2).padding(1),
            Pool2d::new(3, 1).padding(1).ceil(),
            Pool2d::new(3, 2).ceil(),
            Pool2d::new(2, 2),
            Pool2d::new(2, 2).padding(1).ceil(),
            Pool2d::new(5, 3).padding(2),
        ];
        for p in pools {
            for (h, w) in [(9, 9), (7, 10), (4, 4), (3, 5), (2, 2), (1, 3)] {
                let (Ok(oh), Ok(ow)) = (p.output_len(h), p.output_len(w)) else { continue };
                let planes = 3;
                // Values repeat every 7 (ties), with some -inf and NaN cells.
                let x: Vec<f32> = (0..planes * h * w)
                    .map(|i| match i % 23 {
                        5 => f32::NAN,
                        11 | 12 => f32::NEG_INFINITY,
                        _ => ((i * 5) % 7) as f32,
                    })
                    .collect();
                let op = PoolOp {
                    kind: Kind::Max,
                    h: AxisWindows::strided(h, &p).unwrap(),
                    w: AxisWindows::strided(w, &p).unwrap(),
                    argmax: HandOff::default(),
                };
                let (val, at) = op.max_forward(&x, planes);
                let (by_window_val, by_window_at) = op.max_forward_by_window(&x, planes);
                assert_eq!(at, by_window_at, "{p:?} {h}x{w}: both searches find the same cells");
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&val), bits(&by_window_val));
                for q in 0..planes {
                    let plane = &x[q * h * w..][..h * w];
                    for (o_h, o_w) in (0..oh).flat_map(|a| (0..ow).map(move |b| (a, b))) {
                        let k = (q * oh + o_h) * ow + o_w;
                        let want = op.argmax(plane, w, o_h, o_w);
                        assert_eq!(at[k] as usize, want, "{p:?} {h}x{w} plane {q} output ({o_h}, {o_w})");
                        assert_eq!(val[k].to_bits(), plane[want].to_bits());
                    }
                }
            }
        }
    }

    #[test]
    fn output_lengths_follow_pytorch() {
        // AlexNet at 224: 55 -> 27 -> 13 -> 6.
        assert_eq!(Pool2d::new(3, 2).output_len(55).unwrap(), 27);
        assert_eq!(Pool2d::new(3, 2).output_len(13).unwrap(), 6);
        // ResNet stem: 112 -> 56.
        assert_eq!(Pool2d::new(3, 2).padding(1).output_len(112).unwrap(), 56);
        // GoogLeNet, ceil mode: 112 -> 56 -> 28 -> 14 -> 7.
        assert_eq!(Pool2d::new(3, 2).ceil().output_len(112).unwrap(), 56);
        assert_eq!(Pool2d::new(3, 2).ceil().output_len(56).unwrap(), 28);
        assert_eq!(Pool2d::new(2, 2).ceil().output_len(14).unwrap(), 7);
        assert_eq!(Pool2d::new(3, 1).padding(1).ceil().output_len(7).unwrap(), 7);
        // Ceil mode rounds up ...
        assert_eq!(Pool2d::new(3, 2).ceil().output_len(6).unwrap(), 3);
        assert_eq!(Pool2d::new(3, 2).output_len(6).unwrap(), 2);
        // ... but a fourth window would start in the right padding: dropped.
        assert_eq!(Pool2d::new(2, 2).padding(1).ceil().output_len(5).unwrap(), 3);
        assert!(Pool2d::new(3, 2).output_len(2).is_err());
        assert!(Pool2d::new(3, 2).padding(2).output_len(9).is_err());
    }

    #[test]
    fn adaptive_windows_overlap_like_pytorch() {
        let a = AxisWindows::adaptive(5, 3).unwrap();
        assert_eq!(a.start, vec![0, 1, 3]);
        assert_eq!(a.end, vec![2, 4, 5]);
        // Upsampling repeats cells.
        let b = AxisWindows::adaptive(1, 6).unwrap();
        assert_eq!(b.start, vec![0; 6]);
        assert_eq!(b.end, vec![1; 6]);
    }

    #[test]
    fn avg_divisor_counts_padding_but_not_overhang() {
        let a = AxisWindows::strided(5, &Pool2d::new(3, 2).padding(1).ceil()).unwrap();
        // Windows start at -1, 1, 3; the last reaches the right padding (cell 5) only.
        assert_eq!(a.start, vec![0, 1, 3]);
        assert_eq!(a.end, vec![2, 4, 5]);
        assert_eq!(a.divisor, vec![3, 3, 3]);
        let b = AxisWindows::strided(4, &Pool2d::new(3, 2).ceil()).unwrap();
        // Second window starts at 2 and would cover 2..5: it is cut at the input.
        assert_eq!(b.end, vec![3, 4]);
        assert_eq!(b.divisor, vec![3, 2]);
    }
}
