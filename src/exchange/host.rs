//! Buckets in host memory: reusable buffers of wire elements that gradients
//! are packed into (f32 -> x scale -> wire type), summed over all ranks, and
//! unpacked from (wire type -> f32, counting non-finite values). Where every
//! rank shares one host they live in a shared-memory window (`comm::shm`)
//! and gradients are packed straight into it; otherwise in local memory,
//! summed by the rank's host data plane (MPI messages, or NCCL on copies).

use std::ops::{Deref, Range};
use std::rc::Rc;

use candle_core::{CpuStorage, DType, Storage, Tensor};
use half::{bf16, f16};

use super::plan::Piece;
use crate::comm::{Comm, GradDtype, SharedWindow, Transport, WireBuf, WireElem};
use crate::ops::par;

/// f32 values, times `scale`, into the wire type.
pub fn pack_scaled<T: WireElem>(src: &[f32], scale: f32, dst: &mut [T]) {
    T::pack_scaled(src, scale, dst)
}

/// Wire values back to f32.
pub fn unpack<T: WireElem>(src: &[T], dst: &mut [f32]) {
    T::to_f32(src, dst)
}

/// Elements one thread packs or unpacks at a time where a bucket spreads
/// that work over the compute threads; a shorter piece stays on the caller.
const SPLIT: usize = 1 << 16;

/// `pack_scaled`, over the compute threads when `split` and worth it.
fn pack_split<T: WireElem>(src: &[f32], scale: f32, dst: &mut [T], split: bool) {
    assert_eq!(src.len(), dst.len());
    if !split || dst.len() < 2 * SPLIT {
        return T::pack_scaled(src, scale, dst);
    }
    par::for_each_chunk(dst, SPLIT, |i, d| T::pack_scaled(&src[i * SPLIT..i * SPLIT + d.len()], scale, d));
}

/// `T::unpack_counting`, over the compute threads when `split` and worth it.
fn unpack_split<T: WireElem>(src: &[T], dst: &mut [f32], split: bool) -> usize {
    assert_eq!(src.len(), dst.len());
    if !split || dst.len() < 2 * SPLIT {
        return T::unpack_counting(src, dst);
    }
    par::sum_over_chunks(dst, SPLIT, |i, d| T::unpack_counting(&src[i * SPLIT..i * SPLIT + d.len()], d))
}

/// f(source, destination) over every `SPLIT`-long chunk of the pairs, over
/// the compute threads when `split` and worth it: a bucket's pieces in one
/// parallel loop, the small ones with the large, where a loop a piece handed
/// work to the pool (and woke it) once for every large gradient and left
/// the pool idle through every small one. The sum of f's results.
fn over_chunks<S: Sync, D: Send>(
    pairs: Vec<(&[S], &mut [D])>,
    split: bool,
    f: impl Fn(&[S], &mut [D]) -> usize + Sync + Send,
) -> usize {
    let total: usize = pairs.iter().map(|(_, d)| d.len()).sum();
    let chunks: Vec<(&[S], &mut [D])> =
        pairs.into_iter().flat_map(|(s, d)| s.chunks(SPLIT).zip(d.chunks_mut(SPLIT))).collect();
    if split && total >= 2 * SPLIT {
        par::map_owned(chunks, |(s, d)| f(s, d)).into_iter().sum()
    } else {
        chunks.into_iter().map(|(s, d)| f(s, d)).sum()
    }
}

/// `values` cut into the parts `spans` name, (index, offset, length) in
/// increasing offset, each pushed to `parts` as (index, part).
fn cut<'v, T>(
    values: &'v mut [T],
    spans: impl IntoIterator<Item = (usize, usize, usize)>,
    parts: &mut Vec<(usize, &'v mut [T])>,
    what: &str,
) {
    let (mut rest, mut at) = (values, 0);
    for (i, offset, len) in spans {
        let gap = offset.checked_sub(at).unwrap_or_else(|| panic!("{what} overlap"));
        let (part, tail) = std::mem::take(&mut rest)[gap..].split_at_mut(len);
        parts.push((i, part));
        (rest, at) = (tail, offset + len);
    }
}

/// `bucket` cut into each piece's part: (piece index, part), in bucket order.
fn bucket_parts<'b, T>(bucket: &'b mut [T], pieces: &[Piece]) -> Vec<(usize, &'b mut [T])> {
    let mut order: Vec<usize> = (0..pieces.len()).collect();
    order.sort_by_key(|&i| pieces[i].bucket_offset);
    let mut parts = Vec::with_capacity(pieces.len());
    let spans = order.into_iter().map(|i| (i, pieces[i].bucket_offset, pieces[i].len));
    cut(bucket, spans, &mut parts, "pieces of a bucket");
    parts
}

