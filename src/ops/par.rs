//! Parallel loops for the CPU ops (im2col, col2im, pooling, batch norm, SGD)
//! and the exchange's pack and unpack, that stay on the calling thread when
//! the process computes with one thread.
//!
//! A rayon loop called from outside rayon's pool hands its work to a pool
//! thread and sleeps until that is done: with `--threads 1` that is two
//! wake-ups per op and nothing run in parallel (docs/performance.md has what
//! that cost). candle's own CPU ops already run inline then.

use std::mem::MaybeUninit;

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

/// (a(), b()), side by side where the process has more than one thread.
pub fn join<A: Send, B: Send>(a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B + Send) -> (A, B) {
    if one_thread() {
        (a(), b())
    } else {
        rayon::join(a, b)
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
    filled(len, CHUNK, |k, chunk| f(k * CHUNK, chunk))
}

/// A new vector of `len` numbers, written in parallel: f(index, chunk) fills
/// the `chunk_len`-sized chunk `index` (the last may be shorter). Each chunk
/// is zeroed by its own task just before f (f may add into it): the zeros
/// are written while the chunk is in cache, not in a pass over memory and a
/// parallel loop of their own.
pub fn filled<T: Copy + Default + Send>(
    len: usize,
    chunk_len: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) -> Vec<T> {
    let chunk_len = chunk_len.max(1);
    let mut v: Vec<T> = Vec::with_capacity(len);
    let spare = &mut v.spare_capacity_mut()[..len];
    let fill = |(i, chunk): (usize, &mut [MaybeUninit<T>])| f(i, zeroed(chunk));
    if one_thread() {
        spare.chunks_mut(chunk_len).enumerate().for_each(fill);
    } else {
        spare.par_chunks_mut(chunk_len).enumerate().for_each(fill);
    }
    // SAFETY: the chunks cover the first `len` elements and `zeroed` wrote each.
    unsafe { v.set_len(len) };
    v
}

/// A new vector of consecutive parts, `lens[i]` values long, part i zeroed
/// and then written by f(items[i], part) on a task of its own (as `filled`
/// does its chunks); with f's results in order.
pub fn filled_parts<T: Send, R: Send>(
    lens: &[usize],
    items: Vec<T>,
    f: impl Fn(T, &mut [f32]) -> R + Sync + Send,
) -> (Vec<f32>, Vec<R>) {
    assert_eq!(lens.len(), items.len(), "filled_parts: one length per item");
    let len = lens.iter().sum();
    let mut v: Vec<f32> = Vec::with_capacity(len);
    let mut spare = &mut v.spare_capacity_mut()[..len];
    let mut parts = Vec::with_capacity(lens.len());
    for &part_len in lens {
        let (part, rest) = std::mem::take(&mut spare).split_at_mut(part_len);
        parts.push(part);
        spare = rest;
    }
    let results = map_owned(items.into_iter().zip(parts).collect(), |(item, part)| f(item, zeroed(part)));
    // SAFETY: the parts cover the first `len` elements and `zeroed` wrote each.
    unsafe { v.set_len(len) };
    (v, results)
}

/// `part` with every element written zero (`T::default()`).
fn zeroed<T: Copy + Default>(part: &mut [MaybeUninit<T>]) -> &mut [T] {
    part.fill(MaybeUninit::new(T::default()));
    // SAFETY: every element was written just above, and T and
    // MaybeUninit<T> have the same layout.
    unsafe { &mut *(part as *mut [MaybeUninit<T>] as *mut [T]) }
}

/// Vectors of `lens[i]` zeros, written by the compute threads in one
/// parallel loop, the short ones with the long (vectors filled again and
/// again from the kept heap cost a pass over memory to clear); fewer than
/// two chunks' worth in all on the calling thread.
pub fn zeros_each(lens: &[usize]) -> Vec<Vec<f32>> {
    const CHUNK: usize = 1 << 16;
    if one_thread() || lens.iter().sum::<usize>() < 2 * CHUNK {
        return lens.iter().map(|&len| vec![0.0; len]).collect();
    }
    let mut out: Vec<Vec<f32>> = lens.iter().map(|&len| Vec::with_capacity(len)).collect();
    let chunks: Vec<&mut [MaybeUninit<f32>]> =
        out.iter_mut().zip(lens).flat_map(|(v, &len)| v.spare_capacity_mut()[..len].chunks_mut(CHUNK)).collect();
    chunks.into_par_iter().for_each(|chunk| {
        zeroed(chunk);
    });
    for (v, &len) in out.iter_mut().zip(lens) {
        // SAFETY: the chunks cover each vector's first `len` elements and `zeroed` wrote each.
        unsafe { v.set_len(len) };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap()
    }

    /// Every chunk and part starts at zero (f adds into it) and lands in
    /// its place, at 1 and 2 threads, the last chunk short.
    #[test]
    fn filled_chunks_and_parts_start_at_zero_in_place() {
        let len = 3 * 1000 + 7;
        let expected: Vec<f32> = (0..len).map(|i| (i / 1000) as f32 + 0.5).collect();
        for threads in [1, 2] {
            let chunks = pool(threads).install(|| {
                filled(len, 1000, |k, chunk: &mut [f32]| chunk.iter_mut().for_each(|v| *v += k as f32 + 0.5))
            });
            assert_eq!(chunks, expected, "filled, {threads} threads");
            let lens = [1000, 0, 1000, 1000, 7];
            let (parts, sums) = pool(threads).install(|| {
                filled_parts(&lens, vec![0, 9, 1, 2, 3], |k, part| {
                    part.iter_mut().for_each(|v| *v += k as f32 + 0.5);
                    part.len() * k
                })
            });
            assert_eq!(parts, expected, "filled_parts, {threads} threads");
            assert_eq!(sums, vec![0, 0, 1000, 2000, 21], "filled_parts' results in order");
        }
    }
}
