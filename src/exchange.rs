//! The gradient exchange: one code path around every backend's all-reduce.
//!
//! Parameters are laid end to end in name order (candle's VarMap iterates a
//! HashMap, so its order differs between processes) and cut into fixed buckets
//! of `--bucket-mb`; a bucket boundary may fall inside a tensor. Each step:
//!
//!   f32 gradients -> x 1/N -> wire type (f16 by default) -> all-reduce sum
//!   -> non-finite check -> f32 mean gradients
//!
//! Dividing before the cast keeps the sum of N ranks inside f16's range when
//! each rank's gradient is. The all-reduce leaves the same bits on every rank,
//! so every rank takes the same decision on a non-finite value without another
//! collective: the step is skipped everywhere and reported.
//! Buckets are allocated once and reused.

use std::time::Instant;

use candle_core::{backprop::GradStore, DType, Device, Storage, Tensor, Var};
use half::{bf16, f16};
use serde::Serialize;

use crate::comm::{Collective, WireBuf, WireElem};

/// The type gradients travel in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GradDtype {
    F16,
    Bf16,
    F32,
}

impl GradDtype {
    pub fn size(self) -> usize {
        match self {
            GradDtype::F16 | GradDtype::Bf16 => 2,
            GradDtype::F32 => 4,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            GradDtype::F16 => "f16",
            GradDtype::Bf16 => "bf16",
            GradDtype::F32 => "f32",
        }
    }
}

/// Elements converted per block when packing (stays in L1 as f32).
const BLOCK: usize = 2048;

/// f32 values, times `scale`, into the wire type.
pub fn pack_scaled<T: WireElem>(src: &[f32], scale: f32, dst: &mut [T]) {
    assert_eq!(src.len(), dst.len());
    if scale == 1.0 {
        return T::from_f32(src, dst);
    }
    let mut tmp = [0f32; BLOCK];
    for (s, d) in src.chunks(BLOCK).zip(dst.chunks_mut(BLOCK)) {
        for (t, v) in tmp.iter_mut().zip(s) {
            *t = v * scale;
        }
        T::from_f32(&tmp[..s.len()], d);
    }
}

/// Wire values back to f32.
pub fn unpack<T: WireElem>(src: &[T], dst: &mut [f32]) {
    T::to_f32(src, dst)
}

/// A slice of one parameter that lives in one bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    pub param: usize,
    pub param_offset: usize,
    pub bucket_offset: usize,
    pub len: usize,
}

/// Cuts `sizes` (elements per parameter, in exchange order) into buckets of
/// `bucket_elems` elements; the last bucket holds the rest.
pub fn plan_buckets(sizes: &[usize], bucket_elems: usize) -> Vec<Vec<Piece>> {
    assert!(bucket_elems > 0);
    let mut buckets: Vec<Vec<Piece>> = vec![];
    let mut current: Vec<Piece> = vec![];
    let mut filled = 0;
    for (param, &size) in sizes.iter().enumerate() {
        let mut offset = 0;
        while offset < size {
            let len = (size - offset).min(bucket_elems - filled);
            current.push(Piece { param, param_offset: offset, bucket_offset: filled, len });
            offset += len;
            filled += len;
            if filled == bucket_elems {
                buckets.push(std::mem::take(&mut current));
                filled = 0;
            }
        }
    }
    if !current.is_empty() {
        buckets.push(current);
    }
    buckets
}

enum BucketBuf {
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
    F32(Vec<f32>),
}

impl BucketBuf {
    fn new(dtype: GradDtype, len: usize) -> Self {
        match dtype {
            GradDtype::F16 => BucketBuf::F16(vec![f16::ZERO; len]),
            GradDtype::Bf16 => BucketBuf::Bf16(vec![bf16::ZERO; len]),
            GradDtype::F32 => BucketBuf::F32(vec![0.0; len]),
        }
    }
    fn wire(&mut self) -> WireBuf<'_> {
        match self {
            BucketBuf::F16(b) => WireBuf::F16(b),
            BucketBuf::Bf16(b) => WireBuf::Bf16(b),
            BucketBuf::F32(b) => WireBuf::F32(b),
        }
    }
    fn pack(&mut self, at: usize, src: &[f32], scale: f32) {
        match self {
            BucketBuf::F16(b) => pack_scaled(src, scale, &mut b[at..at + src.len()]),
            BucketBuf::Bf16(b) => pack_scaled(src, scale, &mut b[at..at + src.len()]),
            BucketBuf::F32(b) => pack_scaled(src, scale, &mut b[at..at + src.len()]),
        }
    }
    fn unpack(&self, at: usize, dst: &mut [f32]) {
        let n = dst.len();
        match self {
            BucketBuf::F16(b) => unpack(&b[at..at + n], dst),
            BucketBuf::Bf16(b) => unpack(&b[at..at + n], dst),
            BucketBuf::F32(b) => unpack(&b[at..at + n], dst),
        }
    }
    fn count_nonfinite(&self) -> usize {
        match self {
            BucketBuf::F16(b) => f16::count_nonfinite(b),
            BucketBuf::Bf16(b) => bf16::count_nonfinite(b),
            BucketBuf::F32(b) => f32::count_nonfinite(b),
        }
    }
}

/// Seconds spent in each phase of one exchange, and what it found.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ExchangeReport {
    pub pack_s: f64,
    pub comm_s: f64,
    pub unpack_s: f64,
    /// Non-finite elements after the all-reduce; the step is skipped when non-zero.
    pub nonfinite: usize,
    pub elements: usize,
}

