//! Stands in for `cuda.rs` in a build without the `cuda` feature: buckets
//! always live on the host.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::comm::{Comm, GradDtype};

use super::handover::Backward;
use super::plan::Piece;

/// Device buckets, absent from this build: no value of them exists.
pub enum DeviceBuckets {}

impl DeviceBuckets {
    pub fn for_exchange(
        _vars: &[Var],
        _comm: &Comm,
        _dtype: GradDtype,
        _plan: &[Vec<Piece>],
    ) -> anyhow::Result<Option<Self>> {
        Ok(None)
    }

    pub fn exchange(
        &mut self,
        _plan: &[Vec<Piece>],
        _vars: &[Var],
        _grads: &GradStore,
        _comm: &Comm,
        _scale: f32,
    ) -> anyhow::Result<(Vec<Tensor>, usize)> {
        match *self {}
    }

    #[allow(clippy::too_many_arguments)]
    pub fn exchange_overlapped<R>(
        &mut self,
        _plan: &[Vec<Piece>],
        _ready: &[usize],
        _stage_of: &[Option<usize>],
        _vars: &[Var],
        _comm: &Comm,
        _scale: f32,
        _backward: &mut Backward<'_, R>,
    ) -> anyhow::Result<(R, Vec<Tensor>, usize)> {
        match *self {}
    }
}
