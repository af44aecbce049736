//! Fault injection, a test aid: `--fault-inject RANK:STEP:KIND` (or the
//! environment variable CANDLE_MPI_FAULT with the same value) makes rank RANK
//! misbehave at step STEP, so that tests can show how the job ends.
//!
//! | KIND | what rank RANK does at step STEP |
//! |---|---|
//! | kill | sends itself SIGKILL before computing |
//! | hang | sleeps for ever before computing |
//! | exit | exits with status 3 before computing, without finalising MPI |
//! | overflow | replaces its first gradient by 1e9 (inf in f16) before the exchange |
//! | nan | makes its loss NaN (the run must stop, naming the step) |
//! | desync | nudges its first parameter after the update (for --verify-sync) |
//! | ckpt-kill | rank 0 is killed between writing a checkpoint and renaming it |

use std::str::FromStr;

pub const ENV: &str = "CANDLE_MPI_FAULT";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    Kill,
    Hang,
    Exit,
    Overflow,
    Nan,
    Desync,
    CkptKill,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub rank: usize,
    pub step: usize,
    pub kind: FaultKind,
}

impl FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Fault, String> {
        let bad = || {
            format!("'{s}' is not a fault: use RANK:STEP:KIND with KIND one of kill, hang, exit, overflow, nan, desync, ckpt-kill")
        };
        let mut parts = s.split(':');
        let rank = parts.next().and_then(|r| r.parse().ok()).ok_or_else(bad)?;
        let step = parts.next().and_then(|r| r.parse().ok()).filter(|&s: &usize| s >= 1).ok_or_else(bad)?;
        let kind = match parts.next() {
            Some("kill") => FaultKind::Kill,
            Some("hang") => FaultKind::Hang,
            Some("exit") => FaultKind::Exit,
            Some("overflow") => FaultKind::Overflow,
            Some("nan") => FaultKind::Nan,
            Some("desync") => FaultKind::Desync,
            Some("ckpt-kill") => FaultKind::CkptKill,
            _ => return Err(bad()),
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Fault { rank, step, kind })
    }
}

/// The fault asked for by the flag, else by the environment.
pub fn resolve(flag: Option<Fault>) -> anyhow::Result<Option<Fault>> {
    if flag.is_some() {
        return Ok(flag);
    }
    match std::env::var(ENV) {
        Ok(v) if !v.is_empty() => v.parse().map(Some).map_err(|e| anyhow::anyhow!("{ENV}: {e}")),
        _ => Ok(None),
    }
}

/// True when `fault` is `kind` for this rank at this (1-based) step.
pub fn hits(fault: Option<Fault>, kind: FaultKind, rank: usize, step: usize) -> bool {
    fault.is_some_and(|f| f.kind == kind && f.rank == rank && f.step == step)
}

/// Carries out kill, hang and exit faults (each announces itself first).
pub fn strike_process(fault: Option<Fault>, rank: usize, step: usize) {
    let Some(f) = fault.filter(|f| f.rank == rank && f.step == step) else {
        return;
    };
    match f.kind {
        FaultKind::Kill => {
            eprintln!("rank {rank}: fault injection: SIGKILL at step {step}");
            // SAFETY: signals this process only.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
        FaultKind::Hang => {
            eprintln!("rank {rank}: fault injection: hanging at step {step}");
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        FaultKind::Exit => {
            eprintln!("rank {rank}: fault injection: exiting at step {step}");
            // SAFETY: ends the process at once, as a crashing rank would.
            unsafe { libc::_exit(3) };
        }
        _ => {}
    }
}

/// Kills this process (the checkpoint test's crash between write and rename).
pub fn kill_now(rank: usize, what: &str) {
    eprintln!("rank {rank}: fault injection: SIGKILL {what}");
    // SAFETY: signals this process only.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_faults_and_refuses_nonsense() {
        assert_eq!("1:3:kill".parse::<Fault>().unwrap(), Fault { rank: 1, step: 3, kind: FaultKind::Kill });
        assert_eq!("0:8:ckpt-kill".parse::<Fault>().unwrap().kind, FaultKind::CkptKill);
        for bad in ["", "1:3", "1:0:kill", "x:3:kill", "1:3:explode", "1:3:kill:now"] {
            assert!(bad.parse::<Fault>().unwrap_err().contains("RANK:STEP:KIND"), "{bad}");
        }
        let f = Some(Fault { rank: 1, step: 3, kind: FaultKind::Overflow });
        assert!(
            hits(f, FaultKind::Overflow, 1, 3) && !hits(f, FaultKind::Overflow, 0, 3) && !hits(f, FaultKind::Nan, 1, 3)
        );
    }
}
