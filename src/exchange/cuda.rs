//! The gradient exchange on the GPU (feature `cuda`): the same buckets,
//! order and 1/N scaling as the host placement (the plan is used as it is),
//! with the buckets in device memory in the wire type (f16, bf16 or f32).
//! Per bucket, one launch of kernels/pack.cu packs every piece of it (f32
//! gradients -> scaled wire values) on candle's stream, NCCL sums it in
//! place on its own stream, and one launch unpacks it into fresh f32
//! gradients, all in one buffer, counting non-finite values. cudarc records
//! an event for each use of a bucket and makes the next stream that uses it
//! wait for it, which orders pack, sum and unpack across the two streams.
//! No sum is waited for on the host: after backward or overlapped with it,
//! the sums are queued, and the one read of the count at the end is the
//! exchange's only synchronisation. The offset tables are uploaded once (the
//! plan does not change); each step copies, per bucket, the addresses of
//! its pieces' gradients (candle allocates them anew) into a table
//! allocated once, from a page-locked host table of its own, so the copy is
//! queued like a launch rather than staged while the host waits; nothing
//! else crosses to the host but the count.

use candle_core::backprop::GradStore;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, DevicePtr, DeviceRepr, LaunchConfig, PinnedHostSlice, PushKernelArg, ValidAsZeroBits,
};
use candle_core::cuda_backend::WrapErr;
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, Storage, Tensor, Var};
use cudarc::nccl::NcclType;
use half::{bf16, f16};

use crate::comm::{Comm, GradDtype};
use crate::ops::grid_cuda::{int_arg, one_thread_per_element};

use super::handover::{stage_grads, Backward};
use super::plan::{bucket_lens, Piece};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/pack.ptx"));
const MODULE: &str = "candle_mpi_pack";

/// A wire type on the device: what NCCL sums, and kernels/pack.cu's pair for it.
trait DeviceWire: NcclType + DeviceRepr + ValidAsZeroBits {
    const PACK: &'static str;
    const UNPACK: &'static str;
}

impl DeviceWire for f16 {
    const PACK: &'static str = "pack_f16";
    const UNPACK: &'static str = "unpack_f16";
}

impl DeviceWire for bf16 {
    const PACK: &'static str = "pack_bf16";
    const UNPACK: &'static str = "unpack_bf16";
}

impl DeviceWire for f32 {
    const PACK: &'static str = "pack_f32";
    const UNPACK: &'static str = "unpack_f32";
}

/// The buckets, in the wire type of the run.
enum Buckets {
    F16(Vec<CudaSlice<f16>>),
    Bf16(Vec<CudaSlice<bf16>>),
    F32(Vec<CudaSlice<f32>>),
}

pub struct DeviceBuckets {
    dev: CudaDevice,
    buckets: Buckets,
    /// The buckets' offset tables, uploaded once.
    tables: Vec<BucketTables>,
}

/// What the pack and the unpack kernel of one bucket take that does not
/// change from step to step: the grid (a thread per element), each piece's
/// offset in its gradient, in the bucket and in the unpacked buffer, the
/// piece count and the bucket's length; and the table the pieces'
/// gradient addresses are copied into each step, from `srcs_host`.
struct BucketTables {
    /// None for a bucket of no values: nothing to launch.
    grid: Option<LaunchConfig>,
    srcs: CudaSlice<u64>,
    srcs_host: PinnedHostSlice<u64>,
    src_off: CudaSlice<u64>,
    bucket_off: CudaSlice<u64>,
    out_off: CudaSlice<u64>,
    pieces: i32,
    len: u64,
}

/// Where each parameter's gradient starts in the unpacked buffer, and the
/// buffer's length: the parameters one after another.
fn gradient_starts(vars: &[Var]) -> (Vec<usize>, usize) {
    let mut total = 0;
    let starts = vars
        .iter()
        .map(|v| {
            let at = total;
            total += v.elem_count();
            at
        })
        .collect();
    (starts, total)
}