/// Each parameter's values in `out` cut into the parts `pieces` fill:
/// (piece index, part).
fn parameter_parts<'o>(out: &'o mut [Vec<f32>], pieces: &[Piece]) -> Vec<(usize, &'o mut [f32])> {
    let mut order: Vec<usize> = (0..pieces.len()).collect();
    order.sort_by_key(|&i| (pieces[i].param, pieces[i].param_offset));
    let mut order = order.into_iter().peekable();
    let mut parts = Vec::with_capacity(pieces.len());
    for (param, values) in out.iter_mut().enumerate() {
        let spans = std::iter::from_fn(|| order.next_if(|&i| pieces[i].param == param));
        let spans = spans.map(|i| (i, pieces[i].param_offset, pieces[i].len));
        cut(values, spans, &mut parts, "pieces of a parameter");
    }
    assert!(order.next().is_none(), "a piece names a parameter beyond the gradients");
    parts
}

/// A gradient's f32 values, held while a bucket is packed: the tensor's own
/// storage (read-locked: `G` is candle's guard) where it is contiguous f32
/// on the CPU (the usual case), else a copy.
enum Values<G> {
    Held(G, Range<usize>),
    Copied(Vec<f32>),
}

fn values_of(t: &Tensor) -> candle_core::Result<Values<impl Deref<Target = Storage> + '_>> {
    let (storage, layout) = t.storage_and_layout();
    if let (Storage::Cpu(CpuStorage::F32(_)), Some((a, b))) = (&*storage, layout.contiguous_offsets()) {
        return Ok(Values::Held(storage, a..b));
    }
    drop(storage);
    Ok(Values::Copied(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?))
}

impl<G: Deref<Target = Storage>> Values<G> {
    fn slice(&self) -> &[f32] {
        match self {
            Values::Held(storage, range) => match &**storage {
                Storage::Cpu(CpuStorage::F32(v)) => &v[range.clone()],
                _ => unreachable!("storage is held only where it is f32 on the CPU"),
            },
            Values::Copied(v) => v,
        }
    }
}

/// Local wire memory, in the bucket's type.
enum LocalBuf {
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
    F32(Vec<f32>),
}

/// Where a bucket's wire elements live.
enum Place {
    Local(LocalBuf),
    /// Packed inputs at byte `offset` of this rank's slot in a shared window,
    /// this rank's segment of the sum at byte `result`.
    Shared {
        window: Rc<SharedWindow>,
        offset: usize,
        result: usize,
    },
}

/// One reusable buffer of gradients on the wire: pack f32 values in, reduce
/// over all ranks, unpack f32 values out.
pub struct WireBucket {
    dtype: GradDtype,
    len: usize,
    place: Place,
    /// Which data plane sums a bucket in local memory.
    transport: Transport,
    /// Pack and unpack over the compute threads (not while backward runs
    /// beside the exchange and needs them).
    split: bool,
}

/// Runs `$body` with `$T` bound to the Rust type of `$dtype`.
macro_rules! with_wire_type {
    ($dtype:expr, $T:ident, $body:block) => {
        match $dtype {
            GradDtype::F16 => {
                type $T = f16;
                $body
            }
            GradDtype::Bf16 => {
                type $T = bf16;
                $body
            }
            GradDtype::F32 => {
                type $T = f32;
                $body
            }
        }
    };
}

impl WireBucket {
    /// A bucket in this process's memory, reduced by `transport`'s data plane.
    pub fn local(dtype: GradDtype, len: usize, transport: Transport) -> Self {
        let buf = match dtype {
            GradDtype::F16 => LocalBuf::F16(vec![f16::ZERO; len]),
            GradDtype::Bf16 => LocalBuf::Bf16(vec![bf16::ZERO; len]),
            GradDtype::F32 => LocalBuf::F32(vec![0.0; len]),
        };
        Self { dtype, len, place: Place::Local(buf), transport, split: false }
    }

