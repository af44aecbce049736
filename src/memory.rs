//! The process's allocator settings. A training step allocates and frees
//! the same parameter-sized blocks every step (gradients, exchange buffers).
//! glibc serves blocks above 32 MiB with mmap and unmaps them on free, so each
//! step page-faults its gradients in afresh: for AlexNet at 32 px on one core
//! that was over half the step (0.54 s against 0.24 s with the pages reused).
//! Serving every block from the heap and never trimming it keeps those pages;
//! the process's resident memory then stays at its peak, which is what the
//! summary reports anyway.

/// Call first thing in `main`, before any thread starts.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; no thread is running yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
