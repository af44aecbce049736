//! The gradient exchange on the GPU (feature `cuda`): the same buckets,
//! order and 1/N scaling as the host placement (the plan is used as it is),
//! with the buckets in device memory in the wire type (f16, bf16 or f32).
//! Per bucket, one launch of kernels/pack.cu packs every piece of it (f32
//! gradients -> scaled wire values) on candle's stream, NCCL sums it in
//! place on its own stream, and one launch unpacks it into fresh f32
//! gradients, counting non-finite values. cudarc records an event for each
//! use of a bucket and makes the next stream that uses it wait for it, which
//! orders pack, sum and unpack across the two streams. After backward, each
//! sum is waited for; overlapped with backward, the sums are queued as
//! stages finish and only the final read of the count waits. Nothing
//! crosses to the host but the pointer tables and the count.

use candle_core::backprop::GradStore;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use candle_core::cuda_backend::WrapErr;
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, Storage, Tensor, Var};
use cudarc::nccl::NcclType;
use half::{bf16, f16};

use crate::comm::{Comm, GradDtype};
use crate::ops::grid_cuda::{int_arg, one_thread_per_element};

use super::handover::{stage_grads, Backward};
use super::plan::Piece;

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
}

/// A bucket's piece table on the device: the address of each piece's
/// tensor, the piece's offset in it, and its offset in the bucket.
type Table = (CudaSlice<u64>, CudaSlice<u64>, CudaSlice<u64>);

/// What the pack and the unpack kernel of one bucket both take: the grid (a
/// thread per element), the piece table over `addresses`, the piece count
/// and the bucket's length.
struct BucketLaunch {
    grid: LaunchConfig,
    table: Table,
    pieces: i32,
    len: u64,
}

fn bucket_launch(dev: &CudaDevice, pieces: &[Piece], addresses: &[u64]) -> anyhow::Result<BucketLaunch> {
    let len: usize = pieces.iter().map(|p| p.len).sum();
    let grid = one_thread_per_element(len, "exchange: a gradient bucket (use a smaller --bucket-mb)")?;
    let ptrs: Vec<u64> = pieces.iter().map(|p| addresses[p.param]).collect();
    let offs: Vec<u64> = pieces.iter().map(|p| p.param_offset as u64).collect();
    let at: Vec<u64> = pieces.iter().map(|p| p.bucket_offset as u64).collect();
    let table = (dev.clone_htod(&ptrs)?, dev.clone_htod(&offs)?, dev.clone_htod(&at)?);
    Ok(BucketLaunch { grid, table, pieces: int_arg(pieces.len(), "exchange: pieces of a bucket")?, len: len as u64 })
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
    /// Buckets of these lengths on the GPU, where the gradients live on one
    /// and travel by NCCL; None where they are packed on the host.
    pub fn for_exchange(vars: &[Var], comm: &Comm, dtype: GradDtype, lens: &[usize]) -> anyhow::Result<Option<Self>> {
        let (Some(candle_core::Device::Cuda(dev)), Some(_)) = (vars.first().map(|v| v.device().clone()), comm.nccl())
        else {
            return Ok(None);
        };
        let buckets = match dtype {
            GradDtype::F16 => Buckets::F16(alloc(&dev, lens)?),
            GradDtype::Bf16 => Buckets::Bf16(alloc(&dev, lens)?),
            GradDtype::F32 => Buckets::F32(alloc(&dev, lens)?),
        };
        Ok(Some(Self { dev, buckets }))
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
        match &mut self.buckets {
            Buckets::F16(b) => exchange_in(&self.dev, b, plan, vars, grads, comm, scale),
            Buckets::Bf16(b) => exchange_in(&self.dev, b, plan, vars, grads, comm, scale),
            Buckets::F32(b) => exchange_in(&self.dev, b, plan, vars, grads, comm, scale),
        }
    }

    /// As `exchange`, overlapped with `backward` (see `exchange_overlapped_in`);
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
        match &mut self.buckets {
            Buckets::F16(b) => exchange_overlapped_in(&self.dev, b, plan, ready, stage_of, vars, comm, scale, backward),
            Buckets::Bf16(b) => {
                exchange_overlapped_in(&self.dev, b, plan, ready, stage_of, vars, comm, scale, backward)
            }
            Buckets::F32(b) => exchange_overlapped_in(&self.dev, b, plan, ready, stage_of, vars, comm, scale, backward),
        }
    }
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

