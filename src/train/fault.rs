//! Fault injection, a test aid: `--fault-inject RANK:STEP:KIND` (or the
//! environment variable CANDLE_MPI_FAULT with the same value) makes rank RANK
//! misbehave at step STEP, so that tests can show how the job ends.
//!
//! | KIND | what rank RANK does at step STEP (STEP 0: before step 1, at the start-up check) |
//! |---|---|
//! | kill | sends itself SIGKILL before computing |
//! | hang | sleeps for ever before computing |
//! | exit | exits with status 3 before computing, without finalising MPI |
//! | error | fails with an error of its own before computing (the others go on) |
//! | val-hang | sleeps for ever in the validation after step STEP |
//! | overflow | replaces its first gradient by 1e9 (inf in f16) before the exchange |
//! | nan | makes its loss NaN (the run must stop, naming the step) |
//! | desync | nudges its first parameter after the update (for --verify-sync) |
//! | ckpt-kill | rank 0 is killed between writing a checkpoint and renaming it |
//! | ckpt-slow | rank 0 takes 3 s more to write the checkpoint of step STEP |

use std::str::FromStr;

pub const ENV: &str = "CANDLE_MPI_FAULT";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    Kill,
    Hang,
    Exit,
    Error,
    ValHang,
    Overflow,
    Nan,
    Desync,
    CkptKill,
    CkptSlow,
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
            format!(
                "'{s}' is not a fault: use RANK:STEP:KIND with KIND one of kill, hang, exit, error, val-hang, overflow, \
                 nan, desync, ckpt-kill, ckpt-slow (STEP 0, before step 1, for kill, hang, exit and error)"
            )
        };
        let mut parts = s.split(':');
        let rank = parts.next().and_then(|r| r.parse().ok()).ok_or_else(bad)?;
        let step: usize = parts.next().and_then(|r| r.parse().ok()).ok_or_else(bad)?;
        let kind = match parts.next() {
            Some("kill") => FaultKind::Kill,
            Some("hang") => FaultKind::Hang,
            Some("exit") => FaultKind::Exit,
            Some("error") => FaultKind::Error,
            Some("val-hang") => FaultKind::ValHang,
            Some("overflow") => FaultKind::Overflow,
            Some("nan") => FaultKind::Nan,
            Some("desync") => FaultKind::Desync,
            Some("ckpt-kill") => FaultKind::CkptKill,
            Some("ckpt-slow") => FaultKind::CkptSlow,
            _ => return Err(bad()),
        };
        let at_start = matches!(kind, FaultKind::Kill | FaultKind::Hang | FaultKind::Exit | FaultKind::Error);
        if parts.next().is_some() || (step == 0 && !at_start) {
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

/// Carries out kill, hang, exit and error faults (each announces itself
/// first); step 0 is the start-up check.
pub fn strike_process(fault: Option<Fault>, rank: usize, step: usize) -> anyhow::Result<()> {
    let Some(f) = fault.filter(|f| f.rank == rank && f.step == step) else {
        return Ok(());
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
        FaultKind::Error => {
            anyhow::bail!(
                "fault injection: an error of rank {rank}'s own at step {step}, the other ranks still running"
            )
        }
        _ => {}
    }
    Ok(())
}

/// The val-hang fault: sleeps for ever, in the validation after step `step`.
pub fn hang_in_validation(rank: usize, step: usize) {
    eprintln!("rank {rank}: fault injection: hanging in the validation after step {step}");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
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
        assert_eq!("1:0:hang".parse::<Fault>().unwrap().step, 0, "step 0: before step 1");
        for bad in ["", "1:3", "1:0:nan", "x:3:kill", "1:3:explode", "1:3:kill:now"] {
            assert!(bad.parse::<Fault>().unwrap_err().contains("RANK:STEP:KIND"), "{bad}");
        }
        let f = Some(Fault { rank: 1, step: 3, kind: FaultKind::Overflow });
        assert!(
            hits(f, FaultKind::Overflow, 1, 3) && !hits(f, FaultKind::Overflow, 0, 3) && !hits(f, FaultKind::Nan, 1, 3)
        );
    }
}
