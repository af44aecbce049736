//! A convolution's shapes and its column matrices: the geometry, the sizes
//! of one call (`Dims`, with the groups of images the CPU op computes at
//! once), and im2col / col2im on the CPU, whose layout and order of
//! additions kernels/conv.cu follows on the GPU.

use std::ops::Range;

use candle_core::{Layout, Result};

/// A square convolution's geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Geometry {
    pub(crate) fn out_len(&self, input: usize) -> usize {
        (input + 2 * self.padding - self.kernel) / self.stride + 1
    }
}

/// GEMM columns a group of images should give at least (below this the gemm
/// crate's blocks are mostly edge; measured in docs/performance.md).
pub(crate) const MIN_GROUP_COLUMNS: usize = 256;

/// Columns each half of a batch gives at least where the batch is cut in
/// two groups rather than left one (see `Dims::group_size`; measured in
/// docs/performance.md).
pub(crate) const MIN_SPLIT_COLUMNS: usize = 128;

/// The shapes of one convolution.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub(crate) n: usize,
    pub(crate) c: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) oc: usize,
    pub(crate) oh: usize,
    pub(crate) ow: usize,
    pub(crate) g: Geometry,
}

impl Dims {
    pub(crate) fn new(x: &Layout, weight: &Layout, g: Geometry) -> Result<Self> {
        let (n, c, h, w) = x.shape().dims4()?;
        let (oc, wc, kh, kw) = weight.shape().dims4()?;
        if wc != c || kh != g.kernel || kw != g.kernel {
            candle_core::bail!(
                "conv2d_gemm: weight {:?} does not fit input {:?} and kernel {}",
                weight.dims(),
                x.dims(),
                g.kernel
            );
        }
        if h + 2 * g.padding < g.kernel || w + 2 * g.padding < g.kernel {
            candle_core::bail!(
                "conv2d_gemm: input {h}x{w} smaller than kernel {} with padding {}",
                g.kernel,
                g.padding
            );
        }
        Ok(Self::of(n, c, h, w, oc, g))
    }
    pub(crate) fn of(n: usize, c: usize, h: usize, w: usize, oc: usize, g: Geometry) -> Self {
        Self { n, c, h, w, oc, oh: g.out_len(h), ow: g.out_len(w), g }
    }
    pub(crate) fn ckk(&self) -> usize {
        self.c * self.g.kernel * self.g.kernel
    }
    pub(crate) fn hw(&self) -> usize {
        self.h * self.w
    }
    pub(crate) fn ohw(&self) -> usize {
        self.oh * self.ow
    }
    /// 1x1, stride 1, no padding: an image is its own column matrix.
    pub(crate) fn pointwise(&self) -> bool {
        self.g == Geometry { kernel: 1, stride: 1, padding: 0 }
    }
    /// The images of each GEMM, in order.
    pub(crate) fn groups(&self) -> impl Iterator<Item = Range<usize>> {
        let size = self.group_size();
        let n = self.n;
        (0..n).step_by(size).map(move |b| b..(b + size).min(n))
    }
    /// Images of a group: enough for `MIN_GROUP_COLUMNS` columns, but where
    /// that would make the whole batch one group, half the batch when each
    /// half still gives `MIN_SPLIT_COLUMNS`: two groups are two slices, run
    /// side by side, where one group's GEMM would be split by the gemm crate
    /// (a hand-over to the pool for every block of its inner dimension).
    pub(crate) fn group_size(&self) -> usize {
        let size = MIN_GROUP_COLUMNS.div_ceil(self.ohw().max(1)).clamp(1, self.n.max(1));
        // The smaller half of an odd batch has n / 2 images.
        if size == self.n && self.n > 1 && (self.n / 2) * self.ohw() >= MIN_SPLIT_COLUMNS {
            self.n.div_ceil(2)
        } else {
            size
        }
    }
    /// The groups dealt into slices, runs of consecutive groups that are
    /// computed side by side, each on one thread with its own buffers
    /// (`scratch_floats` a group): as many as the groups, at most
    /// `MAX_SLICES`, and fewer where their buffers together would pass
    /// `SLICE_SCRATCH_BYTES`. The count follows from the shapes alone, never
    /// from `--threads`, so every sum is taken in the same order, and every
    /// gradient has the same bits, whatever the thread count.
    pub(crate) fn slices(&self, scratch_floats: usize) -> Vec<Vec<Range<usize>>> {
        let groups: Vec<Range<usize>> = self.groups().collect();
        let by_memory = (SLICE_SCRATCH_BYTES / (4 * scratch_floats).max(1)).max(1);
        let count = groups.len().min(MAX_SLICES).min(by_memory).max(1);
        groups.chunks(groups.len().div_ceil(count).max(1)).map(<[_]>::to_vec).collect()
    }
    /// Columns of the widest group's GEMMs.
    pub(crate) fn group_width(&self) -> usize {
        self.group_size() * self.ohw()
    }
}

