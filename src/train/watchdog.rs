//! The collective watchdog: a rank that waits in a collective longer than
//! `--collective-timeout` ends the job, naming the step and the ranks that
//! never arrived, instead of hanging for ever (PyTorch's NCCL watchdog and
//! Horovod's stall inspector do the same).
//!
//! It starts before a run's first collective and watches every one of them,
//! from the start-up check to the last gather. Each rank publishes how many
//! collectives it has entered, at which step, and whether it is writing a
//! checkpoint: in a small MPI-3 shared window when every rank shares this
//! host, and else on a TCP port of its own that the others ask once their
//! wait has timed out (`peers.rs`); until that is set up, first thing, it
//! can time a wait but not name who is behind. A thread checks every 100 ms how long the main
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

use super::peers::{self, Peers, Progress, Seen, Server};
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
    /// Where the other ranks' progress is read, once the start-up check is over.
    board: OnceLock<Board>,
    /// This rank's progress, served to ranks on other hosts.
    own: Arc<Progress>,
}

/// The ranks' progress: in one host's shared window, or asked over TCP.
enum Board {
    Window(Slots),
    Peers(Peers),
}

impl Board {
    /// Rank `rank`'s progress; None where it does not answer.
    fn read(&self, rank: usize) -> Option<Seen> {
        match self {
            Board::Window(slots) => {
                let (entered, step, writing) = slots.read(rank);
                Some(Seen { entered, step, writing, wrote_ago: None })
            }
            Board::Peers(peers) => peers.read(rank),
        }
    }
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
    server: Option<Server>,
}

impl Watchdog {
    /// Starts watching this rank (no collective: call it before the first).
    /// `timeout` zero disables it.
    pub fn start(info: &WorldInfo, timeout: Duration) -> Watchdog {
        let shared = Arc::new(Shared {
            waiting: Mutex::new(None),
            stop: AtomicBool::new(false),
            board: OnceLock::new(),
            own: Arc::new(Progress::default()),
        });
        let (rank, size) = (info.rank, info.size);
        let thread = (timeout > Duration::ZERO && size > 1).then(|| {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("candle-mpi-watchdog".into())
                .spawn(move || watch(&shared, rank, size, timeout))
                .expect("spawn the watchdog thread")
        });
        Watchdog { shared, thread, seq: 0, my_slot: None, window: None, server: None }
    }

    /// Collective, watched: where the ranks publish their progress (one
    /// host's shared window, else each rank's TCP port), so that a wait can
    /// name the ranks that never arrived.
    pub fn share_progress(&mut self, control: &Control) -> anyhow::Result<()> {
        let info = control.info();
        if self.thread.is_none() {
            return Ok(()); // one rank, or --collective-timeout 0: nobody watches
        }
        let window = self.watch(0, "start-up (the watchdog's shared counters)", || {
            SharedWindow::new(control, WORDS * std::mem::size_of::<u64>())
        })?;
        if let Some(w) = window {
            let slots = Slots((0..info.size).map(|r| w.slot_address(r)).collect());
            self.my_slot = Some(slots.0[info.rank]);
            let _ = self.shared.board.set(Board::Window(slots));
            self.window = Some(w);
        } else {
            let own = self.shared.own.clone();
            let (server, peers) =
                self.watch(0, "start-up (the watchdog's progress ports)", || peers::publish(control, own))?;
            self.server = Some(server);
            let _ = self.shared.board.set(Board::Peers(peers));
        }
        Ok(())
    }

    /// The main thread is about to wait in `what` at `step` (0: before step 1).
    pub fn enter(&mut self, step: usize, what: &'static str) {
        self.seq += 1;
        self.shared.own.entered(self.seq, step);
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
        self.shared.own.writing_checkpoint(writing);
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
        self.server = None;
    }
}

impl Drop for Watchdog {
    /// Stops the thread; a window not released stays to the process's end.
    fn drop(&mut self) {
        self.stop();
    }
}

/// Who is behind this rank's wait number `seq`, each with the step it was
/// last seen at, and whether one of them is writing a checkpoint or has just
/// written one.
#[derive(Default)]
struct Behind {
    late: Vec<String>,
    /// Ranks asked over TCP that did not answer (ended, dead, unreachable).
    silent: Vec<usize>,
    writing: bool,
    /// The shortest time since a late rank finished writing a checkpoint.
    wrote_ago: Option<Duration>,
}

impl Behind {
    /// For the watchdog's message: the late ranks first, they are the cause;
    /// silent ones are most often ranks whose own wait ended them already.
    fn describe(&self) -> String {
        let silent = self.silent.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ");
        match (self.late.is_empty(), self.silent.is_empty()) {
            (true, true) => "every rank arrived; the collective itself is stuck".to_string(),
            (false, true) => format!("rank(s) {} never arrived", self.late.join(", ")),
            (false, false) => format!(
                "rank(s) {} never arrived (rank(s) {silent} no longer answer: ended, dead, or unreachable)",
                self.late.join(", ")
            ),
            (true, false) => format!("rank(s) {silent} do not answer: ended, dead, or their host unreachable"),
        }
    }
}

