//! The convolution's column matrices on the GPU (kernels/conv.cu) and the
//! device path of conv_device.rs on CUDA storage; f32 only (training runs
//! in f32).

use std::ops::Range;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, Layout, Result};

use super::columns::Dims;
use super::conv_device::{self, Columns};
use super::grid_cuda::{int_arg, one_thread_per_element};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/conv.ptx"));
const MODULE: &str = "candle_mpi_conv";

/// The kernels' sizes after the two buffers: images, C, H, W, k, stride,
/// padding, OH, OW.
fn sizes(d: &Dims, images: usize) -> Result<[i32; 9]> {
    let op = "conv2d on the GPU";
    Ok([
        int_arg(images, op)?,
        int_arg(d.c, op)?,
        int_arg(d.h, op)?,
        int_arg(d.w, op)?,
        int_arg(d.g.kernel, op)?,
        int_arg(d.g.stride, op)?,
        int_arg(d.g.padding, op)?,
        int_arg(d.oh, op)?,
        int_arg(d.ow, op)?,
    ])
}

impl Columns for CudaStorage {
    fn im2col(&self, offset: usize, d: &Dims, images: Range<usize>) -> Result<Self> {
        let dev = self.device().clone();
        let chw = d.c * d.hw();
        let x = self.as_cuda_slice::<f32>()?.slice(offset + images.start * chw..offset + images.end * chw);
        let len = d.ckk() * images.len() * d.ohw();
        // SAFETY: the kernel writes every element.
        let mut cols = unsafe { dev.alloc::<f32>(len)? };
        let func = dev.get_or_load_custom_func("im2col_f32", MODULE, PTX)?;
        let grid = one_thread_per_element(len, "conv2d im2col")?;
        let sizes = sizes(d, images.len())?;
        let mut b = func.builder();
        b.arg(&x).arg(&mut cols);
        for s in &sizes {
            b.arg(s);
        }
        // SAFETY: the arguments match im2col_f32 in kernels/conv.cu; x holds the group's images.
        unsafe { b.launch(grid) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(cols, dev))
    }

    fn col2im_into(&self, d: &Dims, images: Range<usize>, dx: &mut Self) -> Result<()> {
        let dev = self.device().clone();
        let chw = d.c * d.hw();
        let cols = self.as_cuda_slice::<f32>()?;
        let mut out = dx.as_cuda_slice_mut::<f32>()?.slice_mut(images.start * chw..images.end * chw);
        let func = dev.get_or_load_custom_func("col2im_f32", MODULE, PTX)?;
        let grid = one_thread_per_element(images.len() * chw, "conv2d col2im")?;
        let sizes = sizes(d, images.len())?;
        let mut b = func.builder();
        b.arg(cols).arg(&mut out);
        for s in &sizes {
            b.arg(s);
        }
        // SAFETY: the arguments match col2im_f32 in kernels/conv.cu; out holds the group's images.
        unsafe { b.launch(grid) }.w()?;
        Ok(())
    }
}

pub fn forward(
    x: (&CudaStorage, &Layout),
    weight: (&CudaStorage, &Layout),
    bias: Option<(&CudaStorage, &Layout)>,
    d: &Dims,
    relu: bool,
) -> Result<CudaStorage> {
    conv_device::forward(x, weight, bias, d, (relu, conv_device::COLUMN_BYTES))
}

pub fn backward(
    x: (&CudaStorage, &Layout),
    weight: (&CudaStorage, &Layout),
    dy: (&CudaStorage, &Layout),
    d: &Dims,
    wanted: (bool, bool),
) -> Result<(CudaStorage, CudaStorage, Option<CudaStorage>)> {
    conv_device::backward(x, weight, dy, d, (wanted.0, wanted.1, conv_device::COLUMN_BYTES))
}
