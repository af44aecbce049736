//! The process's memory: allocator settings, and its peak as the records
//! report it.
//!
//! A training step allocates and frees the same parameter-sized blocks every
//! step (gradients, exchange buffers). glibc serves blocks above 32 MiB with
//! mmap and unmaps them on free, so each step would page-fault its gradients
//! in afresh (docs/performance.md measures what that cost). Serving every
//! block from the heap and never trimming it keeps those pages; the
//! process's resident memory then stays at its peak, which is what the
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

/// Peak resident memory of this process in MiB (Linux VmHWM), 0 where unknown.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}
