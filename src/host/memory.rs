//! The process's memory: allocator settings, its peak as the records report
//! it, and whether a run's parameters can fit at all.
//!
//! A training step allocates and frees the same parameter-sized blocks every
//! step (gradients, exchange buffers). glibc serves blocks above 32 MiB with
//! mmap and unmaps them on free, so each step would page-fault its gradients
//! in afresh (docs/performance.md measures what that cost). Serving every
//! block from the heap and never trimming it keeps those pages; the
//! process's resident memory then stays at its peak, which is what the
//! summary reports anyway. One arena for every thread: blocks that the
//! overlapped backward's compute thread allocates and the main thread
//! frees (and the other way round) come from that same kept heap, where
//! glibc's per-thread arenas made the compute thread fault its pages in
//! afresh each step.

/// Call first thing in `main`, before any thread starts.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; no thread is running yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_ARENA_MAX, 1);
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

/// Test aid: pretend this much memory is available, in MiB.
pub const AVAILABLE_ENV: &str = "CANDLE_MPI_MEM_AVAILABLE_MIB";

/// Memory this host can still give, MiB: MemAvailable, or less where this
/// process's cgroup allows less (containers); None where neither is readable.
pub fn available_mib() -> Option<f64> {
    if let Some(mib) = std::env::var(AVAILABLE_ENV).ok().and_then(|v| v.parse::<f64>().ok()) {
        return Some(mib);
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: f64 =
        meminfo.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?.split_whitespace().next()?.parse().ok()?;
    let host = kib / 1024.0;
    let read = |f: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{f}")).ok()?.trim().parse::<f64>().ok();
    let cgroup = match (read("memory.max"), read("memory.current")) {
        (Some(max), Some(used)) => Some((max - used).max(0.0) / (1024.0 * 1024.0)),
        _ => None,
    };
    Some(cgroup.map_or(host, |c| c.min(host)))
}

/// Refuses a run whose parameters alone cannot fit: `parameters` f32 values
/// each need at least 14 bytes a rank (weight, gradient and momentum in f32,
/// two bytes in the wire buckets) on each of the `ranks_here` ranks of this
/// host, before activations, which come on top.
pub fn check_room(what: &str, parameters: usize, ranks_here: usize) -> anyhow::Result<()> {
    const BYTES_PER_PARAMETER: f64 = 14.0;
    let Some(available) = available_mib() else { return Ok(()) };
    let need = parameters as f64 * BYTES_PER_PARAMETER / (1024.0 * 1024.0);
    anyhow::ensure!(
        need * ranks_here as f64 <= available,
        "{what}: each of the {ranks_here} rank(s) on this host needs at least {need:.0} MiB for its {parameters} parameters' \
         weights, gradients, momentum and wire buckets (activations come on top), and the host has {available:.0} MiB \
         available; start fewer ranks per host or train a smaller network"
    );
    Ok(())
}
