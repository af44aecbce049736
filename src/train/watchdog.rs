//! The collective watchdog: a rank that waits in a collective longer than
//! `--collective-timeout` ends the job, naming the step and the ranks that
//! never arrived, instead of hanging for ever (PyTorch's NCCL watchdog and
//! Horovod's stall inspector do the same).
//!
//! Each rank publishes how many collectives it has entered, and at which step,
//! in a small MPI-3 shared window (when every rank shares this host); a thread
//! checks every 100 ms how long the main thread has been inside the current
//! collective. Past the timeout it prints which ranks are behind and exits the
//! process with status 124 without finalising MPI; the launcher (mpirun) then
//! ends every other rank. A rank killed outright is noticed by mpirun itself,
//! which ends the job at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::comm::{Control, SharedWindow};

/// Exit status of a rank that gave up waiting (as `timeout(1)` uses).
pub const TIMEOUT_EXIT: i32 = 124;

#[derive(Clone, Copy)]
struct Waiting {
    since: Instant,
    step: usize,
    what: &'static str,
    seq: u64,
}

struct Shared {
    waiting: Mutex<Option<Waiting>>,
    stop: AtomicBool,
}

/// Every rank's published (collectives entered, step), two u64 per rank.
struct Progress {
    window: std::rc::Rc<SharedWindow>,
}

/// Raw addresses of the ranks' progress slots, for the watchdog thread.
#[derive(Clone)]
struct Slots(Vec<usize>);

impl Slots {
    fn read(&self, rank: usize) -> (u64, u64) {
        // SAFETY: the window outlives the thread (Watchdog::drop joins it first);
        // each slot is two naturally aligned u64 written atomically by its rank.
        unsafe {
            let p = self.0[rank] as *const AtomicU64;
            ((*p).load(Ordering::Acquire), (*p.add(1)).load(Ordering::Acquire))
        }
    }
}

pub struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    seq: u64,
    my_slot: Option<usize>,
    // Dropped after the thread has been joined (see Drop).
    _progress: Option<Progress>,
}

impl Watchdog {
    /// Collective: starts the watchdog of this rank. `timeout` zero disables it.
    pub fn start(control: &Control, timeout: Duration) -> anyhow::Result<Watchdog> {
        let info = control.info().clone();
        let progress =
            if info.size > 1 { SharedWindow::new(control, 16)?.map(|window| Progress { window }) } else { None };
        let slots = progress.as_ref().map(|p| Slots((0..info.size).map(|r| p.window.slot_address(r)).collect()));
        let my_slot = slots.as_ref().map(|s| s.0[info.rank]);
        let shared = Arc::new(Shared { waiting: Mutex::new(None), stop: AtomicBool::new(false) });
        let thread = (timeout > Duration::ZERO && info.size > 1).then(|| {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("candle-mpi-watchdog".into())
                .spawn(move || watch(&shared, slots, info.rank, info.size, timeout))
                .expect("spawn the watchdog thread")
        });
        Ok(Watchdog { shared, thread, seq: 0, my_slot, _progress: progress })
    }

    /// The main thread is about to wait in `what` at `step`.
    pub fn enter(&mut self, step: usize, what: &'static str) {
        self.seq += 1;
        if let Some(addr) = self.my_slot {
            // SAFETY: this rank's own slot in the live window.
            unsafe {
                let p = addr as *const AtomicU64;
                (*p.add(1)).store(step as u64, Ordering::Release);
                (*p).store(self.seq, Ordering::Release);
            }
        }
        *self.shared.waiting.lock().unwrap() = Some(Waiting { since: Instant::now(), step, what, seq: self.seq });
    }

    /// The collective returned.
    pub fn leave(&mut self) {
        *self.shared.waiting.lock().unwrap() = None;
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch(shared: &Shared, slots: Option<Slots>, rank: usize, size: usize, timeout: Duration) {
    while !shared.stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(100));
        let Some(w) = *shared.waiting.lock().unwrap() else {
            continue;
        };
        let waited = w.since.elapsed();
        if waited < timeout {
            continue;
        }
        let who = match &slots {
            Some(slots) => {
                let behind: Vec<String> = (0..size)
                    .filter(|&r| r != rank)
                    .filter_map(|r| {
                        let (seq, step) = slots.read(r);
                        (seq < w.seq).then(|| format!("{r} (last seen at step {step})"))
                    })
                    .collect();
                if behind.is_empty() {
                    "every rank arrived; the collective itself is stuck".to_string()
                } else {
                    format!("rank(s) {} never arrived", behind.join(", "))
                }
            }
            None => "ranks on other hosts cannot be watched from here; one of them is dead or stuck".to_string(),
        };
        eprintln!(
            "rank {rank}: step {}: waited {:.1} s in {} (--collective-timeout {:.0}): {who}. Ending the job.",
            w.step,
            waited.as_secs_f64(),
            w.what,
            timeout.as_secs_f64()
        );
        // Not MPI_Abort: MPI is not initialised for calls from this thread.
        // Exiting without finalising makes the launcher end the other ranks.
        // SAFETY: _exit ends the process at once; nothing is left to clean up that matters.
        unsafe { libc::_exit(TIMEOUT_EXIT) };
    }
}