fn bucket_tables(dev: &CudaDevice, plan: &[Vec<Piece>], vars: &[Var]) -> anyhow::Result<Vec<BucketTables>> {
    let (starts, _) = gradient_starts(vars);
    let context = dev.cuda_stream().context().clone();
    let upload = |f: &dyn Fn(&Piece) -> usize, pieces: &[Piece]| {
        dev.clone_htod(&pieces.iter().map(|p| f(p) as u64).collect::<Vec<u64>>())
    };
    plan.iter()
        .map(|pieces| {
            let len: usize = pieces.iter().map(|p| p.len).sum();
            Ok(BucketTables {
                grid: one_thread_per_element(len, "exchange: a gradient bucket (use a smaller --bucket-mb)")?,
                srcs: dev.alloc_zeros::<u64>(pieces.len().max(1))?,
                // SAFETY: each pack writes every entry before its copy (a
                // bucket of no pieces has no values, so no pack).
                srcs_host: unsafe { context.alloc_pinned::<u64>(pieces.len().max(1)) }.w()?,
                src_off: upload(&|p| p.param_offset, pieces)?,
                bucket_off: upload(&|p| p.bucket_offset, pieces)?,
                out_off: upload(&|p| starts[p.param] + p.param_offset, pieces)?,
                pieces: int_arg(pieces.len(), "exchange: pieces of a bucket")?,
                len: len as u64,
            })
        })
        .collect()
}

/// Device address of element 0 of a contiguous f32 CUDA tensor.
fn f32_address(t: &Tensor) -> anyhow::Result<u64> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(cs) = &*storage else { anyhow::bail!("exchange: a gradient is not on the GPU") };
    anyhow::ensure!(layout.is_contiguous(), "exchange: a gradient is not contiguous");
    let slice = cs.as_cuda_slice::<f32>()?;
    let (ptr, _sync) = slice.device_ptr(slice.stream());
    Ok(ptr + (layout.start_offset() * std::mem::size_of::<f32>()) as u64)
}

fn alloc<T: DeviceWire>(dev: &CudaDevice, lens: &[usize]) -> anyhow::Result<Vec<CudaSlice<T>>> {
    Ok(lens.iter().map(|&n| dev.alloc_zeros::<T>(n.max(1))).collect::<candle_core::Result<_>>()?)
}

impl DeviceBuckets {
    /// The buckets of `plan` on the GPU, where the gradients live on one
    /// and travel by NCCL; None where they are packed on the host.
    pub fn for_exchange(
        vars: &[Var],
        comm: &Comm,
        dtype: GradDtype,
        plan: &[Vec<Piece>],
    ) -> anyhow::Result<Option<Self>> {
        let (Some(candle_core::Device::Cuda(dev)), Some(_)) = (vars.first().map(|v| v.device().clone()), comm.nccl())
        else {
            return Ok(None);
        };
        let lens = bucket_lens(plan);
        let buckets = match dtype {
            GradDtype::F16 => Buckets::F16(alloc(&dev, &lens)?),
            GradDtype::Bf16 => Buckets::Bf16(alloc(&dev, &lens)?),
            GradDtype::F32 => Buckets::F32(alloc(&dev, &lens)?),
        };
        let tables = bucket_tables(&dev, plan, vars)?;
        Ok(Some(Self { dev, buckets, tables }))
    }

    /// Packs `grads` of `vars` by `plan`, sums over the ranks, and returns the
    /// mean gradients and the count of non-finite values.
    pub fn exchange(
        &mut self,
        plan: &[Vec<Piece>],
        vars: &[Var],
        grads: &GradStore,
        comm: &Comm,
        scale: f32,
    ) -> anyhow::Result<(Vec<Tensor>, usize)> {
        let Self { dev, buckets, tables } = self;
        let mut run = Run { dev, tables, plan, vars, comm, scale };
        match buckets {
            Buckets::F16(b) => run.after_backward(b, grads),
            Buckets::Bf16(b) => run.after_backward(b, grads),
            Buckets::F32(b) => run.after_backward(b, grads),
        }
    }

