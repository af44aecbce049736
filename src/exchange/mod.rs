//! The gradient exchange: gradients in, mean gradients out, one code path
//! around every data plane (PyTorch DDP's reducer).
//!
//! The plan (`plan.rs`) lays the parameters end to end in name order and
//! cuts them into buckets of `--bucket-mb`; overlapped with backward
//! (`exchange_streamed`), in the order backward finishes them, with a small
//! first bucket, each bucket summed as soon as its gradients exist. The sum
//! of each element does not depend on where it lies in a bucket, so both
//! plans give the same bits. Each step:
//!
//!   f32 gradients -> x 1/N -> wire type (f16 by default) -> all-reduce sum
//!   -> f32 mean gradients, counting non-finite values on the way
//!
//! Dividing before the cast keeps the sum of N ranks inside f16's range when
//! each rank's gradient is. The all-reduce leaves the same bits on every rank,
//! so every rank takes the same decision on a non-finite value without another
//! collective: the step is skipped everywhere and reported. Buckets are
//! allocated once and reused, in host memory (`host.rs`) or, for f16 gradients
//! on a GPU with NCCL, in device memory (`cuda.rs`).

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "cuda_absent.rs"]
mod cuda;
mod handover;
mod host;
pub mod plan;

use std::sync::mpsc::Receiver;
use std::time::Instant;

use candle_core::{backprop::GradStore, Device, Tensor, Var};
use serde::Serialize;

use crate::comm::{Comm, GradDtype, Transport};

use self::cuda::DeviceBuckets;
pub use self::handover::{stage_grads, Backward, StageGrads, StageHook};
pub use self::host::{pack_scaled, unpack, WireBucket};
use self::plan::{bucket_lens, exchange_order, layout_text, Piece, Plan};

/// The first bucket of an overlapped exchange (PyTorch DDP's default size):
/// small, so that the exchange starts early in backward.
pub const FIRST_BUCKET_BYTES: usize = 1 << 20;

/// Elements of `dtype` in a bucket of `bucket_bytes` (at least one).
fn bucket_elems(bucket_bytes: usize, dtype: GradDtype) -> usize {
    (bucket_bytes / dtype.size()).max(1)
}

/// The plan `GradExchange` makes of parameters `names` (`sizes` elements
/// each) in buckets of `bucket_bytes` of `dtype`: by name, or, given each
/// parameter's stage, overlapped with backward behind a first bucket of
/// `FIRST_BUCKET_BYTES` (the predictor plans with it too).
pub fn plan_for(
    names: &[&str],
    sizes: &[usize],
    bucket_bytes: usize,
    dtype: GradDtype,
    stage_of: Option<&[Option<usize>]>,
) -> Plan {
    let first = bucket_elems(FIRST_BUCKET_BYTES.min(bucket_bytes), dtype);
    plan::plan(names, sizes, bucket_elems(bucket_bytes, dtype), stage_of.map(|s| (s, first)))
}

