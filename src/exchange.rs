//! The gradient exchange: one code path around every backend's all-reduce.
//!
//! Parameters are laid end to end in name order (candle's VarMap iterates a
//! HashMap, so its order differs between processes) and cut into fixed buckets
//! of `--bucket-mb`; a bucket boundary may fall inside a tensor. Each step:
//!
//!   f32 gradients -> x 1/N -> wire type (f16 by default) -> all-reduce sum
//!   -> f32 mean gradients, counting non-finite values on the way
//!
//! Dividing before the cast keeps the sum of N ranks inside f16's range when
//! each rank's gradient is. The all-reduce leaves the same bits on every rank,
//! so every rank takes the same decision on a non-finite value without another
//! collective: the step is skipped everywhere and reported.
//! Buckets are allocated once and reused. Where every rank shares one host they
//! live in a shared-memory window (`comm::shm`) and gradients are packed
//! straight into it; otherwise in local memory, reduced with MPI messages.

use std::rc::Rc;
use std::time::Instant;

use candle_core::{backprop::GradStore, DType, Device, Storage, Tensor, Var};
use half::{bf16, f16};
use serde::Serialize;

use crate::comm::{Collective, SharedWindow, Transport, WireBuf, WireElem};

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

/// f32 values, times `scale`, into the wire type.
pub fn pack_scaled<T: WireElem>(src: &[f32], scale: f32, dst: &mut [T]) {
    T::pack_scaled(src, scale, dst)
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

/// The bucket layout `GradExchange::new` would make, as text (parameter names
/// in exchange order, then bucket lengths): what the start-up check compares
/// across ranks before any collective depends on it.
pub fn bucket_layout(params: &[(String, Var)], bucket_bytes: usize, dtype: GradDtype) -> String {
    let sorted = exchange_order(params);
    let (_, lens) = bucket_plan(&sorted, bucket_bytes, dtype);
    let names: Vec<&str> = sorted.iter().map(|(n, _)| n.as_str()).collect();
    let lens: Vec<String> = lens.iter().map(|l| l.to_string()).collect();
    format!("{} | {}", names.join(","), lens.join(","))
}

/// The parameters in exchange order: by name, the same on every rank.
fn exchange_order(params: &[(String, Var)]) -> Vec<(String, Var)> {
    let mut sorted = params.to_vec();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    sorted
}

/// The buckets of parameters in exchange order, and each bucket's length.
fn bucket_plan(sorted: &[(String, Var)], bucket_bytes: usize, dtype: GradDtype) -> (Vec<Vec<Piece>>, Vec<usize>) {
    let sizes: Vec<usize> = sorted.iter().map(|(_, v)| v.elem_count()).collect();
    let plan = plan_buckets(&sizes, (bucket_bytes / dtype.size()).max(1));
    let lens = plan.iter().map(|pieces| pieces.iter().map(|p| p.len).sum()).collect();
    (plan, lens)
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
    Shared { window: Rc<SharedWindow>, offset: usize, result: usize },
}

/// One reusable buffer of gradients on the wire: pack f32 values in, reduce
/// over all ranks, unpack f32 values out.
pub struct WireBucket {
    dtype: GradDtype,
    len: usize,
    place: Place,
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
    /// A bucket in this process's memory (reduced with messages).
    pub fn local(dtype: GradDtype, len: usize) -> Self {
        let buf = match dtype {
            GradDtype::F16 => LocalBuf::F16(vec![f16::ZERO; len]),
            GradDtype::Bf16 => LocalBuf::Bf16(vec![bf16::ZERO; len]),
            GradDtype::F32 => LocalBuf::F32(vec![0.0; len]),
        };
        Self { dtype, len, place: Place::Local(buf) }
    }

    /// Collective: buckets of these lengths, in one shared window when the
    /// transport allows and the backend has one, else in local memory.
    pub fn allocate(comm: &dyn Collective, dtype: GradDtype, lens: &[usize], transport: Transport) -> anyhow::Result<Vec<WireBucket>> {
        let ranks = comm.info().size;
        let inputs: usize = lens.iter().map(|l| l * dtype.size()).sum();
        let results: usize = lens.iter().map(|&l| l.div_ceil(ranks) * dtype.size()).sum();
        let window = match transport {
            Transport::Auto => comm.shared_window(inputs + results)?,
            Transport::Messages => None,
        };
        let (mut offset, mut result) = (0, inputs);
        Ok(lens
            .iter()
            .map(|&len| match &window {
                Some(w) => {
                    let b = WireBucket { dtype, len, place: Place::Shared { window: w.clone(), offset, result } };
                    offset += len * dtype.size();
                    result += len.div_ceil(ranks) * dtype.size();
                    b
                }
                None => WireBucket::local(dtype, len),
            })
            .collect())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when the bucket lives in shared memory.
    pub fn is_shared(&self) -> bool {
        matches!(self.place, Place::Shared { .. })
    }

    /// Writes `src * scale` in the wire type at element `at`.
    pub fn pack(&mut self, at: usize, src: &[f32], scale: f32) {
        assert!(at + src.len() <= self.len, "pack of {} at {at} overflows a bucket of {}", src.len(), self.len);
        match &mut self.place {
            Place::Local(LocalBuf::F16(b)) => pack_scaled(src, scale, &mut b[at..at + src.len()]),
            Place::Local(LocalBuf::Bf16(b)) => pack_scaled(src, scale, &mut b[at..at + src.len()]),
            Place::Local(LocalBuf::F32(b)) => pack_scaled(src, scale, &mut b[at..at + src.len()]),
            Place::Shared { window, offset, .. } => with_wire_type!(self.dtype, T, {
                let at_bytes = *offset + at * std::mem::size_of::<T>();
                // SAFETY: this bucket's range of our slot is ours; no reduction runs during pack.
                let dst = unsafe { window.mine::<T>(at_bytes, src.len()) };
                pack_scaled(src, scale, dst)
            }),
        }
    }

    /// Collective: sums the bucket over all ranks (every rank calls it for the
    /// same bucket in the same order).
    pub fn all_reduce(&mut self, comm: &dyn Collective) -> anyhow::Result<()> {
        match &mut self.place {
            Place::Local(LocalBuf::F16(b)) => comm.all_reduce_sum(WireBuf::F16(b)),
            Place::Local(LocalBuf::Bf16(b)) => comm.all_reduce_sum(WireBuf::Bf16(b)),
            Place::Local(LocalBuf::F32(b)) => comm.all_reduce_sum(WireBuf::F32(b)),
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
            Place::Local(LocalBuf::F16(b)) => f16::unpack_counting(&b[at..at + n], dst),
            Place::Local(LocalBuf::Bf16(b)) => bf16::unpack_counting(&b[at..at + n], dst),
            Place::Local(LocalBuf::F32(b)) => f32::unpack_counting(&b[at..at + n], dst),
            Place::Shared { window, result, .. } => with_wire_type!(self.dtype, T, { window.read_result::<T>(*result, self.len, at, dst) }),
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
    plan: Vec<Vec<Piece>>,
    buckets: Vec<WireBucket>,
    /// Device buckets, when the gradients live on a GPU and NCCL carries them.
    #[cfg(feature = "cuda")]
    device: Option<crate::exchange_cuda::DeviceBuckets>,
}

impl GradExchange {

    /// Collective: plans the exchange of `params` (any order: they are sorted
    /// by name here) and allocates its buckets.
    pub fn new(params: &[(String, Var)], bucket_bytes: usize, dtype: GradDtype, comm: &dyn Collective, transport: Transport) -> anyhow::Result<Self> {
        anyhow::ensure!(bucket_bytes >= dtype.size(), "--bucket-mb: a bucket must hold at least one {} element", dtype.name());
        let sorted = exchange_order(params);
        for pair in sorted.windows(2) {
            anyhow::ensure!(pair[0].0 != pair[1].0, "parameter {} is listed twice", pair[0].0);
        }
        let (plan, lens) = bucket_plan(&sorted, bucket_bytes, dtype);
        // Gradients on a GPU with NCCL at hand stay there (f16 on the wire);
        // every other case packs on the host. All ranks take the same branch
        // (the start-up check compares device-independent settings; the
        // device kind is the same flag on every rank).
        #[cfg(feature = "cuda")]
        let device = match (sorted.first().map(|(_, v)| v.device().clone()), comm.nccl(), dtype) {
            (Some(candle_core::Device::Cuda(d)), Some(_), GradDtype::F16) => Some(crate::exchange_cuda::DeviceBuckets::new(&d, &lens)?),
            _ => None,
        };
        #[cfg(feature = "cuda")]
        let buckets = if device.is_some() { vec![] } else { WireBucket::allocate(comm, dtype, &lens, transport)? };
        #[cfg(not(feature = "cuda"))]
        let buckets = WireBucket::allocate(comm, dtype, &lens, transport)?;
        let (names, vars) = sorted.into_iter().unzip();
        Ok(Self {
            names,
            vars,
            plan,
            buckets,
            #[cfg(feature = "cuda")]
            device,
        })
    }

    /// Parameter names in exchange order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// True when the buckets live in shared memory (all ranks on one host).
    pub fn is_shared(&self) -> bool {
        self.buckets.first().is_some_and(|b| b.is_shared())
    }

    /// Collective: replaces every gradient in `grads` by its mean over all
    /// ranks. A parameter without a gradient on this rank contributes zeros.
    /// When the report says `skipped()`, `grads` is left as it was and must not
    /// be applied.
    pub fn exchange(&mut self, grads: &mut GradStore, comm: &dyn Collective) -> anyhow::Result<ExchangeReport> {
        let scale = 1.0 / comm.info().size as f32;
        let mut report = ExchangeReport::default();
        let t0 = Instant::now();
        #[cfg(feature = "cuda")]
        if let (Some(device), Some(nccl)) = (self.device.as_mut(), comm.nccl()) {
            let (means, nonfinite) = device.exchange(&self.plan, &self.vars, grads, nccl, scale)?;
            report.nonfinite = nonfinite;
            report.comm_s = t0.elapsed().as_secs_f64();
            report.elements = self.vars.iter().map(|v| v.elem_count()).sum();
            if !report.skipped() {
                for (var, mean) in self.vars.iter().zip(means) {
                    grads.insert(var.as_tensor(), mean);
                }
            }
            return Ok(report);
        }
        for (pieces, bucket) in self.plan.iter().zip(&mut self.buckets) {
            for p in pieces {
                match grads.get(self.vars[p.param].as_tensor()) {
                    Some(g) => with_f32_values(g, |v| bucket.pack(p.bucket_offset, &v[p.param_offset..p.param_offset + p.len], scale))?,
                    None => bucket.pack(p.bucket_offset, &vec![0.0; p.len], 1.0),
                }
            }
        }
        let t1 = Instant::now();
        for bucket in &mut self.buckets {
            bucket.all_reduce(comm)?;
        }
        let t2 = Instant::now();
        let mut out: Vec<Vec<f32>> = self.vars.iter().map(|v| vec![0f32; v.elem_count()]).collect();
        for (pieces, bucket) in self.plan.iter().zip(&self.buckets) {
            for p in pieces {
                report.nonfinite += bucket.unpack(p.bucket_offset, &mut out[p.param][p.param_offset..p.param_offset + p.len]);
            }
        }
        report.pack_s = (t1 - t0).as_secs_f64();
        report.comm_s = (t2 - t1).as_secs_f64();
        report.elements = self.vars.iter().map(|v| v.elem_count()).sum();
        if !report.skipped() {
            for (var, values) in self.vars.iter().zip(out) {
                let t = var.as_tensor();
                let mean = Tensor::from_vec(values, t.shape(), &Device::Cpu)?.to_device(t.device())?.to_dtype(t.dtype())?;
                grads.insert(t, mean);
            }
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