    /// Collective: buckets of these lengths, in one shared window when the
    /// transport allows and the backend has one, else in local memory.
    pub fn allocate(
        comm: &Comm,
        dtype: GradDtype,
        lens: &[usize],
        transport: Transport,
    ) -> anyhow::Result<Vec<WireBucket>> {
        let ranks = comm.info().size;
        let inputs: usize = lens.iter().map(|l| l * dtype.size()).sum();
        let results: usize = lens.iter().map(|&l| l.div_ceil(ranks) * dtype.size()).sum();
        let window = match transport {
            Transport::Auto => SharedWindow::new(comm.control(), inputs + results)?,
            Transport::Messages | Transport::Hierarchical => None,
        };
        let (mut offset, mut result) = (0, inputs);
        Ok(lens
            .iter()
            .map(|&len| match &window {
                Some(w) => {
                    let place = Place::Shared { window: w.clone(), offset, result };
                    let b = WireBucket { dtype, len, place, transport, split: false };
                    offset += len * dtype.size();
                    result += len.div_ceil(ranks) * dtype.size();
                    b
                }
                None => WireBucket::local(dtype, len, transport),
            })
            .collect())
    }

    /// Spreads this bucket's pack and unpack over the compute threads.
    pub fn split_over_threads(&mut self) {
        self.split = true;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Collective, at a point every rank reaches: frees the shared window
    /// behind `buckets` (one window serves all buckets of one `allocate`).
    /// Buckets merely dropped leave it to the end of the process.
    pub fn release(buckets: Vec<WireBucket>) -> anyhow::Result<()> {
        let window = buckets.iter().find_map(|b| match &b.place {
            Place::Shared { window, .. } => Some(window.clone()),
            Place::Local(_) => None,
        });
        drop(buckets);
        window.map_or(Ok(()), SharedWindow::free)
    }

    /// True when the bucket lives in shared memory.
    pub fn is_shared(&self) -> bool {
        matches!(self.place, Place::Shared { .. })
    }

    /// Writes `src * scale` in the wire type at element `at`.
    pub fn pack(&mut self, at: usize, src: &[f32], scale: f32) {
        assert!(at + src.len() <= self.len, "pack of {} at {at} overflows a bucket of {}", src.len(), self.len);
        match &mut self.place {
            Place::Local(LocalBuf::F16(b)) => pack_split(src, scale, &mut b[at..at + src.len()], self.split),
            Place::Local(LocalBuf::Bf16(b)) => pack_split(src, scale, &mut b[at..at + src.len()], self.split),
            Place::Local(LocalBuf::F32(b)) => pack_split(src, scale, &mut b[at..at + src.len()], self.split),
            Place::Shared { window, offset, .. } => with_wire_type!(self.dtype, T, {
                let at_bytes = *offset + at * std::mem::size_of::<T>();
                // SAFETY: this bucket's range of our slot is ours; no reduction runs during pack.
                let dst = unsafe { window.mine::<T>(at_bytes, src.len()) };
                pack_split(src, scale, dst, self.split)
            }),
        }
    }

    /// Packs the plan's `pieces` of this bucket from each parameter's
    /// gradient (`grad(param)`; zeros for a parameter without one), times
    /// `scale`, all pieces in one loop.
    pub fn pack_pieces<'g>(
        &mut self,
        pieces: &[Piece],
        grad: impl Fn(usize) -> Option<&'g Tensor>,
        scale: f32,
    ) -> candle_core::Result<()> {
        // Each gradient held once, however many pieces it has here.
        let mut params: Vec<usize> = pieces.iter().map(|p| p.param).collect();
        params.sort_unstable();
        params.dedup();
        let values =
            params.iter().map(|&i| grad(i).map(values_of).transpose()).collect::<candle_core::Result<Vec<_>>>()?;
        let values_of_param = |param| &values[params.binary_search(&param).expect("a piece's parameter is held")];
        let longest_missing = pieces.iter().filter(|p| values_of_param(p.param).is_none()).map(|p| p.len).max();
        let zeros = vec![0f32; longest_missing.unwrap_or(0)];
        let source = |i: usize| {
            let p = &pieces[i];
            match values_of_param(p.param) {
                Some(v) => &v.slice()[p.param_offset..p.param_offset + p.len],
                None => &zeros[..p.len],
            }
        };
        let split = self.split;
        match &mut self.place {
            Place::Local(LocalBuf::F16(b)) => pack_parts(bucket_parts(b, pieces), source, scale, split),
            Place::Local(LocalBuf::Bf16(b)) => pack_parts(bucket_parts(b, pieces), source, scale, split),
            Place::Local(LocalBuf::F32(b)) => pack_parts(bucket_parts(b, pieces), source, scale, split),
            Place::Shared { window, offset, .. } => with_wire_type!(self.dtype, T, {
                // SAFETY: this bucket's range of our slot is ours; no reduction runs during pack.
                let bucket = unsafe { window.mine::<T>(*offset, self.len) };
                pack_parts(bucket_parts(bucket, pieces), source, scale, split)
            }),
        }
        Ok(())
    }