/// Every other rank's progress; ranks on other hosts are asked all at once
/// (one at a time where no thread can be had).
fn read_all(board: &Board, others: &[usize]) -> Vec<Option<Seen>> {
    if let Board::Window(_) = board {
        return others.iter().map(|&r| board.read(r)).collect();
    }
    std::thread::scope(|s| {
        let asks: Vec<_> = others
            .iter()
            .map(|&r| std::thread::Builder::new().spawn_scoped(s, move || board.read(r)).map_err(|_| r))
            .collect();
        asks.into_iter()
            .map(|ask| match ask {
                Ok(handle) => handle.join().unwrap_or(None),
                Err(r) => board.read(r),
            })
            .collect()
    })
}

fn behind(board: &Board, rank: usize, size: usize, seq: u64) -> Behind {
    let others: Vec<usize> = (0..size).filter(|&r| r != rank).collect();
    let mut out = Behind::default();
    for (&r, seen) in others.iter().zip(read_all(board, &others)) {
        match seen {
            None => out.silent.push(r),
            Some(seen) if seen.entered < seq => {
                out.writing |= seen.writing;
                out.wrote_ago = match (out.wrote_ago, seen.wrote_ago) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let at = if seen.step == 0 { "before step 1".to_string() } else { format!("at step {}", seen.step) };
                out.late.push(format!("{r} (last seen {at})"));
            }
            Some(_) => {}
        }
    }
    out
}

/// Over TCP, where a timed-out wait is behind a rank that is writing a
/// checkpoint or has just written one: how much of the wait is excused. A
/// writer is asked again in a second; a rank that finished writing has a
/// whole timeout from then to arrive, as on one host.
fn checkpoint_excuse(waited: Duration, timeout: Duration, behind: &Behind) -> Option<Duration> {
    if behind.writing {
        return Some(waited.saturating_sub(timeout) + Duration::from_secs(1));
    }
    behind.wrote_ago.filter(|&ago| ago < timeout).map(|ago| waited.saturating_sub(ago))
}

fn watch(shared: &Shared, rank: usize, size: usize, timeout: Duration) {
    let tick = Duration::from_millis(100);
    let mut excused = Duration::ZERO;
    let mut last_seq = 0;
    let mut last_tick = Instant::now();
    while !shared.stop.load(Ordering::Acquire) {
        std::thread::sleep(tick);
        let since_last_tick = std::mem::replace(&mut last_tick, Instant::now()).elapsed();
        let Some(w) = *shared.waiting.lock().unwrap_or_else(|p| p.into_inner()) else { continue };
        if w.seq != last_seq {
            (last_seq, excused) = (w.seq, Duration::ZERO);
        }
        let board = shared.board.get();
        // The shared window is cheap to read on every tick: a wait for a rank
        // writing a checkpoint does not count.
        if let Some(b @ Board::Window(_)) = board {
            if behind(b, rank, size, w.seq).writing {
                excused += since_last_tick;
                continue;
            }
        }
        let waited = w.since.elapsed();
        if waited.saturating_sub(excused) < timeout {
            continue;
        }
        let who = board.map(|b| behind(b, rank, size, w.seq));
        if let Some(new) = who.as_ref().and_then(|b| checkpoint_excuse(waited, timeout, b)) {
            excused = new;
            continue;
        }
        let who = match who {
            Some(behind) => behind.describe(),
            None => "the ranks' progress is not shared yet (start-up); one of them is dead or stuck".to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_excuses_the_wait_until_a_timeout_after_it_was_written() {
        let (s, timeout) = (Duration::from_secs, Duration::from_secs(3));
        let late = |writing, wrote_ago| Behind { late: vec!["0".into()], writing, wrote_ago, ..Behind::default() };
        // Writing: 5 s waited, 3 s allowed: asked again a second from now.
        assert_eq!(checkpoint_excuse(s(5), timeout, &late(true, None)), Some(s(3)));
        // Written 1 s ago: 2 s more before the wait counts again (5 + 2 - 4 = 3).
        assert_eq!(checkpoint_excuse(s(5), timeout, &late(false, Some(s(1)))), Some(s(4)));
        // Written longer ago than the timeout, or never: nothing is excused.
        assert_eq!(checkpoint_excuse(s(5), timeout, &late(false, Some(s(4)))), None);
        assert_eq!(checkpoint_excuse(s(5), timeout, &late(false, None)), None);
    }

    #[test]
    fn late_ranks_are_named_before_silent_ones() {
        let b = Behind { late: vec!["2 (last seen at step 4)".into()], silent: vec![1, 3], ..Behind::default() };
        assert_eq!(
            b.describe(),
            "rank(s) 2 (last seen at step 4) never arrived (rank(s) 1, 3 no longer answer: ended, dead, or unreachable)"
        );
        assert_eq!(Behind::default().describe(), "every rank arrived; the collective itself is stuck");
    }
}
