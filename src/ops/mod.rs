//! The custom ops the networks train with, where candle's own are missing
//! or slow on the CPU: convolution as GEMMs (`conv.rs`), batch norm with the
//! ReLU fused (`batch_norm.rs`), pooling with padding and ceil mode
//! (`pool/`, its CUDA half beside the CPU one). Under them: the forward to
//! backward hand-off (`handoff.rs`), loops that stay on the calling thread
//! with one thread (`par.rs`), a CPU tensor's f32 values (`cpu_slice.rs`)
//! and a checked GEMM on strided views (`gemm_cpu.rs`).

pub mod batch_norm;
pub mod conv;
pub mod cpu_slice;
pub mod gemm_cpu;
pub mod handoff;
pub mod par;
pub mod pool;
