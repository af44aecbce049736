//! The launch grid of this crate's CUDA kernels: one thread per element in
//! 1024-thread blocks (the kernels' `__launch_bounds__`), refused rather
//! than truncated where the elements do not fit one launch's 32-bit count.

use candle_core::cuda_backend::cudarc::driver::LaunchConfig;

/// The grid over `elements` threads, or an error naming `what` was too
/// large; None for no elements, where there is nothing to launch (the
/// driver refuses a grid of no blocks).
pub fn one_thread_per_element(elements: usize, what: &str) -> candle_core::Result<Option<LaunchConfig>> {
    let n = u32::try_from(elements).map_err(|_| {
        candle_core::Error::Msg(format!(
            "{what}: {elements} elements are more than one kernel launch covers ({})",
            u32::MAX
        ))
    })?;
    Ok((n > 0).then(|| LaunchConfig::for_num_elems(n)))
}

/// A size as the kernels' `int` arguments take it, or an error naming `what`.
pub fn int_arg(value: usize, what: &str) -> candle_core::Result<i32> {
    i32::try_from(value)
        .map_err(|_| candle_core::Error::Msg(format!("{what}: {value} is more than a kernel's int argument holds")))
}