    /// Unpacks the plan's `pieces` of this bucket into each parameter's f32
    /// values in `out`, all pieces in one loop; returns how many are not finite.
    pub fn unpack_pieces(&self, pieces: &[Piece], out: &mut [Vec<f32>]) -> usize {
        let parts = parameter_parts(out, pieces);
        let split = self.split;
        match &self.place {
            Place::Local(LocalBuf::F16(b)) => unpack_parts(b, pieces, parts, split),
            Place::Local(LocalBuf::Bf16(b)) => unpack_parts(b, pieces, parts, split),
            Place::Local(LocalBuf::F32(b)) => unpack_parts(b, pieces, parts, split),
            // The sum lies in every rank's segment of the window: read piece by piece.
            Place::Shared { window, result, .. } => with_wire_type!(self.dtype, T, {
                parts
                    .into_iter()
                    .map(|(i, dst)| window.read_result::<T>(*result, self.len, pieces[i].bucket_offset, dst))
                    .sum()
            }),
        }
    }

    /// Collective: sums the bucket over all ranks (every rank calls it for the
    /// same bucket in the same order).
    pub fn all_reduce(&mut self, comm: &Comm) -> anyhow::Result<()> {
        match &mut self.place {
            Place::Local(LocalBuf::F16(b)) => comm.host_reduce(self.transport).all_reduce_sum(WireBuf::F16(b)),
            Place::Local(LocalBuf::Bf16(b)) => comm.host_reduce(self.transport).all_reduce_sum(WireBuf::Bf16(b)),
            Place::Local(LocalBuf::F32(b)) => comm.host_reduce(self.transport).all_reduce_sum(WireBuf::F32(b)),
            Place::Shared { window, offset, result } => {
                with_wire_type!(self.dtype, T, { window.all_reduce_sum::<T>(*offset, *result, self.len) });
                Ok(())
            }
        }
    }

    /// Reads elements `at..at + dst.len()` as f32; returns how many are not finite.
    pub fn unpack(&self, at: usize, dst: &mut [f32]) -> usize {
        assert!(at + dst.len() <= self.len, "unpack of {} at {at} overflows a bucket of {}", dst.len(), self.len);
        let n = dst.len();
        match &self.place {
            Place::Local(LocalBuf::F16(b)) => unpack_split(&b[at..at + n], dst, self.split),
            Place::Local(LocalBuf::Bf16(b)) => unpack_split(&b[at..at + n], dst, self.split),
            Place::Local(LocalBuf::F32(b)) => unpack_split(&b[at..at + n], dst, self.split),
            Place::Shared { window, result, .. } => {
                with_wire_type!(self.dtype, T, { window.read_result::<T>(*result, self.len, at, dst) })
            }
        }
    }
}

/// Each piece's part of the bucket from its source values, times `scale`.
fn pack_parts<'s, T: WireElem>(
    parts: Vec<(usize, &mut [T])>,
    source: impl Fn(usize) -> &'s [f32],
    scale: f32,
    split: bool,
) {
    let pairs = parts.into_iter().map(|(i, dst)| (source(i), dst)).collect();
    over_chunks(pairs, split, |s, d| {
        T::pack_scaled(s, scale, d);
        0
    });
}

