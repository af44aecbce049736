//! The CUDA side of the pooling ops (kernels/pool.cu): the same windows,
//! tie rule and accumulation order as the CPU op, so the two agree bit for
//! bit; f32 only (training runs in f32).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, Layout, Result};

use crate::ops::grid_cuda::{int_arg, one_thread_per_element};

/// Sizes of one launch: planes (N * C) of ih x iw in, oh x ow out.
#[derive(Clone, Copy)]
pub struct PoolDims {
    pub planes: usize,
    pub ih: usize,
    pub iw: usize,
    pub oh: usize,
    pub ow: usize,
}

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/pool.ptx"));
const MODULE: &str = "candle_mpi_pool";

fn contiguous<'a>(
    s: &'a CudaStorage,
    l: &Layout,
    op: &str,
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, f32>> {
    let (a, b) =
        l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg(format!("{op}: input must be contiguous")))?;
    Ok(s.as_cuda_slice::<f32>()?.slice(a..b))
}

/// Runs `kernel` over `threads` elements: pool2d_fwd_f32 (out = planes x oh x ow)
/// or pool2d_bwd_f32 (out = planes x ih x iw). `x` is the input (for max), `g`
/// the output gradient (backward only).
#[allow(clippy::too_many_arguments)]
fn launch(
    kernel: &str,
    op: &str,
    x: (&CudaStorage, &Layout),
    g: Option<(&CudaStorage, &Layout)>,
    windows: &[u32],
    d: PoolDims,
    is_max: bool,
    threads: usize,
) -> Result<CudaStorage> {
    let dev = x.0.device().clone();
    let xs = contiguous(x.0, x.1, op)?;
    let win = dev.clone_htod(windows)?;
    // SAFETY: every element is written by the kernel.
    let out = unsafe { dev.alloc::<f32>(threads)? };
    let Some(grid) = one_thread_per_element(threads, op)? else {
        return Ok(CudaStorage::wrap_cuda_slice(out, dev));
    };
    let func = dev.get_or_load_custom_func(kernel, MODULE, PTX)?;
    let (planes, ih, iw) = (int_arg(d.planes, op)?, int_arg(d.ih, op)?, int_arg(d.iw, op)?);
    let (oh, ow, m) = (int_arg(d.oh, op)?, int_arg(d.ow, op)?, i32::from(is_max));
    let mut b = func.builder();
    b.arg(&xs);
    let gs = match g {
        Some(g) => Some(contiguous(g.0, g.1, op)?),
        None => None,
    };
    if let Some(gs) = &gs {
        b.arg(gs);
    }
    b.arg(&out);
    b.arg(&win);
    b.arg(&planes);
    b.arg(&ih);
    b.arg(&iw);
    b.arg(&oh);
    b.arg(&ow);
    b.arg(&m);
    // SAFETY: argument list matches the kernel's signature in kernels/pool.cu.
    unsafe { b.launch(grid) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

pub fn forward(
    x: &CudaStorage,
    l: &Layout,
    windows: &[u32],
    d: PoolDims,
    is_max: bool,
    op: &str,
) -> Result<CudaStorage> {
    launch("pool2d_fwd_f32", op, (x, l), None, windows, d, is_max, d.planes * d.oh * d.ow)
}

/// Input gradient; `x` is the forward input for max pooling, or the output
/// gradient itself for average pooling (the kernel does not read it then).
pub fn backward(
    x: (&CudaStorage, &Layout),
    grad_out: (&CudaStorage, &Layout),
    windows: &[u32],
    d: PoolDims,
    is_max: bool,
    op: &str,
) -> Result<CudaStorage> {
    launch("pool2d_bwd_f32", op, x, Some(grad_out), windows, d, is_max, d.planes * d.ih * d.iw)
}