/// Slices a layer's groups are dealt into at most (see `Dims::slices`).
const MAX_SLICES: usize = 8;

/// Buffers the slices of one layer may hold at once.
const SLICE_SCRATCH_BYTES: usize = 64 << 20;

/// cols (C*k*k, images*OH*OW) of the images `images` of x; row (c, ki, kj),
/// column (image, oh, ow).
pub(crate) fn im2col(x: &[f32], d: &Dims, images: Range<usize>, cols: &mut Vec<f32>) {
    let Geometry { kernel: k, stride, padding } = d.g;
    let (hw, ohw) = (d.hw(), d.ohw());
    let width = images.len() * ohw;
    // Every element is written below (padding as zeros), so the buffer of the
    // previous group is reused without clearing it first.
    cols.resize(d.ckk() * width, 0.0);
    let cols_in = inside(k, d.w, d.ow, stride, padding);
    let rows_in = inside(k, d.h, d.oh, stride, padding);
    let pointwise = d.pointwise();
    // One row per (c, ki, kj): rows are independent.
    super::par::for_each_chunk(cols, width, |row, dst| {
        let (ci, ki, kj) = (row / (k * k), (row / k) % k, row % k);
        let (rows, span) = (&rows_in[ki], &cols_in[kj]);
        for (j, b) in images.clone().enumerate() {
            let plane = &x[(b * d.c + ci) * hw..][..hw];
            let image = &mut dst[j * ohw..][..ohw];
            if pointwise {
                image.copy_from_slice(plane);
                continue;
            }
            for (y, out) in image.chunks_mut(d.ow).enumerate() {
                if y < rows.lo || y >= rows.hi || span.lo == span.hi {
                    out.fill(0.0);
                    continue;
                }
                out[..span.lo].fill(0.0);
                out[span.hi..].fill(0.0);
                let src = &plane[(y * stride + ki - padding) * d.w..][..d.w];
                if stride == 1 {
                    out[span.lo..span.hi].copy_from_slice(&src[span.first..span.first + (span.hi - span.lo)]);
                } else {
                    for (o, xo) in out[span.lo..span.hi].iter_mut().zip((span.first..).step_by(stride)) {
                        *o = src[xo];
                    }
                }
            }
        }
    });
}

/// dx += col2im(cols) for the images `images` (dx holds just their planes):
/// im2col's adjoint.
pub(crate) fn col2im(cols: &[f32], d: &Dims, images: Range<usize>, dx: &mut [f32]) {
    let Geometry { kernel: k, stride, padding } = d.g;
    let (c, hw, ohw) = (d.c, d.hw(), d.ohw());
    let width = images.len() * ohw;
    // Which output columns and rows of each kernel offset read inside the
    // image: the same for every plane, so worked out once (a plane of a
    // few pixels costs less than the divisions that find them).
    let cols_in = inside(k, d.w, d.ow, stride, padding);
    let rows_in = inside(k, d.h, d.oh, stride, padding);
    let pointwise = d.pointwise();
    // Several small planes a task, each task's planes in (image, channel) order.
    let per_task = (PLANE_CELLS_PER_TASK / hw.max(1)).max(1);
    super::par::for_each_chunk(dx, per_task * hw, |task, planes| {
        let first = task * per_task;
        for (p, plane) in planes.chunks_mut(hw).enumerate() {
            let (j, ci) = ((first + p) / c, (first + p) % c);
            if pointwise {
                let src = &cols[ci * width + j * hw..][..hw];
                plane.iter_mut().zip(src).for_each(|(r, &v)| *r += v);
                continue;
            }
            for (ki, rows) in rows_in.iter().enumerate() {
                for (kj, span) in cols_in.iter().enumerate() {
                    let src = &cols[((ci * k + ki) * k + kj) * width + j * ohw..][..ohw];
                    if span.lo == span.hi {
                        // This kernel column reads only padding.
                        continue;
                    }
                    for y in rows.lo..rows.hi {
                        let row = &mut plane[(y * stride + ki - padding) * d.w..][..d.w];
                        let src = &src[y * d.ow + span.lo..y * d.ow + span.hi];
                        if stride == 1 {
                            // Slices side by side: the compiler vectorizes this.
                            for (r, &v) in row[span.first..span.first + src.len()].iter_mut().zip(src) {
                                *r += v;
                            }
                        } else {
                            for (xo, &v) in (span.first..).step_by(stride).zip(src) {
                                row[xo] += v;
                            }
                        }
                    }
                }
            }
        }
    });
}