impl ExchangeReport {
    pub fn skipped(&self) -> bool {
        self.nonfinite > 0
    }
}

/// Runs `f` on the contiguous f32 values of `t` without a copy where `t` is a
/// contiguous f32 CPU tensor (the usual case), with one copy otherwise.
fn with_f32_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(candle_core::CpuStorage::F32(v)), Some((a, b))) = (&*storage, layout.contiguous_offsets()) {
            return Ok(f(&v[a..b]));
        }
    }
    let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    Ok(f(&v))
}

/// The gradient exchange of one model: its bucket plan and reusable buffers.
pub struct GradExchange {
    names: Vec<String>,
    vars: Vec<Var>,
    buckets: Vec<(Vec<Piece>, BucketBuf)>,
    dtype: GradDtype,
    bucket_elems: usize,
}

impl GradExchange {
    /// Plans the exchange of `params` (any order: they are sorted by name here).
    pub fn new(params: &[(String, Var)], bucket_bytes: usize, dtype: GradDtype) -> anyhow::Result<Self> {
        anyhow::ensure!(bucket_bytes >= dtype.size(), "--bucket-mb: a bucket must hold at least one {} element", dtype.name());
        let mut sorted: Vec<(String, Var)> = params.to_vec();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        for pair in sorted.windows(2) {
            anyhow::ensure!(pair[0].0 != pair[1].0, "parameter {} is listed twice", pair[0].0);
        }
        let sizes: Vec<usize> = sorted.iter().map(|(_, v)| v.elem_count()).collect();
        let bucket_elems = bucket_bytes / dtype.size();
        let buckets = plan_buckets(&sizes, bucket_elems)
            .into_iter()
            .map(|pieces| {
                let len = pieces.iter().map(|p| p.len).sum();
                (pieces, BucketBuf::new(dtype, len))
            })
            .collect();
        let (names, vars) = sorted.into_iter().unzip();
        Ok(Self { names, vars, buckets, dtype, bucket_elems })
    }

    pub fn dtype(&self) -> GradDtype {
        self.dtype
    }

    /// Parameter names in exchange order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    /// Elements per bucket (the last may hold fewer).
    pub fn bucket_elems(&self) -> usize {
        self.bucket_elems
    }

    /// Replaces every gradient in `grads` by its mean over all ranks. A parameter
    /// without a gradient on this rank contributes zeros. When the report says
    /// `skipped()`, `grads` is left as it was and must not be applied.
    pub fn exchange(&mut self, grads: &mut GradStore, comm: &dyn Collective) -> anyhow::Result<ExchangeReport> {
        let scale = 1.0 / comm.info().size as f32;
        let mut report = ExchangeReport::default();
        let t0 = Instant::now();
        for (pieces, buf) in &mut self.buckets {
            for p in pieces.iter() {
                match grads.get(self.vars[p.param].as_tensor()) {
                    Some(g) => with_f32_values(g, |v| buf.pack(p.bucket_offset, &v[p.param_offset..p.param_offset + p.len], scale))?,
                    None => buf.pack(p.bucket_offset, &vec![0.0; p.len], 1.0),
                }
            }
        }
        let t1 = Instant::now();
        for (_, buf) in &mut self.buckets {
            comm.all_reduce_sum(buf.wire())?;
            report.nonfinite += buf.count_nonfinite();
        }
        let t2 = Instant::now();
        report.pack_s = (t1 - t0).as_secs_f64();
        report.comm_s = (t2 - t1).as_secs_f64();
        report.elements = self.vars.iter().map(|v| v.elem_count()).sum();
        if report.skipped() {
            return Ok(report);
        }
        let mut out: Vec<Vec<f32>> = self.vars.iter().map(|v| vec![0f32; v.elem_count()]).collect();
        for (pieces, buf) in &self.buckets {
            for p in pieces {
                buf.unpack(p.bucket_offset, &mut out[p.param][p.param_offset..p.param_offset + p.len]);
            }
        }
        for (var, values) in self.vars.iter().zip(out) {
            let t = var.as_tensor();
            let mean = Tensor::from_vec(values, t.shape(), &Device::Cpu)?.to_device(t.device())?.to_dtype(t.dtype())?;
            grads.insert(t, mean);
        }
        report.unpack_s = t2.elapsed().as_secs_f64();
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cut_inside_and_between_tensors() {
        let plan = plan_buckets(&[3, 5, 2], 4);
        let lens: Vec<usize> = plan.iter().map(|b| b.iter().map(|p| p.len).sum()).collect();
        assert_eq!(lens, vec![4, 4, 2]);
        assert_eq!(plan[0], vec![Piece { param: 0, param_offset: 0, bucket_offset: 0, len: 3 }, Piece { param: 1, param_offset: 0, bucket_offset: 3, len: 1 }]);
        assert_eq!(plan[1], vec![Piece { param: 1, param_offset: 1, bucket_offset: 0, len: 4 }]);
        assert_eq!(plan[2], vec![Piece { param: 2, param_offset: 0, bucket_offset: 0, len: 2 }]);
        // A boundary exactly between tensors, and one big bucket.
        assert_eq!(plan_buckets(&[4, 4], 4).len(), 2);
        assert_eq!(plan_buckets(&[4, 4], 100).len(), 1);
        assert!(plan_buckets(&[0, 0], 4).is_empty());
    }

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
}
