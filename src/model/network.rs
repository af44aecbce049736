//! What every network is (a module that trains) and what it is built for.

use candle_core::{Result, Tensor};

/// A network that trains: `train` switches batch norm to batch statistics and
/// turns dropout on.
pub trait Network: Send + Sync {
    /// Class logits, shape (batch, num_classes).
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor>;

    /// Logits and the logits of auxiliary heads, if the network has them and
    /// `train` is set (GoogLeNet's aux1/aux2).
    fn forward_with_aux(&self, x: &Tensor, train: bool) -> Result<(Tensor, Vec<Tensor>)> {
        Ok((self.forward_t(x, train)?, vec![]))
    }

    /// How many stages the forward pass has: runs of layers with one tensor
    /// between consecutive ones, so that a backward pass can take them one
    /// at a time, last first (`train::staged`).
    fn stages(&self) -> usize {
        1
    }

    /// Stage `i` (0-based) on the previous stage's output, or on the input
    /// for stage 0. `forward_t` is every stage in order.
    fn forward_stage(&self, i: usize, x: &Tensor, train: bool) -> Result<Tensor> {
        debug_assert_eq!(i, 0, "a network of one stage");
        self.forward_t(x, train)
    }
}

/// Every stage of `net` in order: the forward pass of a network that is
/// defined by its stages.
pub fn forward_stages<N: Network + ?Sized>(net: &N, x: &Tensor, train: bool) -> Result<Tensor> {
    let mut x = x.clone();
    for i in 0..net.stages() {
        x = net.forward_stage(i, &x, train)?;
    }
    Ok(x)
}

/// What a network is built for.
#[derive(Clone, Copy, Debug)]
pub struct ModelConfig {
    pub num_classes: usize,
    pub image_size: usize,
    pub in_channels: usize,
    /// Dropout probability of the classifier; `None` keeps the paper's value.
    pub dropout: Option<f32>,
    /// GoogLeNet's auxiliary classifiers (ignored by the other networks).
    pub aux_logits: bool,
}

impl ModelConfig {
    pub fn new(num_classes: usize, image_size: usize) -> Self {
        Self { num_classes, image_size, in_channels: 3, dropout: None, aux_logits: false }
    }
}
