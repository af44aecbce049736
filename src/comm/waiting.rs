//! How this process waits for the data planes' MPI calls: inside MPI, which
//! polls without rest (the lowest latency, one core kept busy), or, while
//! other threads of the process compute beside the exchange (`--overlap`),
//! by testing a non-blocking call and sleeping between tests, which leaves
//! the core to them. The same data moves either way; only the waiting
//! differs. The control plane always waits inside MPI.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mpi::collective::CommunicatorCollectives;
use mpi::request::{Request, Scope};

/// How often to test while backward computes beside the exchange: short
/// beside a bucket's transfer, long beside a test.
pub const BESIDE_COMPUTE: Duration = Duration::from_micros(50);

/// Microseconds between tests; 0: wait inside MPI.
static POLL_MICROS: AtomicU64 = AtomicU64::new(0);

/// From now on the data planes test every `interval` and sleep in between
/// (`None`: they wait inside MPI again).
pub fn poll_while_waiting(interval: Option<Duration>) {
    let micros = interval.map_or(0, |d| d.as_micros().clamp(1, u128::from(u64::MAX)) as u64);
    POLL_MICROS.store(micros, Ordering::Relaxed);
}

/// The interval set by `poll_while_waiting`, if any.
pub fn poll_interval() -> Option<Duration> {
    match POLL_MICROS.load(Ordering::Relaxed) {
        0 => None,
        us => Some(Duration::from_micros(us)),
    }
}

/// Tests `request` every `interval` until it completes.
pub(super) fn finish<'a, D: ?Sized, S: Scope<'a>>(request: Request<'a, D, S>, interval: Duration) {
    let mut pending = request;
    loop {
        match pending.test() {
            Ok(_) => return,
            Err(again) => {
                pending = again;
                std::thread::sleep(interval);
            }
        }
    }
}

/// A barrier on `comm`, waited for as set.
pub(super) fn barrier<C: CommunicatorCollectives>(comm: &C) {
    match poll_interval() {
        None => comm.barrier(),
        Some(interval) => finish(comm.immediate_barrier(), interval),
    }
}
