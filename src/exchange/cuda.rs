//! The gradient exchange on the GPU (feature `cuda`): the same buckets,
//! order and 1/N scaling as the host placement (the plan is used as it is), with
//! the buckets in device memory. Per bucket, one launch of kernels/pack.cu
//! packs every piece of it (f32 gradients -> scaled f16), NCCL sums it in
//! place on candle's stream, and one launch unpacks it into fresh f32
//! gradients, counting non-finite values. Nothing crosses to the host but the
//! pointer tables and the count.

use candle_core::backprop::GradStore;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, Storage, Tensor, Var};
use half::f16;

use crate::comm::{Comm, GradDtype};

use super::plan::Piece;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/pack.ptx"));
const MODULE: &str = "candle_mpi_pack";

pub struct DeviceBuckets {
    dev: CudaDevice,
    buckets: Vec<CudaSlice<f16>>,
}

/// A bucket's piece table on the device: the address of each piece's
/// tensor, the piece's offset in it, and its offset in the bucket.
type Table = (CudaSlice<u64>, CudaSlice<u64>, CudaSlice<u64>);

fn launch_table(dev: &CudaDevice, pieces: &[Piece], addresses: &[u64]) -> anyhow::Result<Table> {
    let ptrs: Vec<u64> = pieces.iter().map(|p| addresses[p.param]).collect();
    let offs: Vec<u64> = pieces.iter().map(|p| p.param_offset as u64).collect();
    let at: Vec<u64> = pieces.iter().map(|p| p.bucket_offset as u64).collect();
    Ok((dev.clone_htod(&ptrs)?, dev.clone_htod(&offs)?, dev.clone_htod(&at)?))
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

impl DeviceBuckets {
    /// Buckets of these lengths on the GPU, where the gradients live on one
    /// and travel as f16 by NCCL; None where they are packed on the host.
    pub fn for_exchange(vars: &[Var], comm: &Comm, dtype: GradDtype, lens: &[usize]) -> anyhow::Result<Option<Self>> {
        match (vars.first().map(|v| v.device().clone()), comm.nccl(), dtype) {
            (Some(candle_core::Device::Cuda(dev)), Some(_), GradDtype::F16) => {
                let buckets =
                    lens.iter().map(|&n| dev.alloc_zeros::<f16>(n.max(1))).collect::<candle_core::Result<_>>()?;
                Ok(Some(Self { dev, buckets }))
            }
            _ => Ok(None),
        }
    }

    /// Packs `grads` of `vars` by `plan`, sums over the ranks, and returns the
    /// mean gradients (None where nothing is finite to apply) and the count
    /// of non-finite values.
    pub fn exchange(
        &mut self,
        plan: &[Vec<Piece>],
        vars: &[Var],
        grads: &GradStore,
        comm: &Comm,
        scale: f32,
    ) -> anyhow::Result<(Vec<Tensor>, usize)> {
        let nccl = comm.nccl().ok_or_else(|| anyhow::anyhow!("exchange: device buckets without NCCL"))?;
        // Gradients to read (zeros for parameters that got none), contiguous.
        let inputs: Vec<Tensor> = vars
            .iter()
            .map(|v| match grads.get(v.as_tensor()) {
                Some(g) => g.contiguous(),
                None => v.as_tensor().zeros_like(),
            })
            .collect::<candle_core::Result<_>>()?;
        let in_addr: Vec<u64> = inputs.iter().map(f32_address).collect::<anyhow::Result<_>>()?;
        let pack = self.dev.get_or_load_custom_func("pack_f16", MODULE, PTX)?;
        for (pieces, bucket) in plan.iter().zip(&mut self.buckets) {
            let len: usize = pieces.iter().map(|p| p.len).sum();
            let (srcs, offs, at) = launch_table(&self.dev, pieces, &in_addr)?;
            let (n, len64) = (pieces.len() as i32, len as u64);
            let mut b = pack.builder();
            b.arg(&srcs).arg(&offs).arg(&at).arg(&n).arg(&mut *bucket).arg(&len64).arg(&scale);
            // SAFETY: arguments match pack_f16 in kernels/pack.cu; every address is a live gradient.
            unsafe { b.launch(LaunchConfig::for_num_elems(len as u32)) }.w()?;
            nccl.all_reduce_sum_device(bucket)?;
        }
        let outputs: Vec<CudaSlice<f32>> =
            vars.iter().map(|v| self.dev.alloc_zeros::<f32>(v.elem_count())).collect::<candle_core::Result<_>>()?;
        let out_addr: Vec<u64> = outputs.iter().map(|o| o.device_ptr(o.stream()).0).collect();
        let mut nonfinite = self.dev.alloc_zeros::<u64>(1)?;
        let unpack = self.dev.get_or_load_custom_func("unpack_f16", MODULE, PTX)?;
        for (pieces, bucket) in plan.iter().zip(&self.buckets) {
            let len: usize = pieces.iter().map(|p| p.len).sum();
            let (dsts, offs, at) = launch_table(&self.dev, pieces, &out_addr)?;
            let (n, len64) = (pieces.len() as i32, len as u64);
            let mut b = unpack.builder();
            b.arg(bucket).arg(&len64).arg(&dsts).arg(&offs).arg(&at).arg(&n).arg(&mut nonfinite);
            // SAFETY: arguments match unpack_f16 in kernels/pack.cu; every address is a live output.
            unsafe { b.launch(LaunchConfig::for_num_elems(len as u32)) }.w()?;
        }
        let count = self.dev.clone_dtoh(&nonfinite)?[0] as usize;
        let means = vars
            .iter()
            .zip(outputs)
            .map(|(v, o)| {
                Tensor::from_storage(
                    Storage::Cuda(CudaStorage::wrap_cuda_slice(o, self.dev.clone())),
                    v.shape(),
                    BackpropOp::none(),
                    false,
                )
            })
            .collect();
        drop(inputs);
        Ok((means, count))
    }
}