/// The bucket layout `GradExchange::new` would make, as text (parameter names
/// in exchange order, then bucket lengths): what the start-up check compares
/// across ranks before any collective depends on it.
pub fn bucket_layout(params: &[(String, Var)], bucket_bytes: usize, dtype: GradDtype) -> String {
    let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
    let order = exchange_order(&names);
    let sizes: Vec<usize> = order.iter().map(|&i| params[i].1.elem_count()).collect();
    let names: Vec<&str> = order.iter().map(|&i| names[i]).collect();
    layout_text(&names, &sizes, bucket_elems(bucket_bytes, dtype))
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

/// What an exchange overlapped with backward found.
pub struct Streamed {
    pub report: ExchangeReport,
    /// When the backward pass ended (stage 0's gradients arrived).
    pub backward_end: Instant,
}

/// Where the buckets live.
enum Placement {
    Host(Vec<WireBucket>),
    Device(DeviceBuckets),
}

/// The gradient exchange of one model: its bucket plan and reusable buffers.
pub struct GradExchange {
    names: Vec<String>,
    vars: Vec<Var>,
    plan: Vec<Vec<Piece>>,
    placement: Placement,
    /// Overlapped plans: each parameter's stage (exchange order), and the
    /// stage after which each bucket is complete.
    stage_of: Vec<Option<usize>>,
    ready: Vec<usize>,
}

impl GradExchange {
    /// Collective: plans the exchange of `params` (any order: they are sorted
    /// by name here) and allocates its buckets.
    pub fn new(
        params: &[(String, Var)],
        bucket_bytes: usize,
        dtype: GradDtype,
        comm: &Comm,
        transport: Transport,
    ) -> anyhow::Result<Self> {
        Self::build(params, bucket_bytes, dtype, comm, transport, None)
    }

    /// Collective: as `new`, planned for `exchange_streamed`: `stage_of[i]`
    /// is the stage whose backward finishes `params[i]`'s gradient
    /// (`train::staged::stage_of_params`).
    pub fn overlapped(
        params: &[(String, Var)],
        bucket_bytes: usize,
        dtype: GradDtype,
        comm: &Comm,
        transport: Transport,
        stage_of: &[Option<usize>],
    ) -> anyhow::Result<Self> {
        Self::build(params, bucket_bytes, dtype, comm, transport, Some(stage_of))
    }

    fn build(
        params: &[(String, Var)],
        bucket_bytes: usize,
        dtype: GradDtype,
        comm: &Comm,
        transport: Transport,
        stage_of: Option<&[Option<usize>]>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            bucket_bytes >= dtype.size(),
            "--bucket-mb: a bucket must hold at least one {} element",
            dtype.name()
        );
        comm.check_transport(transport)?;
        let all_names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
        let by_name = exchange_order(&all_names);
        for pair in by_name.windows(2) {
            anyhow::ensure!(
                all_names[pair[0]] != all_names[pair[1]],
                "parameter {} is listed twice",
                all_names[pair[0]]
            );
        }
        let sizes: Vec<usize> = params.iter().map(|(_, v)| v.elem_count()).collect();
        let overlapped = stage_of.is_some();
        let Plan { order, buckets: plan, stage_of, ready } =
            plan_for(&all_names, &sizes, bucket_bytes, dtype, stage_of);
        let (names, vars): (Vec<String>, Vec<Var>) = order.iter().map(|&i| params[i].clone()).unzip();
        let lens = bucket_lens(&plan);
        // Every rank takes the same branch: the start-up check compares
        // device-independent settings, and the device kind is one flag.
        let placement = match DeviceBuckets::for_exchange(&vars, comm, dtype, &plan)? {
            Some(device) => Placement::Device(device),
            None => {
                let mut buckets = WireBucket::allocate(comm, dtype, &lens, transport)?;
                // Overlapped, backward has the compute threads while buckets are packed.
                if !overlapped {
                    buckets.iter_mut().for_each(WireBucket::split_over_threads);
                }
                Placement::Host(buckets)
            }
        };
        Ok(Self { names, vars, plan, placement, stage_of, ready })
    }

    /// The parameters in exchange order.
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// For an overlapped plan, each parameter's stage, in exchange order.
    pub fn stage_of(&self) -> &[Option<usize>] {
        &self.stage_of
    }

    /// Buckets in the plan.
    pub fn buckets(&self) -> usize {
        self.plan.len()
    }

    /// True when the buckets live in GPU memory (NCCL sums them).
    pub fn is_on_device(&self) -> bool {
        matches!(self.placement, Placement::Device(_))
    }

    /// Collective, for an overlapped plan on the GPU: runs `backward`, which
    /// hands each stage's gradients to the hook it is given as its kernels
    /// are queued; every bucket is packed as soon as its last stage is, and
    /// its sum queued on NCCL's stream while the GPU goes on with backward.
    /// Returns what `backward` returned, the mean gradients (none when the
    /// step is to be skipped) and the report (without times: the GPU's work
    /// overlaps, and the step times what it waits for).
    pub fn exchange_overlapped_on_device<R>(
        &mut self,
        comm: &Comm,
        backward: &mut Backward<'_, R>,
    ) -> anyhow::Result<(R, GradStore, ExchangeReport)> {
        let Placement::Device(device) = &mut self.placement else {
            anyhow::bail!("an exchange on the GPU needs device buckets");
        };
        anyhow::ensure!(self.ready.len() == self.plan.len(), "this exchange was not planned for overlap");
        let scale = 1.0 / comm.info().size as f32;
        let (out, means, nonfinite) =
            device.exchange_overlapped(&self.plan, &self.ready, &self.stage_of, &self.vars, comm, scale, backward)?;
        let report = ExchangeReport {
            nonfinite,
            elements: self.vars.iter().map(|v| v.elem_count()).sum(),
            ..Default::default()
        };
        let mut grads = GradStore::default();
        if !report.skipped() {
            for (var, mean) in self.vars.iter().zip(means) {
                grads.insert(var.as_tensor(), mean);
            }
        }
        Ok((out, grads, report))
    }

    /// Collective, at the clean end of a run on every rank: frees the
    /// buckets' shared window (dropped instead, it is left to the process's end).
    pub fn release(self) -> anyhow::Result<()> {
        match self.placement {
            Placement::Host(buckets) => WireBucket::release(buckets),
            Placement::Device(_) => Ok(()),
        }
    }

    /// Parameter names in exchange order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// True when the buckets live in shared memory (all ranks on one host).
    pub fn is_shared(&self) -> bool {
        match &self.placement {
            Placement::Host(buckets) => buckets.first().is_some_and(|b| b.is_shared()),
            Placement::Device(_) => false,
        }
    }

    /// Collective: replaces every gradient in `grads` by its mean over all
    /// ranks. A parameter without a gradient on this rank contributes zeros.
    /// On the host each gradient leaves the store once it is packed (so a
    /// step never holds the gradients and their means at once); when the
    /// report says `skipped()`, nothing is put back.
    pub fn exchange(&mut self, grads: &mut GradStore, comm: &Comm) -> anyhow::Result<ExchangeReport> {
        let scale = 1.0 / comm.info().size as f32;
        let mut report =
            ExchangeReport { elements: self.vars.iter().map(|v| v.elem_count()).sum(), ..Default::default() };
        let t0 = Instant::now();
        let means = match &mut self.placement {
            Placement::Device(device) => {
                let (means, nonfinite) = device.exchange(&self.plan, &self.vars, grads, comm, scale)?;
                report.nonfinite = nonfinite;
                report.comm_s = t0.elapsed().as_secs_f64();
                means
            }
            Placement::Host(buckets) => {
                host_exchange(&self.plan, &self.vars, buckets, grads, comm, scale, &mut report)?
            }
        };
        if !report.skipped() {
            for (var, mean) in self.vars.iter().zip(means) {
                grads.insert(var.as_tensor(), mean);
            }
        }
        Ok(report)
    }
}

