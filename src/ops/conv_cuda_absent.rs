//! Stands in for `conv_cuda.rs` in a build without the `cuda` feature: no
//! tensor of such a build lives on a GPU, so these are never reached; they
//! say so if they are.

use candle_core::{CudaStorage, Layout, Result};

use super::columns::{Dims, Wanted};

fn absent(d: &Dims) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "conv2d: {} images of {}x{}x{} on a GPU, but this build has no GPU support (build with --features cuda)",
        d.n, d.c, d.h, d.w
    ))
}

pub fn forward(
    _x: (&CudaStorage, &Layout),
    _weight: (&CudaStorage, &Layout),
    _bias: Option<(&CudaStorage, &Layout)>,
    d: &Dims,
    _relu: bool,
) -> Result<CudaStorage> {
    Err(absent(d))
}

pub fn backward(
    _x: (&CudaStorage, &Layout),
    _weight: (&CudaStorage, &Layout),
    _dy: (&CudaStorage, &Layout),
    d: &Dims,
    _wanted: Wanted,
) -> Result<(CudaStorage, CudaStorage, Option<CudaStorage>)> {
    Err(absent(d))
}
