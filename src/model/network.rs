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