impl GradExchange {
    /// Collective, for an overlapped plan: takes each stage's gradients from
    /// `arrivals` as backward hands them over, last stage first, and sums
    /// each bucket as soon as all of its gradients are there (in plan order,
    /// the same on every rank), while backward goes on. `watch(true)` and
    /// `watch(false)` bracket each bucket's all-reduce. Returns the mean
    /// gradients of every parameter (none when the step is to be skipped).
    pub fn exchange_streamed(
        &mut self,
        comm: &Comm,
        arrivals: Receiver<StageGrads>,
        watch: &mut dyn FnMut(bool),
    ) -> anyhow::Result<(GradStore, Streamed)> {
        let Placement::Host(buckets) = &mut self.placement else {
            anyhow::bail!("an exchange overlapped with backward needs host buckets");
        };
        anyhow::ensure!(self.ready.len() == self.plan.len(), "this exchange was not planned for overlap");
        let scale = 1.0 / comm.info().size as f32;
        let mut report =
            ExchangeReport { elements: self.vars.iter().map(|v| v.elem_count()).sum(), ..Default::default() };
        let mut grads: Vec<Option<Tensor>> = vec![None; self.vars.len()];
        let mut out: Vec<Vec<f32>> = self.vars.iter().map(|v| vec![0f32; v.elem_count()]).collect();
        // The lowest stage whose gradients arrived (stages arrive last first).
        let mut done_down_to: Option<usize> = None;
        let mut backward_end = None;
        let mut receive = |until: usize, grads: &mut Vec<Option<Tensor>>| -> anyhow::Result<()> {
            while done_down_to.is_none_or(|d| d > until) {
                let a = arrivals
                    .recv()
                    .map_err(|_| anyhow::anyhow!("the backward pass stopped before stage {until} was done"))?;
                done_down_to = Some(a.stage);
                if a.stage == 0 {
                    backward_end = Some(a.at);
                }
                for (i, g) in a.grads {
                    grads[i] = Some(g);
                }
            }
            Ok(())
        };
        for ((pieces, bucket), &ready) in self.plan.iter().zip(buckets.iter_mut()).zip(&self.ready) {
            receive(ready, &mut grads)?;
            let t0 = Instant::now();
            bucket.pack_pieces(pieces, |i| grads[i].as_ref(), scale)?;
            for i in packed_to_the_end(pieces, &self.vars) {
                grads[i] = None;
            }
            let t1 = Instant::now();
            watch(true);
            let summed = bucket.all_reduce(comm);
            watch(false);
            summed?;
            let t2 = Instant::now();
            report.nonfinite += bucket.unpack_pieces(pieces, &mut out);
            report.pack_s += (t1 - t0).as_secs_f64();
            report.comm_s += (t2 - t1).as_secs_f64();
            report.unpack_s += t2.elapsed().as_secs_f64();
        }
        // With no bucket left to wait for, backward still has to end.
        receive(0, &mut grads)?;
        let backward_end = backward_end.expect("stage 0 arrived");
        let t0 = Instant::now();
        let mut means = GradStore::default();
        if !report.skipped() {
            for (var, mean) in self.vars.iter().zip(mean_tensors(&self.vars, out)?) {
                means.insert(var.as_tensor(), mean);
            }
        }
        report.unpack_s += t0.elapsed().as_secs_f64();
        Ok((means, Streamed { report, backward_end }))
    }
}

