//! Ctrl-C (SIGINT) and SIGTERM during a sweep: noted by a signal handler, so
//! that the run under way is stopped with its whole process group (mpirun
//! and its ranks), recorded as interrupted, and the sweep ends; nothing is
//! left running behind it.

use std::sync::atomic::{AtomicI32, Ordering};

/// The signal that asked the sweep to stop, 0 while none has.
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    // Only an atomic store: all a signal handler may safely do.
    SIGNAL.store(signal, Ordering::SeqCst);
}

/// Notes SIGINT and SIGTERM from now on instead of dying of them.
pub fn install() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(signal, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    }
}

/// The signal's name, once one has arrived.
pub fn received() -> Option<&'static str> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        libc::SIGINT => Some("SIGINT"),
        libc::SIGTERM => Some("SIGTERM"),
        _ => Some("a signal"),
    }
}
