//! Stands in for `cuda.rs` in a build without the `cuda` feature: no tensor
//! of such a build lives on a GPU, so these are never reached; they say so
//! if they are.

use candle_core::{CudaStorage, Layout, Result};

/// Sizes of one launch: planes (N * C) of ih x iw in, oh x ow out.
#[derive(Clone, Copy)]
pub struct PoolDims {
    pub planes: usize,
    pub ih: usize,
    pub iw: usize,
    pub oh: usize,
    pub ow: usize,
}

fn absent(op: &str, d: PoolDims) -> candle_core::Error {
    let PoolDims { planes, ih, iw, oh, ow } = d;
    candle_core::Error::Msg(format!(
        "{op}: {planes} planes of {ih}x{iw} -> {oh}x{ow} on a GPU, but this build has no GPU support (build with --features cuda)"
    ))
}

pub fn forward(
    _x: &CudaStorage,
    _l: &Layout,
    _windows: &[u32],
    d: PoolDims,
    _is_max: bool,
    op: &str,
) -> Result<CudaStorage> {
    Err(absent(op, d))
}

pub fn backward(
    _x: (&CudaStorage, &Layout),
    _g: (&CudaStorage, &Layout),
    _windows: &[u32],
    d: PoolDims,
    _is_max: bool,
    op: &str,
) -> Result<CudaStorage> {
    Err(absent(op, d))
}
