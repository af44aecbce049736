//! The gradient exchange: gradients in, mean gradients out, one code path
//! around every data plane (PyTorch DDP's reducer, without overlap yet).
//!
//! The plan (`plan.rs`) lays the parameters end to end in name order and
//! cuts them into buckets of `--bucket-mb`. Each step:
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
mod host;
pub mod plan;

use std::time::Instant;

use candle_core::{backprop::GradStore, Device, Tensor, Var};
use serde::Serialize;

use crate::comm::{Comm, GradDtype, Transport};

use self::cuda::DeviceBuckets;
pub use self::host::{pack_scaled, unpack, WireBucket};
use self::plan::{bucket_lens, exchange_order, layout_text, plan_buckets, Piece};

/// Elements of `dtype` in a bucket of `bucket_bytes` (at least one).
fn bucket_elems(bucket_bytes: usize, dtype: GradDtype) -> usize {
    (bucket_bytes / dtype.size()).max(1)
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
        anyhow::ensure!(
            bucket_bytes >= dtype.size(),
            "--bucket-mb: a bucket must hold at least one {} element",
            dtype.name()
        );
        comm.check_transport(transport)?;
        let all_names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
        let order = exchange_order(&all_names);
        for pair in order.windows(2) {
            anyhow::ensure!(
                all_names[pair[0]] != all_names[pair[1]],
                "parameter {} is listed twice",
                all_names[pair[0]]
            );
        }
        let (names, vars): (Vec<String>, Vec<Var>) = order.iter().map(|&i| params[i].clone()).unzip();
        let sizes: Vec<usize> = vars.iter().map(|v| v.elem_count()).collect();
        let plan = plan_buckets(&sizes, bucket_elems(bucket_bytes, dtype));
        let lens = bucket_lens(&plan);
        // Every rank takes the same branch: the start-up check compares
        // device-independent settings, and the device kind is one flag.
        let placement = match DeviceBuckets::for_exchange(&vars, comm, dtype, &lens)? {
            Some(device) => Placement::Device(device),
            None => Placement::Host(WireBucket::allocate(comm, dtype, &lens, transport)?),
        };
        Ok(Self { names, vars, plan, placement })
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
    /// When the report says `skipped()`, `grads` is left as it was and must not
    /// be applied.
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

/// The host placement's pack, all-reduce and unpack, timed into `report`;
/// the mean gradients (empty when the step is to be skipped).
fn host_exchange(
    plan: &[Vec<Piece>],
    vars: &[Var],
    buckets: &mut [WireBucket],
    grads: &GradStore,
    comm: &Comm,
    scale: f32,
    report: &mut ExchangeReport,
) -> anyhow::Result<Vec<Tensor>> {
    let t0 = Instant::now();
    for (pieces, bucket) in plan.iter().zip(buckets.iter_mut()) {
        for p in pieces {
            match grads.get(vars[p.param].as_tensor()) {
                Some(g) => host::with_f32_values(g, |v| {
                    bucket.pack(p.bucket_offset, &v[p.param_offset..p.param_offset + p.len], scale)
                })?,
                None => bucket.pack(p.bucket_offset, &vec![0.0; p.len], 1.0),
            }
        }
    }
    let t1 = Instant::now();
    for bucket in buckets.iter_mut() {
        bucket.all_reduce(comm)?;
    }
    let t2 = Instant::now();
    let mut out: Vec<Vec<f32>> = vars.iter().map(|v| vec![0f32; v.elem_count()]).collect();
    for (pieces, bucket) in plan.iter().zip(buckets.iter()) {
        for p in pieces {
            report.nonfinite +=
                bucket.unpack(p.bucket_offset, &mut out[p.param][p.param_offset..p.param_offset + p.len]);
        }
    }
    report.pack_s = (t1 - t0).as_secs_f64();
    report.comm_s = (t2 - t1).as_secs_f64();
    if report.skipped() {
        return Ok(vec![]);
    }
    let means = vars
        .iter()
        .zip(out)
        .map(|(var, values)| {
            let t = var.as_tensor();
            Ok(Tensor::from_vec(values, t.shape(), &Device::Cpu)?.to_device(t.device())?.to_dtype(t.dtype())?)
        })
        .collect();
    report.unpack_s = t2.elapsed().as_secs_f64();
    means
}
