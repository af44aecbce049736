//! The custom ops the networks train with, where candle's own are missing
//! or slow: convolution as GEMMs (`conv.rs` on the CPU; on a GPU the steps
//! of `conv_device.rs` over `conv_cuda.rs`'s kernels and cuBLAS; both on
//! `columns.rs`'s shapes and column layout), batch norm with the ReLU fused
//! (`batch_norm.rs`), a residual block's sum and ReLU as one node
//! (`add_relu.rs`), the fully connected layer as one node (`linear.rs`),
//! the gradient through a ReLU fused into the convolution (`relu_mask.rs`),
//! pooling with padding and ceil mode (`pool/`, its CUDA half beside the
//! CPU one). Their parameter gradients go straight into the step's store
//! (`param_grads.rs`). Under them: the forward to backward hand-off
//! (`handoff.rs`), loops that stay on the calling thread with one thread
//! (`par.rs`), a CPU tensor's f32 values (`cpu_slice.rs`), a checked GEMM on
//! strided views (`gemm_cpu.rs`) and, with feature `cuda`, the checked
//! launch grid of the crate's kernels (`grid_cuda.rs`).

pub mod add_relu;
pub mod batch_norm;
pub mod columns;
pub mod conv;
#[cfg(feature = "cuda")]
mod conv_cuda;
#[cfg(not(feature = "cuda"))]
#[path = "conv_cuda_absent.rs"]
mod conv_cuda;
// Without feature `cuda` only its tests run it (on CPU storage).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
mod conv_device;
pub mod cpu_slice;
pub mod gemm_cpu;
#[cfg(feature = "cuda")]
pub mod grid_cuda;
pub mod handoff;
pub mod linear;
pub mod par;
pub mod param_grads;
pub mod pool;
pub mod relu_mask;
