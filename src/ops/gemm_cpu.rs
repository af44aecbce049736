//! A checked, safe call of the gemm crate (the GEMM candle's CPU backend uses)
//! on strided f32 matrices, for the convolution op: it multiplies views
//! (transposes, column blocks) in place, where candle's matmul would need
//! tensors and a graph node for each.

use gemm::Parallelism;

/// A matrix view: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// A contiguous row-major (rows, cols) matrix.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self { data, rows, cols, rs: cols, cs: 1 }
    }

    /// The transpose, without moving anything.
    pub fn t(self) -> Self {
        Self { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }

    /// Columns start..start + count, without moving anything.
    pub fn columns(self, start: usize, count: usize) -> Self {
        assert!(start + count <= self.cols, "gemm: columns past the view");
        let data = if count == 0 { &self.data[..0] } else { &self.data[start * self.cs..] };
        Self { data, cols: count, ..self }
    }
}

fn fits(len: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    rows == 0 || cols == 0 || (rows - 1) * rs + (cols - 1) * cs < len
}

/// How many threads one GEMM may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    /// The compute threads (`--threads`): the gemm crate splits the product.
    All,
    /// The calling thread alone: for products that already run side by side.
    One,
}

/// Whether the columns of an (m, n) product may be computed in parts of
/// `part_n` or more columns with the whole's bits. Each element's dot
/// product is summed in blocks of the inner dimension, and the gemm crate
/// picks that blocking from the shape: a fixed one where m and n are both
/// at most 64, one from k and the cache sizes otherwise; and a single
/// column takes its matrix-vector path. Parts on the same side of both
/// lines sum in the same order.
pub fn column_parts_keep_bits(m: usize, n: usize, part_n: usize) -> bool {
    const SMALL: usize = 64;
    let same_blocking = m > SMALL || n <= SMALL || part_n > SMALL;
    same_blocking && (part_n > 1 || n <= 1)
}

/// dst (row-major, row stride `dst_rs`) = a @ b, or += a @ b when `accumulate`.
pub fn matmul(dst: &mut [f32], dst_rs: usize, accumulate: bool, a: View, b: View, threads: Threads) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "gemm: inner dimensions differ");
    assert!(
        fits(a.data.len(), m, k, a.rs, a.cs) && fits(b.data.len(), k, n, b.rs, b.cs),
        "gemm: operand view out of bounds"
    );
    assert!(fits(dst.len(), m, n, dst_rs, 1), "gemm: destination too small");
    if m == 0 || n == 0 {
        return;
    }
    let pool = rayon::current_num_threads();
    let parallelism = if threads == Threads::All && pool > 1 { Parallelism::Rayon(pool) } else { Parallelism::None };
    // SAFETY: every element the call reads or writes lies inside the slices
    // (checked above), and dst does not alias a or b (it is borrowed mutably).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: View, b: View) -> Vec<f32> {
        let mut out = vec![0f32; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                out[i * b.cols + j] =
                    (0..a.cols).map(|p| a.data[i * a.rs + p * a.cs] * b.data[p * b.rs + j * b.cs]).sum();
            }
        }
        out
    }

    #[test]
    fn products_of_views_and_accumulation() {
        let a: Vec<f32> = (0..35).map(|i| (i % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..40).map(|i| (i % 5) as f32 * 0.5).collect();
        let (a, b) = (View::rows(&a, 5, 7), View::rows(&b, 5, 8));
        // (7x5) @ (5x8): a transposed view on the left.
        let mut dst = vec![0f32; 7 * 8];
        matmul(&mut dst, 8, false, a.t(), b, Threads::All);
        assert_eq!(dst, naive(a.t(), b));
        // Accumulating adds the same product again.
        matmul(&mut dst, 8, true, a.t(), b, Threads::One);
        assert_eq!(dst, naive(a.t(), b).iter().map(|v| 2.0 * v).collect::<Vec<_>>());
    }

    /// Where `column_parts_keep_bits` allows it, a product computed in
    /// column parts has the whole product's bits (depths past one block, so
    /// that the blocking counts; values whose sums round).
    #[test]
    fn column_parts_have_the_whole_products_bits() {
        let value = |i: usize| ((i * 7919 % 1000) as f32 - 500.0) * 1.37e-3;
        for (m, n, k, part_n) in [(384, 64, 832, 32), (48, 64, 1200, 32), (128, 144, 1500, 72), (100, 96, 700, 20)] {
            assert!(column_parts_keep_bits(m, n, part_n), "{m}x{n} in parts of {part_n}");
            let a: Vec<f32> = (0..m * k).map(value).collect();
            let b: Vec<f32> = (0..k * n).map(|i| value(i + 3)).collect();
            let (av, bv) = (View::rows(&a, m, k), View::rows(&b, k, n));
            let mut whole = vec![0f32; m * n];
            matmul(&mut whole, n, false, av, bv, Threads::One);
            let mut parts = vec![0f32; m * n];
            for start in (0..n).step_by(part_n) {
                let cols = part_n.min(n - start);
                let part = bv.columns(start, cols);
                let mut out = vec![0f32; m * cols];
                matmul(&mut out, cols, false, av, part, Threads::One);
                for (row, chunk) in out.chunks(cols).enumerate() {
                    parts[row * n + start..][..cols].copy_from_slice(chunk);
                }
            }
            let differ = whole.iter().zip(&parts).filter(|(w, p)| w.to_bits() != p.to_bits()).count();
            assert_eq!(differ, 0, "{m}x{n}x{k} in parts of {part_n}: {differ} elements differ");
        }
        // Across the line: a small part of a wide product, a single column.
        assert!(!column_parts_keep_bits(48, 96, 32));
        assert!(!column_parts_keep_bits(384, 64, 1));
    }
}