/// Each piece's part of the parameters from its part of `bucket`; how many
/// values are not finite.
fn unpack_parts<T: WireElem>(bucket: &[T], pieces: &[Piece], parts: Vec<(usize, &mut [f32])>, split: bool) -> usize {
    let pairs = parts.into_iter().map(|(i, dst)| (&bucket[pieces[i].bucket_offset..][..pieces[i].len], dst)).collect();
    over_chunks(pairs, split, |s, d| T::unpack_counting(s, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_scales_before_the_cast_and_unpack_restores() {
        let src: Vec<f32> = (0..5000).map(|i| (i as f32 - 2500.0) * 0.5).collect();
        let mut wire = vec![f16::ZERO; src.len()];
        pack_scaled(&src, 0.25, &mut wire);
        let mut back = vec![0f32; src.len()];
        unpack(&wire, &mut back);
        for (s, b) in src.iter().zip(&back) {
            let want = s * 0.25;
            assert!((b - want).abs() <= want.abs() * 1e-3, "{s}: {b} vs {want}");
        }
        // 8 ranks of 60000 each would overflow f16 if summed before dividing; divided first they fit.
        let mut one = [f16::ZERO];
        pack_scaled(&[60000.0], 1.0 / 8.0, &mut one);
        assert!(one[0].is_finite());
    }

    /// Split over threads, a bucket packs and unpacks the same bits and
    /// counts the same non-finite values as on one thread, a piece starting
    /// mid-bucket and ending off a chunk boundary included.
    #[test]
    fn split_pack_and_unpack_give_the_same_bits() {
        let n = 5 * SPLIT + 123;
        let mut src: Vec<f32> = (0..n).map(|i| ((i * 7919) % 10007) as f32 * 0.37 - 1800.0).collect();
        src[3 * SPLIT + 5] = f32::NAN;
        src[n - 1] = 1e9;
        let mut got = Vec::new();
        for split in [false, true] {
            let mut bucket = WireBucket::local(GradDtype::F16, n + 17, Transport::Messages);
            if split {
                bucket.split_over_threads();
            }
            bucket.pack(17, &src, 0.5);
            let mut back = vec![0f32; n];
            let bad = bucket.unpack(17, &mut back);
            got.push((back.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), bad));
        }
        assert_eq!(got[0].1, 2);
        assert_eq!(got[0], got[1]);
    }

    /// A bucket's pieces packed and unpacked in one loop give what packing
    /// and unpacking them one by one gives, split over two threads or not:
    /// pieces out of order, gaps in the bucket and in a parameter, a
    /// parameter without a gradient (zeros), a non-contiguous gradient (a
    /// copy), a NaN and an overflow counted.
    #[test]
    fn pieces_in_one_loop_match_piece_by_piece() {
        let dev = candle_core::Device::Cpu;
        let lens = [3 * SPLIT + 11, 5, 2 * SPLIT];
        let mut first: Vec<f32> = (0..lens[0]).map(|i| ((i * 7919) % 10007) as f32 * 0.37 - 1800.0).collect();
        first[SPLIT + 3] = f32::NAN;
        first[lens[0] - 1] = 1e9;
        let third: Vec<f32> = (0..lens[2]).map(|i| (i % 977) as f32 * -0.11).collect();
        let grads = [
            Some(Tensor::from_vec(first, lens[0], &dev).unwrap()),
            None,
            // Transposed: not contiguous, so packed from a copy.
            Some(Tensor::from_vec(third, (SPLIT, 2), &dev).unwrap().t().unwrap()),
        ];
        let piece = |param, param_offset, bucket_offset, len| Piece { param, param_offset, bucket_offset, len };
        let pieces = [
            piece(2, 0, 0, lens[2]),
            piece(0, 7, lens[2] + 9, lens[0] - 7),
            piece(1, 0, lens[2], 5),
            piece(0, 0, lens[2] + 5, 4),
        ];
        let len = lens[2] + 9 + lens[0] - 7;
        let flat = |g: &Option<Tensor>, n| match g {
            Some(t) => t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            None => vec![0f32; n],
        };
        // Piece by piece, on the calling thread.
        let mut one_by_one = WireBucket::local(GradDtype::F16, len, Transport::Messages);
        for p in &pieces {
            let values = flat(&grads[p.param], lens[p.param]);
            one_by_one.pack(p.bucket_offset, &values[p.param_offset..p.param_offset + p.len], 0.5);
        }
        let mut want_wire = vec![0f32; len];
        one_by_one.unpack(0, &mut want_wire);
        let mut want_out: Vec<Vec<f32>> = lens.iter().map(|&n| vec![-1.0; n]).collect();
        let want_bad: usize = pieces
            .iter()
            .map(|p| one_by_one.unpack(p.bucket_offset, &mut want_out[p.param][p.param_offset..][..p.len]))
            .sum();
        assert_eq!(want_bad, 2);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        for split in [false, true] {
            // Made on the pool's thread: a bucket may not change threads.
            let (wire, out, bad) = pool.install(|| {
                let mut bucket = WireBucket::local(GradDtype::F16, len, Transport::Messages);
                if split {
                    bucket.split_over_threads();
                }
                bucket.pack_pieces(&pieces, |i| grads[i].as_ref(), 0.5).unwrap();
                let mut wire = vec![0f32; len];
                bucket.unpack(0, &mut wire);
                let mut out: Vec<Vec<f32>> = lens.iter().map(|&n| vec![-1.0; n]).collect();
                let bad = bucket.unpack_pieces(&pieces, &mut out);
                (wire, out, bad)
            });
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&wire), bits(&want_wire), "the bucket, split {split}");
            for (got, want) in out.iter().zip(&want_out) {
                assert_eq!(bits(got), bits(want), "the unpacked parameters, split {split}");
            }
            assert_eq!(bad, want_bad, "non-finite count, split {split}");
        }
    }
}
