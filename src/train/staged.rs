//! The backward pass one stage at a time (`Network::stages`), last stage
//! first, so that the gradients of the later layers are final, and can be
//! sent, while the earlier layers' backward still runs (PyTorch DDP's
//! overlap). candle computes a backward pass in one call, so each stage
//! after the first takes a fresh variable, a copy of the previous stage's
//! output, as its input: its backward stops there and leaves that input's
//! gradient, which the previous stage's backward then starts from, as
//! `(output * gradient).sum()`: the gradient reaching the output is the
//! given one, bit for bit. With one tensor between consecutive stages, each
//! tensor's gradient sums the same terms in the same order as in one call,
//! so the gradients equal the one-call backward's bit for bit (tests).

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

use crate::model::network::Network;
use crate::ops::param_grads;

/// Forward and backward of `net` on `x`, stage by stage; `loss` turns the
/// logits into the scalar to minimise. `ready(stage, grads)` is handed each
/// stage's gradients as soon as they are final, last stage first. Returns
/// the loss.
pub fn forward_backward(
    net: &dyn Network,
    x: &Tensor,
    train: bool,
    loss: impl FnOnce(&Tensor) -> Result<Tensor>,
    mut ready: impl FnMut(usize, GradStore) -> Result<()>,
) -> Result<Tensor> {
    let stages = net.stages();
    // The input of each stage (stage 0: the data, which needs no gradient), and each output.
    let mut inputs: Vec<Option<Var>> = Vec::with_capacity(stages);
    let mut outputs: Vec<Tensor> = Vec::with_capacity(stages);
    for i in 0..stages {
        let input = match outputs.last() {
            None => None,
            Some(prev) => Some(Var::from_tensor(prev)?),
        };
        let out = net.forward_stage(i, input.as_ref().map_or(x, |v| v.as_tensor()), train)?;
        inputs.push(input);
        outputs.push(out);
    }
    let loss = loss(outputs.last().expect("a network has at least one stage"))?;
    let mut upstream: Option<Tensor> = None;
    for i in (0..stages).rev() {
        let store = match upstream.take() {
            None => param_grads::backward(&loss)?,
            Some(g) => param_grads::backward(&(&outputs[i] * g)?.sum_all()?)?,
        };
        // This stage's activations are no longer needed.
        outputs.truncate(i);
        if let Some(input) = inputs[i].take() {
            upstream = Some(match store.get(input.as_tensor()) {
                Some(g) => g.clone(),
                // An input that the loss does not depend on.
                None => input.as_tensor().zeros_like()?,
            });
        }
        ready(i, store)?;
    }
    Ok(loss)
}

/// The stage whose backward gives each of `params` its gradient (`None`:
/// the loss does not depend on it, as for GoogLeNet's auxiliary heads),
/// found by one staged backward of one blank image of `shape` (one image,
/// channels, height, width) in evaluation mode, which leaves every
/// batch-norm buffer as it was.
pub fn stage_of_params(
    net: &dyn Network,
    params: &[(String, Var)],
    shape: (usize, usize, usize, usize),
) -> Result<Vec<Option<usize>>> {
    let device = params.first().map_or(candle_core::Device::Cpu, |(_, v)| v.device().clone());
    let x = Tensor::zeros(shape, candle_core::DType::F32, &device)?;
    let mut stage_of = vec![None; params.len()];
    forward_backward(
        net,
        &x,
        false,
        |logits| logits.sum_all(),
        |stage, store| {
            for (i, (_, var)) in params.iter().enumerate() {
                if store.get(var.as_tensor()).is_some() {
                    stage_of[i] = Some(stage);
                }
            }
            Ok(())
        },
    )?;
    Ok(stage_of)
}
