//! The convolution's column matrices on the GPU (kernels/conv.cu) and the
//! device path of conv_device.rs on CUDA storage; f32 only (training runs
//! in f32).

use std::ops::Range;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaDevice, CudaStorage, Layout, Result};

use super::columns::{Dims, Wanted};
use super::conv_device::{self, Columns};
use super::grid_cuda::{int_arg, one_thread_per_element};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/conv.ptx"));
const MODULE: &str = "candle_mpi_conv";

/// Runs `kernel` of kernels/conv.cu (im2col_f32 or col2im_f32), one thread
/// per element of `out`, from `input`, for a group of `images` images.
fn launch(
    dev: &CudaDevice,
    kernel: &str,
    input: &CudaView<'_, f32>,
    out: &mut CudaViewMut<'_, f32>,
    d: &Dims,
    images: usize,
) -> Result<()> {
    let op = "conv2d on the GPU";
    let sizes = [images, d.c, d.h, d.w, d.g.kernel, d.g.stride, d.g.padding, d.oh, d.ow]
        .map(|v| int_arg(v, op))
        .into_iter()
        .collect::<Result<Vec<i32>>>()?;
    let Some(grid) = one_thread_per_element(out.len(), op)? else {
        return Ok(());
    };
    let func = dev.get_or_load_custom_func(kernel, MODULE, PTX)?;
    let mut b = func.builder();
    b.arg(input).arg(out);
    for s in &sizes {
        b.arg(s);
    }
    // SAFETY: the arguments match the kernel's signature in kernels/conv.cu
    // (two buffers, then the nine sizes); both views hold the group's images.
    unsafe { b.launch(grid) }.w()?;
    Ok(())
}

impl Columns for CudaStorage {
    fn im2col(&self, offset: usize, d: &Dims, images: Range<usize>) -> Result<Self> {
        let dev = self.device().clone();
        let chw = d.c * d.hw();
        let x = self.as_cuda_slice::<f32>()?.slice(offset + images.start * chw..offset + images.end * chw);
        let len = d.ckk() * images.len() * d.ohw();
        // SAFETY: the kernel writes every element.
        let mut cols = unsafe { dev.alloc::<f32>(len)? };
        launch(&dev, "im2col_f32", &x, &mut cols.slice_mut(..), d, images.len())?;
        Ok(CudaStorage::wrap_cuda_slice(cols, dev))
    }

    fn col2im_into(&self, d: &Dims, images: Range<usize>, dx: &mut Self) -> Result<()> {
        let dev = self.device().clone();
        let chw = d.c * d.hw();
        let cols = self.as_cuda_slice::<f32>()?.slice(..);
        let mut out = dx.as_cuda_slice_mut::<f32>()?.slice_mut(images.start * chw..images.end * chw);
        launch(&dev, "col2im_f32", &cols, &mut out, d, images.len())
    }
}

pub fn forward(
    x: (&CudaStorage, &Layout),
    weight: (&CudaStorage, &Layout),
    bias: Option<(&CudaStorage, &Layout)>,
    d: &Dims,
    relu: bool,
) -> Result<CudaStorage> {
    conv_device::forward(x, weight, bias, d, relu, conv_device::COLUMN_BYTES)
}

pub fn backward(
    x: (&CudaStorage, &Layout),
    weight: (&CudaStorage, &Layout),
    dy: (&CudaStorage, &Layout),
    d: &Dims,
    wanted: Wanted,
) -> Result<(CudaStorage, CudaStorage, Option<CudaStorage>)> {
    conv_device::backward(x, weight, dy, d, wanted, conv_device::COLUMN_BYTES)
}
