//! The f32 values of a CPU tensor, as custom ops receive it (storage and
//! layout): shared by the in-place SGD, the convolution and batch-norm ops.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result};

fn refuse(s: &CpuStorage, what: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!("{what} must be contiguous f32 on the CPU, got {:?}", s.dtype()))
}

/// All the f32 values of a CPU storage, for ops that follow a strided layout
/// themselves (batch norm reads planes wherever they lie).
pub fn f32_storage<'a>(s: &'a CpuStorage, what: &str) -> Result<&'a [f32]> {
    match s {
        CpuStorage::F32(v) => Ok(v),
        _ => Err(candle_core::Error::Msg(format!("{what} must be f32 on the CPU, got {:?}", s.dtype()))),
    }
}

/// `what` names the op and the tensor in the error ("sgd: gradient").
pub fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => Err(refuse(s, what)),
    }
}

pub fn f32_slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout, what: &str) -> Result<&'a mut [f32]> {
    let err = refuse(s, what);
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        _ => Err(err),
    }
}
