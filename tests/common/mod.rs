//! Launching test workers under mpirun, with a deadline so that a hang fails
//! the test instead of stalling the suite.

#![allow(dead_code)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Run {
    pub success: bool,
    pub code: Option<i32>,
    pub output: String,
    pub elapsed: Duration,
}

/// `mpirun -np N --oversubscribe PROGRAM ARGS...`, killed after `timeout`.
pub fn mpirun(np: usize, program: &str, args: &[&str], timeout: Duration) -> Run {
    mpirun_env(np, program, args, &[], timeout)
}

/// As `mpirun`, with extra environment variables for this run only.
pub fn mpirun_env(np: usize, program: &str, args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Run {
    let mut cmd = Command::new("mpirun");
    cmd.envs(env.iter().copied());
    cmd.args(["-np", &np.to_string(), "--oversubscribe"])
        .arg(program)
        .args(args)
        // Open MPI refuses root without these (CI runs as root); harmless otherwise.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    run_with_deadline(cmd, timeout)
}

/// Where worker ranks leave their "finished" marks (set by `mpirun_worker`).
const MARKS_ENV: &str = "CANDLE_MPI_TEST_MARKS";

/// Runs the current test binary's worker test `name` on `np` ranks and checks
/// that every rank reached its end (called `mark_done`): a filtered-out or
/// misspelt worker cannot pass by running nothing.
pub fn mpirun_worker(np: usize, name: &str, timeout: Duration) -> Run {
    let exe = std::env::current_exe().expect("test binary path");
    let marks = std::env::temp_dir().join(format!("candle-mpi-marks-{name}-{np}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&marks);
    std::fs::create_dir_all(&marks).unwrap();
    std::env::set_var(MARKS_ENV, &marks);
    let mut run =
        mpirun(np, exe.to_str().unwrap(), &["--exact", name, "--ignored", "--nocapture", "--test-threads=1"], timeout);
    let done = std::fs::read_dir(&marks).map(|d| d.count()).unwrap_or(0);
    if run.success && done != np {
        run.success = false;
        run.output.push_str(&format!("\n{done} of {np} ranks reached the end of {name}"));
    }
    let _ = std::fs::remove_dir_all(&marks);
    run
}

/// Called by a worker as its last step.
pub fn mark_done(rank: usize) {
    let dir = std::env::var(MARKS_ENV).expect("worker started outside mpirun_worker");
    std::fs::write(std::path::Path::new(&dir).join(format!("rank-{rank}")), b"done").unwrap();
}

pub fn run_with_deadline(mut cmd: Command, timeout: Duration) -> Run {
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn (is Open MPI installed? run scripts/setup.sh)");
    // Drain both pipes in threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = format!("{}{}", t_out.join().unwrap(), t_err.join().unwrap());
    match status {
        Some(s) => Run { success: s.success(), code: s.code(), output, elapsed: start.elapsed() },
        None => Run {
            success: false,
            code: None,
            output: format!("TIMED OUT after {timeout:?}\n{output}"),
            elapsed: start.elapsed(),
        },
    }
}

/// Asserts a run succeeded, printing its output if not.
pub fn assert_ok(run: &Run, what: &str) {
    assert!(run.success, "{what} failed (exit {:?}):\n{}", run.code, run.output);
}

/// Cores online on this host.
pub fn host_cores() -> usize {
    candle_mpi::host::threads::host_cores()
}

/// Flags of a run whose rank 0 writes its step-2 checkpoint (into `dir`) 3 s
/// slower than the 1 s collective timeout: a slow rank, not a stuck one.
pub fn slow_checkpoint_flags(dir: &str) -> [&str; 8] {
    ["--checkpoint-dir", dir, "--checkpoint-every", "2", "--fault-inject", "0:2:ckpt-slow", "--collective-timeout", "1"]
}