    /// As `exchange`, overlapped with `backward` (see `Run::overlapped`);
    /// `ready[b]` is the stage after which bucket b is complete. Returns what
    /// `backward` returned, the mean gradients and the non-finite count.
    #[allow(clippy::too_many_arguments)]
    pub fn exchange_overlapped<R>(
        &mut self,
        plan: &[Vec<Piece>],
        ready: &[usize],
        stage_of: &[Option<usize>],
        vars: &[Var],
        comm: &Comm,
        scale: f32,
        backward: &mut Backward<'_, R>,
    ) -> anyhow::Result<(R, Vec<Tensor>, usize)> {
        let Self { dev, buckets, tables } = self;
        let mut run = Run { dev, tables, plan, vars, comm, scale };
        match buckets {
            Buckets::F16(b) => run.overlapped(b, ready, stage_of, backward),
            Buckets::Bf16(b) => run.overlapped(b, ready, stage_of, backward),
            Buckets::F32(b) => run.overlapped(b, ready, stage_of, backward),
        }
    }
}

/// One step's exchange: what every part of it reads.
struct Run<'a> {
    dev: &'a CudaDevice,
    tables: &'a mut [BucketTables],
    plan: &'a [Vec<Piece>],
    vars: &'a [Var],
    comm: &'a Comm,
    scale: f32,
}

/// Gradients to read, contiguous, in exchange order (zeros for parameters
/// that got none), and their device addresses.
fn gradient_inputs(vars: &[Var], grads: &GradStore) -> anyhow::Result<(Vec<Tensor>, Vec<u64>)> {
    let inputs: Vec<Tensor> = vars
        .iter()
        .map(|v| match grads.get(v.as_tensor()) {
            Some(g) => g.contiguous(),
            None => v.as_tensor().zeros_like(),
        })
        .collect::<candle_core::Result<_>>()?;
    let addresses = inputs.iter().map(f32_address).collect::<anyhow::Result<_>>()?;
    Ok((inputs, addresses))
}

