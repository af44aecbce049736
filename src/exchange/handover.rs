//! What backward hands the exchange when the two overlap: on CPUs each
//! stage's gradients over a channel from the compute thread, on GPUs a hook
//! that backward calls as each stage's kernels are queued.

use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

/// Where a backward pass on the GPU hands each stage's gradients: (stage, gradients).
pub type StageHook<'a> = dyn FnMut(usize, GradStore) -> candle_core::Result<()> + 'a;

/// A backward pass that hands each stage's gradients to the hook it is given.
pub type Backward<'a, R> = dyn FnMut(&mut StageHook<'_>) -> anyhow::Result<R> + 'a;

/// One stage's gradients, handed from the backward pass to the exchange:
/// `(parameter index in exchange order, gradient)`, and when the stage ended.
pub struct StageGrads {
    pub stage: usize,
    pub grads: Vec<(usize, Tensor)>,
    pub at: Instant,
}

/// The gradients in `store` of `vars` (exchange order) as `(index,
/// gradient)`; an error for one that the plan (`stage_of`) put in another
/// stage than `stage`, which would miss its bucket.
pub fn stage_grads(
    vars: &[Var],
    stage_of: &[Option<usize>],
    stage: usize,
    store: &GradStore,
) -> candle_core::Result<Vec<(usize, Tensor)>> {
    let mut grads = Vec::new();
    for (i, var) in vars.iter().enumerate() {
        let Some(g) = store.get(var.as_tensor()) else { continue };
        if stage_of[i] != Some(stage) {
            return Err(candle_core::Error::Msg(format!(
                "a gradient came from stage {stage}, not from stage {:?} as planned",
                stage_of[i]
            )));
        }
        grads.push((i, g.clone()));
    }
    Ok(grads)
}