/// The parameters whose last piece is among `pieces`: once they are packed
/// their f32 gradients are no longer needed.
fn packed_to_the_end<'p>(pieces: &'p [Piece], vars: &'p [Var]) -> impl Iterator<Item = usize> + 'p {
    pieces.iter().filter(|p| p.param_offset + p.len == vars[p.param].elem_count()).map(|p| p.param)
}

/// The host placement's pack, all-reduce and unpack, timed into `report`;
/// the mean gradients (empty when the step is to be skipped).
fn host_exchange(
    plan: &[Vec<Piece>],
    vars: &[Var],
    buckets: &mut [WireBucket],
    grads: &mut GradStore,
    comm: &Comm,
    scale: f32,
    report: &mut ExchangeReport,
) -> anyhow::Result<Vec<Tensor>> {
    let t0 = Instant::now();
    for (pieces, bucket) in plan.iter().zip(buckets.iter_mut()) {
        bucket.pack_pieces(pieces, |i| grads.get(vars[i].as_tensor()), scale)?;
        for i in packed_to_the_end(pieces, vars) {
            grads.remove(vars[i].as_tensor());
        }
    }
    let t1 = Instant::now();
    for bucket in buckets.iter_mut() {
        bucket.all_reduce(comm)?;
    }
    let t2 = Instant::now();
    let lens: Vec<usize> = vars.iter().map(|v| v.elem_count()).collect();
    let mut out = crate::ops::par::zeros_each(&lens);
    for (pieces, bucket) in plan.iter().zip(buckets.iter()) {
        report.nonfinite += bucket.unpack_pieces(pieces, &mut out);
    }
    report.pack_s = (t1 - t0).as_secs_f64();
    report.comm_s = (t2 - t1).as_secs_f64();
    if report.skipped() {
        return Ok(vec![]);
    }
    let means = mean_tensors(vars, out);
    report.unpack_s = t2.elapsed().as_secs_f64();
    means
}

/// Each parameter's mean gradient from its f32 values, on its device in its dtype.
fn mean_tensors(vars: &[Var], out: Vec<Vec<f32>>) -> anyhow::Result<Vec<Tensor>> {
    vars.iter()
        .zip(out)
        .map(|(var, values)| {
            let t = var.as_tensor();
            Ok(Tensor::from_vec(values, t.shape(), &Device::Cpu)?.to_device(t.device())?.to_dtype(t.dtype())?)
        })
        .collect()
}
