//! Parallel loops for the CPU ops (im2col, col2im, pooling, batch norm, SGD)
//! and the exchange's pack and unpack, that stay on the calling thread when
//! the process computes with one thread.
//!
//! A rayon loop called from outside rayon's pool hands its work to a pool
//! thread and sleeps until that is done: with `--threads 1` that is two
//! wake-ups per op and nothing run in parallel (docs/performance.md has what
//! that cost). candle's own CPU ops already run inline then.

use rayon::prelude::*;

fn one_thread() -> bool {
    rayon::current_num_threads() == 1
}

/// f(index, chunk) for each `len`-sized chunk of `out` (the last may be shorter).
pub fn for_each_chunk<T: Send>(out: &mut [T], len: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    let len = len.max(1);
    if one_thread() {
        out.chunks_mut(len).enumerate().for_each(|(i, c)| f(i, c));
    } else {
        out.par_chunks_mut(len).enumerate().for_each(|(i, c)| f(i, c));
    }
}

/// The sum of f(index, chunk) over the `len`-sized chunks of `out`.
pub fn sum_over_chunks<T: Send>(
    out: &mut [T],
    len: usize,
    f: impl Fn(usize, &mut [T]) -> usize + Sync + Send,
) -> usize {
    let len = len.max(1);
    if one_thread() {
        out.chunks_mut(len).enumerate().map(|(i, c)| f(i, c)).sum()
    } else {
        out.par_chunks_mut(len).enumerate().map(|(i, c)| f(i, c)).sum()
    }
}

/// f(index, a_chunk, b_chunk) for the `len`-sized chunks of two buffers of
/// the same length, taken side by side.
pub fn for_each_chunk_pair<A: Send, B: Send>(
    a: &mut [A],
    b: &mut [B],
    len: usize,
    f: impl Fn(usize, &mut [A], &mut [B]) + Sync + Send,
) {
    let len = len.max(1);
    if one_thread() {
        a.chunks_mut(len).zip(b.chunks_mut(len)).enumerate().for_each(|(i, (x, y))| f(i, x, y));
    } else {
        a.par_chunks_mut(len).zip(b.par_chunks_mut(len)).enumerate().for_each(|(i, (x, y))| f(i, x, y));
    }
}

/// [f(0), f(1), ..., f(n - 1)].
pub fn map<R: Send>(n: usize, f: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
    if one_thread() {
        (0..n).map(f).collect()
    } else {
        (0..n).into_par_iter().map(f).collect()
    }
}

/// [f(item) for item in items], in order; the items may borrow mutably.
pub fn map_owned<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync + Send) -> Vec<R> {
    if one_thread() || items.len() <= 1 {
        items.into_iter().map(f).collect()
    } else {
        items.into_par_iter().map(f).collect()
    }
}

/// A new vector of `len` values, written chunk by chunk in parallel:
/// f(start, out) fills `out`, the elements start..start + out.len().
/// The elementwise ops (a sum and ReLU, a gradient mask) read their inputs
/// at the same offsets.
pub fn elementwise(len: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) -> Vec<f32> {
    const CHUNK: usize = 1 << 14;
    let mut out = zeros(len);
    for_each_chunk(&mut out, CHUNK, |k, chunk| f(k * CHUNK, chunk));
    out
}

/// `len` zeros, written by the compute threads (a vector that is filled
/// again and again from the kept heap costs a pass over memory to clear).
pub fn zeros(len: usize) -> Vec<f32> {
    const CHUNK: usize = 1 << 16;
    let mut v: Vec<f32> = Vec::with_capacity(len);
    let spare = &mut v.spare_capacity_mut()[..len];
    if one_thread() || len < 2 * CHUNK {
        spare.iter_mut().for_each(|x| {
            x.write(0.0);
        });
    } else {
        spare.par_chunks_mut(CHUNK).for_each(|c| {
            c.iter_mut().for_each(|x| {
                x.write(0.0);
            })
        });
    }
    // SAFETY: the first `len` elements were all written just above.
    unsafe { v.set_len(len) };
    v
}