/// Packs bucket `pieces` from the gradients at `addresses` (by parameter)
/// on candle's stream: one launch.
fn pack_bucket<T: DeviceWire>(
    dev: &CudaDevice,
    pieces: &[Piece],
    addresses: &[u64],
    bucket: &mut CudaSlice<T>,
    scale: f32,
) -> anyhow::Result<()> {
    let pack = dev.get_or_load_custom_func(T::PACK, MODULE, PTX)?;
    let BucketLaunch { grid, table: (srcs, offs, at), pieces, len } = bucket_launch(dev, pieces, addresses)?;
    let mut b = pack.builder();
    b.arg(&srcs).arg(&offs).arg(&at).arg(&pieces).arg(&mut *bucket).arg(&len).arg(&scale);
    // SAFETY: arguments match T::PACK in kernels/pack.cu; every address is a live gradient.
    unsafe { b.launch(grid) }.w()?;
    Ok(())
}

/// Unpacks every bucket into fresh f32 gradients on candle's stream, which
/// waits for NCCL's sums (cudarc orders a buffer's uses across streams);
/// returns them and the count of non-finite values (the one host sync).
fn unpack_all<T: DeviceWire>(
    dev: &CudaDevice,
    buckets: &[CudaSlice<T>],
    plan: &[Vec<Piece>],
    vars: &[Var],
) -> anyhow::Result<(Vec<Tensor>, usize)> {
    let outputs: Vec<CudaSlice<f32>> =
        vars.iter().map(|v| dev.alloc_zeros::<f32>(v.elem_count())).collect::<candle_core::Result<_>>()?;
    let out_addr: Vec<u64> = outputs.iter().map(|o| o.device_ptr(o.stream()).0).collect();
    let mut nonfinite = dev.alloc_zeros::<u64>(1)?;
    let unpack = dev.get_or_load_custom_func(T::UNPACK, MODULE, PTX)?;
    for (pieces, bucket) in plan.iter().zip(buckets.iter()) {
        let BucketLaunch { grid, table: (dsts, offs, at), pieces, len } = bucket_launch(dev, pieces, &out_addr)?;
        let mut b = unpack.builder();
        b.arg(bucket).arg(&len).arg(&dsts).arg(&offs).arg(&at).arg(&pieces).arg(&mut nonfinite);
        // SAFETY: arguments match T::UNPACK in kernels/pack.cu; every address is a live output.
        unsafe { b.launch(grid) }.w()?;
    }
    let count = dev.clone_dtoh(&nonfinite)?[0] as usize;
    let means = vars
        .iter()
        .zip(outputs)
        .map(|(v, o)| {
            Tensor::from_storage(
                Storage::Cuda(CudaStorage::wrap_cuda_slice(o, dev.clone())),
                v.shape(),
                BackpropOp::none(),
                false,
            )
        })
        .collect();
    Ok((means, count))
}

/// The exchange through `buckets` of wire type `T`, after backward.
fn exchange_in<T: DeviceWire>(
    dev: &CudaDevice,
    buckets: &mut [CudaSlice<T>],
    plan: &[Vec<Piece>],
    vars: &[Var],
    grads: &GradStore,
    comm: &Comm,
    scale: f32,
) -> anyhow::Result<(Vec<Tensor>, usize)> {
    let nccl = comm.nccl().ok_or_else(|| anyhow::anyhow!("exchange: device buckets without NCCL"))?;
    let (inputs, in_addr) = gradient_inputs(vars, grads)?;
    for (pieces, bucket) in plan.iter().zip(buckets.iter_mut()) {
        pack_bucket(dev, pieces, &in_addr, bucket, scale)?;
        nccl.all_reduce_sum_device(bucket)?;
    }
    let out = unpack_all(dev, buckets, plan, vars)?;
    drop(inputs);
    Ok(out)
}

/// The exchange through `buckets` of wire type `T`, overlapped with
/// backward. `backward` runs the backward pass stage by stage, handing each
/// stage's gradients to the hook it is given as soon as their kernels are
/// queued; the hook packs every bucket whose last stage that was, on
/// candle's stream, and queues its sum on NCCL's own stream without waiting,
/// so that NCCL sums one bucket while the GPU computes the next stages.
#[allow(clippy::too_many_arguments)]
fn exchange_overlapped_in<T: DeviceWire, R>(
    dev: &CudaDevice,
    buckets: &mut [CudaSlice<T>],
    plan: &[Vec<Piece>],
    ready: &[usize],
    stage_of: &[Option<usize>],
    vars: &[Var],
    comm: &Comm,
    scale: f32,
    backward: &mut Backward<'_, R>,
) -> anyhow::Result<(R, Vec<Tensor>, usize)> {
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
                pack_bucket(dev, &plan[next], &addresses, &mut buckets[next], scale).map_err(fail)?;
                nccl.all_reduce_sum_device_queued(&mut buckets[next]).map_err(fail)?;
                next += 1;
            }
            Ok(())
        };
        backward(&mut hook)?
    };
    anyhow::ensure!(next == plan.len(), "exchange: backward ended with {} of {} buckets sent", next, plan.len());
    let (means, count) = unpack_all(dev, buckets, plan, vars)?;
    drop(inputs);
    Ok((out, means, count))
}
