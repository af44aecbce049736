//! How many CPU threads each process computes with.
//!
//! candle's CPU backend runs its parallel loops on rayon's global pool and sizes
//! its GEMM from `RAYON_NUM_THREADS`; by default both take every core. Under
//! `mpirun` several processes share a host, so by default each gets the host's
//! cores divided by the processes on it (`--threads` overrides).

use std::sync::OnceLock;

/// Processes of this job on this host, from the launcher's environment
/// (Open MPI, MPICH/Hydra, Slurm); 1 outside a launcher.
pub fn local_processes() -> usize {
    const VARS: [&str; 4] =
        ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"];
    VARS.iter()
        .filter_map(|v| std::env::var(v).ok())
        .filter_map(|s| s.trim().parse::<usize>().ok())
        .find(|n| *n > 0)
        .unwrap_or(1)
}

/// Cores this process may run on (its affinity mask, cgroup quota). Under
/// mpirun, which binds each rank to a core by default, this is often 1.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Cores online on this host, whatever this process is bound to (from
/// /sys/devices/system/cpu/online, e.g. "0-1" or "0,2-5").
pub fn host_cores() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| super::cpus::count_cpu_list(&s))
        .unwrap_or_else(available_cores)
}

/// The default thread count: the host's cores shared evenly by the processes
/// of the job on it, and no more than this process is allowed to use.
pub fn default_threads() -> usize {
    (host_cores() / local_processes()).min(available_cores()).max(1)
}

/// Compute threads a core may be given (oversubscribed, for experiments).
const THREADS_PER_CORE: usize = 4;

/// The most `--threads` accepts.
fn max_threads() -> usize {
    host_cores() * THREADS_PER_CORE
}

static CONFIGURED: OnceLock<usize> = OnceLock::new();

/// How long candle's elementwise pool spins for work before it sleeps.
const CANDLE_SPIN_ENV: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// Holds this process to `threads` compute threads (rayon's global pool and
/// candle's GEMM). Must run before any tensor work; a second call with another
/// number is an error, since rayon's pool cannot be resized.
pub fn configure(threads: Option<usize>) -> anyhow::Result<usize> {
    let n = match threads {
        Some(0) => anyhow::bail!(
            "--threads 0: need at least 1 thread (default: cores / processes on this host = {})",
            default_threads()
        ),
        Some(n) if n > max_threads() => anyhow::bail!(
            "--threads {n}: at most {} on this host ({} cores, {THREADS_PER_CORE} threads a core): more only wait for a core",
            max_threads(),
            host_cores()
        ),
        Some(n) => n,
        None => default_threads(),
    };
    let got = *CONFIGURED.get_or_init(|| {
        // candle reads these on every GEMM call; set before any thread exists.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
        // candle's own pool (its elementwise ops) spins long after each op,
        // on the cores our compute threads need next: it parks at once
        // instead, unless the user says otherwise.
        if std::env::var_os(CANDLE_SPIN_ENV).is_none() {
            std::env::set_var(CANDLE_SPIN_ENV, "1");
        }
        // Fails only if the pool already exists, in which case the check below tells.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n).stack_size(COMPUTE_STACK_BYTES).build_global();
        n
    });
    anyhow::ensure!(got == n, "threads already configured to {got}, cannot change to {n}");
    anyhow::ensure!(
        rayon::current_num_threads() == n,
        "rayon's pool was started with {} threads before --threads {n} could take effect",
        rayon::current_num_threads()
    );
    Ok(n)
}

/// Stack of each compute thread: candle's backward walks the graph recursively.
const COMPUTE_STACK_BYTES: usize = 16 << 20;

/// Runs `f`, the work of `device`, on one of the compute threads (rayon's
/// pool) and waits for it. The parallel loops inside then split work among
/// threads already in the pool, where a loop started from outside hands its
/// work over and sleeps, and wakes the pool again for every part of every
/// GEMM. A GPU's work stays on the calling thread: candle queues it on the
/// calling thread's own stream, and the rest of the step (the upload, the
/// exchange, the update) is queued from this thread, on this thread's
/// stream, in order with it; and `side_by_side` runs branches in turn off
/// the pool, so no two threads queue work at once.
pub fn on_compute_threads<R: Send>(device: &candle_core::Device, f: impl FnOnce() -> R + Send) -> R {
    if !device.is_cpu() || rayon::current_num_threads() <= 1 || rayon::current_thread_index().is_some() {
        return f();
    }
    let mut out = None;
    rayon::scope(|_| out = Some(f()));
    out.expect("the scope ran its body")
}