/// Pixels col2im's tasks take at least (planes of fewer go several to a task).
const PLANE_CELLS_PER_TASK: usize = 4096;

/// For one kernel offset along an axis: the output positions lo..hi whose
/// input position (first for lo, then every stride-th) lies inside the image.
struct Span {
    lo: usize,
    hi: usize,
    first: usize,
}

/// The `Span` of each kernel offset 0..k along an axis of `input` pixels
/// and `output` outputs.
fn inside(k: usize, input: usize, output: usize, stride: usize, padding: usize) -> Vec<Span> {
    (0..k)
        .map(|o| {
            let lo = padding.saturating_sub(o).div_ceil(stride).min(output);
            let hi = ((input + padding).saturating_sub(o)).div_ceil(stride).clamp(lo, output);
            Span { lo, hi, first: (lo * stride + o).saturating_sub(padding) }
        })
        .collect()
}

/// The column matrix (C*k*k, N*OH*OW) of every image of x (N, C, H, W):
/// the layout kernels/conv.cu's im2col writes, for the tests that hold it
/// to this one.
pub fn im2col_all(x: &[f32], (n, c, h, w): (usize, usize, usize, usize), g: Geometry) -> Vec<f32> {
    let mut cols = Vec::new();
    im2col(x, &Dims::of(n, c, h, w, 1, g), 0..n, &mut cols);
    cols
}

/// im2col_all's adjoint: dx (N, C, H, W) from a column matrix, as
/// kernels/conv.cu's col2im computes it.
pub fn col2im_all(cols: &[f32], (n, c, h, w): (usize, usize, usize, usize), g: Geometry) -> Vec<f32> {
    let mut dx = vec![0f32; n * c * h * w];
    col2im(cols, &Dims::of(n, c, h, w, 1, g), 0..n, &mut dx);
    dx
}

/// Which gradients backward computes besides the weight's.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Wanted {
    /// The input's: not for a network's first layer, whose input is data
    /// (the input-gradient GEMM and col2im are a third of a layer's work).
    pub(crate) dx: bool,
    pub(crate) db: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(n: usize, side: usize) -> Vec<Range<usize>> {
        Dims::of(n, 8, side, side, 8, Geometry { kernel: 3, stride: 1, padding: 1 }).groups().collect()
    }

    #[test]
    fn groups_give_enough_columns_and_a_batch_of_small_images_two_halves() {
        // 16x16 outputs: an image alone gives 256 columns.
        assert_eq!(groups(4, 16), vec![0..1, 1..2, 2..3, 3..4]);
        // 8x8: four images a group.
        assert_eq!(groups(16, 8), vec![0..4, 4..8, 8..12, 12..16]);
        // 4x4: the batch of 16 would be one group of 256 columns; two of 128.
        assert_eq!(groups(16, 4), vec![0..8, 8..16]);
        assert_eq!(groups(18, 4), vec![0..16, 16..18]);
        assert_eq!(groups(15, 4), vec![0..15]);
        // An odd batch: its smaller half must give the 128 columns too.
        // (3 x 121 columns would be halves of 242 and 121.)
        assert_eq!(groups(3, 11), vec![0..3]);
        assert_eq!(groups(4, 9), vec![0..2, 2..4]);
        // 2x2: halves of 32 columns would be too narrow; one group.
        assert_eq!(groups(16, 2), vec![0..16]);
        assert_eq!(groups(1, 4), vec![0..1]);
    }
}