impl Run<'_> {
    /// Packs bucket `b` from the gradients at `addresses` (by parameter) on
    /// candle's stream: its pieces' addresses copied into the bucket's
    /// table, one launch.
    fn pack<T: DeviceWire>(&mut self, b: usize, addresses: &[u64], bucket: &mut CudaSlice<T>) -> anyhow::Result<()> {
        let t = &mut self.tables[b];
        let Some(grid) = t.grid else {
            return Ok(());
        };
        // Waits for the last copy out of the table: the step it was
        // queued in read the count since, so it is long done.
        let host = t.srcs_host.as_mut_slice().w()?;
        for (slot, p) in host.iter_mut().zip(&self.plan[b]) {
            *slot = addresses[p.param];
        }
        self.dev.memcpy_htod(&t.srcs_host, &mut t.srcs)?;
        let pack = self.dev.get_or_load_custom_func(T::PACK, MODULE, PTX)?;
        let mut l = pack.builder();
        l.arg(&t.srcs).arg(&t.src_off).arg(&t.bucket_off).arg(&t.pieces).arg(&mut *bucket).arg(&t.len).arg(&self.scale);
        // SAFETY: arguments match T::PACK in kernels/pack.cu; every address is a live gradient.
        unsafe { l.launch(grid) }.w()?;
        Ok(())
    }

    /// Unpacks every bucket into one fresh f32 buffer on candle's stream,
    /// which waits for NCCL's sums (cudarc orders a buffer's uses across
    /// streams); returns each parameter's mean gradient (a view of that
    /// buffer) and the count of non-finite values (the one host sync).
    fn unpack_all<T: DeviceWire>(&self, buckets: &[CudaSlice<T>]) -> anyhow::Result<(Vec<Tensor>, usize)> {
        let (starts, total) = gradient_starts(self.vars);
        let mut out = self.dev.alloc_zeros::<f32>(total.max(1))?;
        let mut nonfinite = self.dev.alloc_zeros::<u64>(1)?;
        let unpack = self.dev.get_or_load_custom_func(T::UNPACK, MODULE, PTX)?;
        for (t, bucket) in self.tables.iter().zip(buckets) {
            let Some(grid) = t.grid else {
                continue;
            };
            let mut l = unpack.builder();
            l.arg(bucket).arg(&t.len).arg(&mut out).arg(&t.out_off).arg(&t.bucket_off).arg(&t.pieces);
            l.arg(&mut nonfinite);
            // SAFETY: arguments match T::UNPACK in kernels/pack.cu; every offset lies inside `out`.
            unsafe { l.launch(grid) }.w()?;
        }
        let count = self.dev.clone_dtoh(&nonfinite)?[0] as usize;
        let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(out, self.dev.clone()));
        let flat = Tensor::from_storage(storage, total.max(1), BackpropOp::none(), false);
        let means = self
            .vars
            .iter()
            .zip(starts)
            .map(|(v, at)| flat.narrow(0, at, v.elem_count())?.reshape(v.shape()))
            .collect::<candle_core::Result<_>>()?;
        Ok((means, count))
    }

    /// The exchange through `buckets` of wire type `T`, after backward:
    /// every bucket packed and its sum queued, nothing waited for until the
    /// count is read.
    fn after_backward<T: DeviceWire>(
        &mut self,
        buckets: &mut [CudaSlice<T>],
        grads: &GradStore,
    ) -> anyhow::Result<(Vec<Tensor>, usize)> {
        let nccl = self.comm.nccl().ok_or_else(|| anyhow::anyhow!("exchange: device buckets without NCCL"))?;
        let (inputs, in_addr) = gradient_inputs(self.vars, grads)?;
        for (b, bucket) in buckets.iter_mut().enumerate() {
            self.pack(b, &in_addr, bucket)?;
            nccl.all_reduce_sum_device_queued(bucket)?;
        }
        let out = self.unpack_all(buckets)?;
        drop(inputs);
        Ok(out)
    }

    /// The exchange through `buckets` of wire type `T`, overlapped with
    /// backward. `backward` runs the backward pass stage by stage, handing
    /// each stage's gradients to the hook it is given as soon as their
    /// kernels are queued; the hook packs every bucket whose last stage that
    /// was, on candle's stream, and queues its sum on NCCL's own stream
    /// without waiting, so that NCCL sums one bucket while the GPU computes
    /// the next stages.
    fn overlapped<T: DeviceWire, R>(
        &mut self,
        buckets: &mut [CudaSlice<T>],
        ready: &[usize],
        stage_of: &[Option<usize>],
        backward: &mut Backward<'_, R>,
    ) -> anyhow::Result<(R, Vec<Tensor>, usize)> {
        let (plan, vars, comm) = (self.plan, self.vars, self.comm);
        let nccl = comm.nccl().ok_or_else(|| anyhow::anyhow!("exchange: device buckets without NCCL"))?;
        let fail = |e: anyhow::Error| candle_core::Error::Msg(format!("{e:#}"));
        // Each parameter's gradient as it arrives, kept alive until the sums are read.
        let mut inputs: Vec<Option<Tensor>> = vec![None; vars.len()];
        let mut addresses = vec![0u64; vars.len()];
        let mut next = 0;
        let out = {
            let mut hook = |stage: usize, store: GradStore| -> candle_core::Result<()> {
                for (i, g) in stage_grads(vars, stage_of, stage, &store)? {
                    let g = g.contiguous()?;
                    addresses[i] = f32_address(&g).map_err(fail)?;
                    inputs[i] = Some(g);
                }
                // Buckets go in plan order, each once its lowest stage is done.
                while next < plan.len() && ready[next] >= stage {
                    for p in &plan[next] {
                        if inputs[p.param].is_none() {
                            // A parameter the loss does not reach: zeros, as after backward.
                            let z = vars[p.param].as_tensor().zeros_like()?;
                            addresses[p.param] = f32_address(&z).map_err(fail)?;
                            inputs[p.param] = Some(z);
                        }
                    }
                    self.pack(next, &addresses, &mut buckets[next]).map_err(fail)?;
                    nccl.all_reduce_sum_device_queued(&mut buckets[next]).map_err(fail)?;
                    next += 1;
                }
                Ok(())
            };
            backward(&mut hook)?
        };
        anyhow::ensure!(next == plan.len(), "exchange: backward ended with {} of {} buckets sent", next, plan.len());
        let (means, count) = self.unpack_all(buckets)?;
        drop(inputs);
        Ok((out, means, count))
    }
}
