//! The collective watchdog: a rank that waits in a collective longer than
//! `--collective-timeout` ends the job, naming the step and the ranks that
//! never arrived, instead of hanging for ever (PyTorch's NCCL watchdog and
//! Horovod's stall inspector do the same).
//!
//! It starts before a run's first collective and watches every one of them,
//! from the start-up check to the last gather. Each rank publishes how many
//! collectives it has entered, at which step, and whether it is writing a
//! checkpoint, in a small MPI-3 shared window (when every rank shares this
//! host; until that window exists, or across hosts, it can time a wait but
//! not name who is behind). A thread checks every 100 ms how long the main
//! thread has been inside the current collective. Past the timeout it prints
//! which ranks are behind and exits the process with status 124 without
//! finalising MPI; the launcher (mpirun) then ends every other rank. A wait
//! for a rank that is writing a checkpoint does not count. A rank killed
//! outright is noticed by mpirun itself, which ends the job at once.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::comm::{Control, SharedWindow, WorldInfo};

/// Exit status of a rank that gave up waiting (as `timeout(1)` uses).
pub const TIMEOUT_EXIT: i32 = 124;

/// u64 words of a rank's progress slot: collectives entered, step, writing a checkpoint.
const WORDS: usize = 3;

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
    /// The ranks' progress slots, once the window exists.
    slots: OnceLock<Slots>,
}

/// Raw addresses of the ranks' progress slots, for the watchdog thread.
#[derive(Clone)]
struct Slots(Vec<usize>);

impl Slots {
    /// Rank `rank`'s (collectives entered, step, writing a checkpoint).
    fn read(&self, rank: usize) -> (u64, u64, bool) {
        // SAFETY: the window is never freed while the thread runs (`release`
        // joins it first; a window merely dropped stays mapped until the
        // process ends); each word is a naturally aligned u64 written
        // atomically by its rank.
        unsafe {
            let p = self.0[rank] as *const AtomicU64;
            (
                (*p).load(Ordering::Acquire),
                (*p.add(1)).load(Ordering::Acquire),
                (*p.add(2)).load(Ordering::Acquire) != 0,
            )
        }
    }
}

pub struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    seq: u64,
    my_slot: Option<usize>,
    window: Option<Rc<SharedWindow>>,
}

impl Watchdog {
    /// Starts watching this rank (no collective: call it before the first).
    /// `timeout` zero disables it.
    pub fn start(info: &WorldInfo, timeout: Duration) -> Watchdog {
        let shared =
            Arc::new(Shared { waiting: Mutex::new(None), stop: AtomicBool::new(false), slots: OnceLock::new() });
        let (rank, size) = (info.rank, info.size);
        let thread = (timeout > Duration::ZERO && size > 1).then(|| {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("candle-mpi-watchdog".into())
                .spawn(move || watch(&shared, rank, size, timeout))
                .expect("spawn the watchdog thread")
        });
        Watchdog { shared, thread, seq: 0, my_slot: None, window: None }
    }

    /// Collective, watched: the shared window the ranks publish their
    /// progress in, so that a wait can name the ranks that never arrived.
    pub fn share_progress(&mut self, control: &Control) -> anyhow::Result<()> {
        let info = control.info();
        if info.size < 2 {
            return Ok(());
        }
        let window = self.watch(0, "start-up (the watchdog's shared counters)", || {
            SharedWindow::new(control, WORDS * std::mem::size_of::<u64>())
        })?;
        if let Some(w) = window {
            let slots = Slots((0..info.size).map(|r| w.slot_address(r)).collect());
            self.my_slot = Some(slots.0[info.rank]);
            let _ = self.shared.slots.set(slots);
            self.window = Some(w);
        }
        Ok(())
    }

    /// The main thread is about to wait in `what` at `step` (0: before step 1).
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
        *self.lock() = Some(Waiting { since: Instant::now(), step, what, seq: self.seq });
    }

    /// The collective returned.
    pub fn leave(&mut self) {
        *self.lock() = None;
    }

    /// `f`, a collective, watched as `what` at `step`.
    pub fn watch<T>(&mut self, step: usize, what: &'static str, f: impl FnOnce() -> T) -> T {
        self.enter(step, what);
        let out = f();
        self.leave();
        out
    }

    /// Tells the other ranks that this one is writing a checkpoint (their
    /// waits for it do not count) or has finished.
    pub fn writing_checkpoint(&mut self, writing: bool) {
        if let Some(addr) = self.my_slot {
            // SAFETY: this rank's own slot in the live window.
            unsafe { (*(addr as *const AtomicU64).add(2)).store(u64::from(writing), Ordering::Release) };
        }
    }

    /// Collective, at the clean end of a run: stops the thread and frees the
    /// window on every rank together.
    pub fn release(mut self) -> anyhow::Result<()> {
        self.stop();
        self.my_slot = None;
        self.window.take().map_or(Ok(()), SharedWindow::free)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Waiting>> {
        self.shared.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Watchdog {
    /// Stops the thread; a window not released stays to the process's end.
    fn drop(&mut self) {
        self.stop();
    }
}

/// Who is behind this rank's wait number `seq`: the ranks that have not
/// entered it yet, with the step they were last seen at; and whether one of
/// them is writing a checkpoint.
fn behind(slots: &Slots, rank: usize, size: usize, seq: u64) -> (Vec<String>, bool) {
    let mut writing = false;
    let who = (0..size)
        .filter(|&r| r != rank)
        .filter_map(|r| {
            let (entered, step, busy) = slots.read(r);
            writing |= busy && entered < seq;
            (entered < seq).then(|| format!("{r} (last seen at step {step})"))
        })
        .collect();
    (who, writing)
}

fn watch(shared: &Shared, rank: usize, size: usize, timeout: Duration) {
    let mut excused = Duration::ZERO;
    let mut last_seq = 0;
    while !shared.stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(100));
        let Some(w) = *shared.waiting.lock().unwrap_or_else(|p| p.into_inner()) else { continue };
        if w.seq != last_seq {
            (last_seq, excused) = (w.seq, Duration::ZERO);
        }
        let who = shared.slots.get().map(|slots| behind(slots, rank, size, w.seq));
        if who.as_ref().is_some_and(|(_, writing)| *writing) {
            // A rank writing a checkpoint is not stuck: this wait does not count.
            excused += Duration::from_millis(100);
            continue;
        }
        let waited = w.since.elapsed();
        if waited.saturating_sub(excused) < timeout {
            continue;
        }
        let who = match who {
            Some((behind, _)) if behind.is_empty() => "every rank arrived; the collective itself is stuck".to_string(),
            Some((behind, _)) => format!("rank(s) {} never arrived", behind.join(", ")),
            None => "ranks on other hosts cannot be watched from here; one of them is dead or stuck".to_string(),
        };
        let when = if w.step == 0 { "before step 1".to_string() } else { format!("step {}", w.step) };
        eprintln!(
            "rank {rank}: {when}: waited {:.1} s in {} (--collective-timeout {}): {who}. Ending the job.",
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
