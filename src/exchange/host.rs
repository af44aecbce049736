//! Buckets in host memory: reusable buffers of wire elements that gradients
//! are packed into (f32 -> x scale -> wire type), summed over all ranks, and
//! unpacked from (wire type -> f32, counting non-finite values). Where every
//! rank shares one host they live in a shared-memory window (`comm::shm`)
//! and gradients are packed straight into it; otherwise in local memory,
//! summed by the rank's host data plane (MPI messages, or NCCL on copies).

use std::rc::Rc;

use candle_core::{DType, Storage, Tensor};
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
    /// gradient (`grad(param)`; zeros for a parameter without one), times `scale`.
    pub fn pack_pieces<'g>(
        &mut self,
        pieces: &[Piece],
        grad: impl Fn(usize) -> Option<&'g Tensor>,
        scale: f32,
    ) -> candle_core::Result<()> {
        for p in pieces {
            match grad(p.param) {
                Some(g) => with_f32_values(g, |v| {
                    self.pack(p.bucket_offset, &v[p.param_offset..p.param_offset + p.len], scale)
                })?,
                None => self.pack(p.bucket_offset, &vec![0.0; p.len], 1.0),
            }
        }
        Ok(())
    }

    /// Unpacks the plan's `pieces` of this bucket into each parameter's f32
    /// values in `out`; returns how many are not finite.
    pub fn unpack_pieces(&self, pieces: &[Piece], out: &mut [Vec<f32>]) -> usize {
        pieces
            .iter()
            .map(|p| self.unpack(p.bucket_offset, &mut out[p.param][p.param_offset..p.param_offset + p.len]))
            .sum()
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

/// Runs `f` on the contiguous f32 values of `t` without a copy where `t` is a
/// contiguous f32 CPU tensor (the usual case), with one copy otherwise.
pub(super) fn with_f32_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(candle_core::CpuStorage::F32(v)), Some((a, b))) = (&*storage, layout.contiguous_offsets())
        {
            return Ok(f(&v[a..b]));
        }
    }
    let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    Ok(f(&v))
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
}
