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
}
