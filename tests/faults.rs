//! Faults end the job quickly and say what happened: a rank killed, hung or
//! exited; ranks that disagree at start; fp16 overflow; a NaN loss; a crash
//! between writing a checkpoint and renaming it. Each test prints how long
//! the failure took to surface (the README's table quotes them).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use candle_mpi::train::checkpoint;

const BIN: &str = env!("CARGO_BIN_EXE_candle-mpi");

/// A small run of 2 ranks; `marker` goes into --synthetic-size so that
/// leftover processes can be searched for afterwards.
fn args(marker: &str, steps: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "train",
        "--model",
        "small",
        "--image-size",
        "8",
        "--batch-size",
        "4",
        "--steps",
        steps,
        "--threads",
        "1",
        "--log-every",
        "1000",
        "--synthetic-size",
        marker,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn mpirun2(a: &[String]) -> common::Run {
    let a: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
    common::mpirun(2, BIN, &a, Duration::from_secs(120))
}

/// No process of this test's run may be left once the job has ended.
fn assert_none_left(marker: &str) {
    std::thread::sleep(Duration::from_millis(500));
    let o =
        Command::new("pgrep").args(["-f", &format!("candle-mpi train .*--synthetic-size {marker}")]).output().unwrap();
    assert!(o.stdout.is_empty(), "processes left behind: {}", String::from_utf8_lossy(&o.stdout));
}

#[test]
fn a_killed_rank_ends_the_job() {
    let run = mpirun2(&args("1201", "40", &["--fault-inject", "1:3:kill", "--collective-timeout", "5"]));
    eprintln!("killed rank: the job ended after {:.2} s", run.elapsed.as_secs_f64());
    assert!(!run.success, "{}", run.output);
    assert!(run.output.contains("rank 1: fault injection: SIGKILL at step 3"), "{}", run.output);
    // mpirun itself names the dead rank.
    assert!(run.output.contains("rank 1") && run.output.to_lowercase().contains("signal 9"), "{}", run.output);
    assert!(run.elapsed < Duration::from_secs(30));
    assert_none_left("1201");
}

#[test]
fn a_hung_rank_ends_the_job_after_the_collective_timeout() {
    let run = mpirun2(&args("1202", "40", &["--fault-inject", "1:3:hang", "--collective-timeout", "3"]));
    eprintln!("hung rank: the job ended after {:.2} s (timeout 3 s)", run.elapsed.as_secs_f64());
    assert!(!run.success, "{}", run.output);
    assert!(
        run.output.contains("rank 0: step 3: waited") && run.output.contains("--collective-timeout 3"),
        "{}",
        run.output
    );
    assert!(run.output.contains("rank(s) 1 (last seen at step 2) never arrived"), "{}", run.output);
    assert!(run.elapsed >= Duration::from_secs(3) && run.elapsed < Duration::from_secs(30));
    assert_none_left("1202");
}

#[test]
fn a_rank_that_exits_ends_the_job() {
    let run = mpirun2(&args("1203", "40", &["--fault-inject", "0:2:exit", "--collective-timeout", "5"]));
    eprintln!("exited rank: the job ended after {:.2} s", run.elapsed.as_secs_f64());
    assert!(!run.success);
    assert!(run.output.contains("rank 0: fault injection: exiting at step 2"), "{}", run.output);
    assert!(run.elapsed < Duration::from_secs(30));
    assert_none_left("1203");
}

#[test]
fn ranks_that_disagree_are_stopped_before_any_gradient_moves() {
    let common = args("1204", "3", &["--collective-timeout", "5"]);
    let t = Instant::now();
    let o = Command::new("mpirun")
        .args(["--oversubscribe", "-np", "1", BIN])
        .args(&common)
        .args([":", "-np", "1", BIN])
        .args(&common)
        .args(["--grad-dtype", "f32", "--bucket-mb", "0.001"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .unwrap();
    eprintln!("disagreeing ranks: stopped after {:.2} s", t.elapsed().as_secs_f64());
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(!o.status.success());
    assert!(
        out.contains("start-up check: rank 1 (--grad-dtype, --bucket-mb, bucket layout) differ from rank 0"),
        "{out}"
    );
    assert!(!out.contains("step      1/"), "no step ran: {out}");
}

/// Rank 0 with `common`, rank 1 with `common` where `rank1` sets flags
/// (a value replaces the flag's, a flag without one is added); success, the
/// output and the time.
fn mpmd(common: &[String], rank1: &[(&str, Option<&str>)]) -> (bool, String, Duration) {
    let mut second: Vec<String> = common.to_vec();
    for (flag, value) in rank1 {
        match (second.iter().position(|a| a == flag), value) {
            (Some(i), Some(v)) => second[i + 1] = v.to_string(),
            (None, Some(v)) => second.extend([flag.to_string(), v.to_string()]),
            (_, None) => second.push(flag.to_string()),
        }
    }
    let t = Instant::now();
    let o = Command::new("mpirun")
        .args(["--oversubscribe", "-np", "1", BIN])
        .args(common)
        .args([":", "-np", "1", BIN])
        .args(&second)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .unwrap();
    (
        o.status.success(),
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
        t.elapsed(),
    )
}

/// Another network or classifier on one rank is named by its flag before
/// any weight is broadcast (which had corrupted the heap), and so is
/// --resume given to one rank only.
#[test]
fn a_different_network_or_resume_on_one_rank_is_named_first() {
    let common = args("1208", "3", &["--collective-timeout", "5"]);
    for (rank1, flag) in [
        (vec![("--model", Some("alexnet")), ("--image-size", Some("32"))], "--model"),
        (vec![("--classes", Some("7"))], "--classes"),
        (vec![("--transport", Some("messages"))], "--transport"),
        (vec![("--verify-sync", Some("1"))], "--verify-sync"),
        (vec![("--dropout", Some("0.1"))], "--dropout"),
    ] {
        let (ok, out, took) = mpmd(&common, &rank1);
        eprintln!("rank 1 with {rank1:?}: stopped after {:.2} s", took.as_secs_f64());
        assert!(!ok, "{out}");
        assert!(out.contains("start-up check: rank 1 (") && out.contains(flag), "{flag}: {out}");
        assert!(!out.contains("malloc") && !out.contains("MPI_ERR"), "{flag}: {out}");
    }
    let dir = std::env::temp_dir().join(format!("candle-mpi-resume-one-{}", std::process::id()));
    let d = dir.to_str().unwrap();
    let common = args("1209", "3", &["--collective-timeout", "5", "--checkpoint-dir", d]);
    let (ok, out, _) = mpmd(&common, &[("--resume", None)]);
    assert!(!ok && out.contains("start-up check: rank 1 (--resume)"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// One rank's own error after start-up prints and ends the job at once, on
/// both transports, even with the watchdog off (it used to wait in the
/// collective free of a shared window until another rank's watchdog fired).
#[test]
fn one_ranks_error_ends_the_job_at_once() {
    for (marker, transport) in [("1210", "auto"), ("1211", "messages")] {
        let run = mpirun2(&args(
            marker,
            "40",
            &["--fault-inject", "1:3:error", "--collective-timeout", "0", "--transport", transport],
        ));
        eprintln!("one rank's error ({transport}): the job ended after {:.2} s", run.elapsed.as_secs_f64());
        assert!(!run.success, "{}", run.output);
        assert!(
            run.output.contains("rank 1: error: fault injection: an error of rank 1's own at step 3"),
            "{}",
            run.output
        );
        assert!(run.elapsed < Duration::from_secs(5), "{:?}: {}", run.elapsed, run.output);
        assert_none_left(marker);
    }
}

/// A rank frozen before step 1, or in a validation, is caught by the
/// watchdog like one frozen in a step.
#[test]
fn a_rank_frozen_at_start_up_or_in_validation_ends_the_job() {
    let run = mpirun2(&args("1212", "40", &["--fault-inject", "1:0:hang", "--collective-timeout", "3"]));
    eprintln!("rank frozen at start-up: the job ended after {:.2} s (timeout 3 s)", run.elapsed.as_secs_f64());
    assert!(!run.success, "{}", run.output);
    assert!(
        run.output.contains("rank 0: before step 1: waited") && run.output.contains("the start-up check"),
        "{}",
        run.output
    );
    assert!(run.output.contains("rank(s) 1 (last seen before step 1) never arrived"), "{}", run.output);
    assert!(run.elapsed >= Duration::from_secs(3) && run.elapsed < Duration::from_secs(30));
    assert_none_left("1212");

    let digits = format!("mnist:{}/tests/data/digits", env!("CARGO_MANIFEST_DIR"));
    let extra = ["--data", &digits, "--classes", "10", "--fault-inject", "1:4:val-hang", "--collective-timeout", "3"];
    let run = mpirun2(&args("1213", "4", &extra));
    eprintln!("rank frozen in validation: the job ended after {:.2} s (timeout 3 s)", run.elapsed.as_secs_f64());
    assert!(!run.success, "{}", run.output);
    assert!(
        run.output.contains("rank 0: step 4: waited") && run.output.contains("the validation's totals"),
        "{}",
        run.output
    );
    assert!(run.output.contains("rank(s) 1 (last seen at step 4) never arrived"), "{}", run.output);
    assert!(run.elapsed < Duration::from_secs(30));
    assert_none_left("1213");
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn fp16_overflow_skips_the_step_on_every_rank() {
    let out = std::env::temp_dir().join(format!("candle-mpi-overflow-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = mpirun2(&args(
        "1205",
        "6",
        &["--grad-dtype", "f16", "--fault-inject", "1:3:overflow", "--out", out.to_str().unwrap()],
    ));
    common::assert_ok(&run, "overflow run");
    assert!(run.output.contains("step 3 skipped: non-finite gradient"), "warned: {}", run.output);
    let s = summary(&out);
    assert_eq!(s["skipped_steps"], 1);
    assert!(s["param_l2"].as_f64().unwrap().is_finite(), "the weights never saw the inf");
    let csv = std::fs::read_to_string(out.join("steps.csv")).unwrap();
    let column = csv.lines().next().unwrap().split(',').position(|c| c == "skipped").unwrap();
    let skipped: Vec<&str> = csv.lines().filter(|l| l.split(',').nth(column) == Some("1")).collect();
    assert_eq!(skipped.len(), 2, "step 3 skipped on both ranks: {skipped:?}");
    assert!(skipped.iter().all(|l| l.starts_with("3,")));
    std::fs::remove_dir_all(&out).unwrap();

    // With --max-skips 0 the same overflow stops the run, naming the step.
    let run =
        mpirun2(&args("1206", "6", &["--grad-dtype", "f16", "--fault-inject", "1:3:overflow", "--max-skips", "0"]));
    assert!(
        !run.success
            && run.output.contains("step 3: 1 steps in a row had a non-finite gradient")
            && run.output.contains("--max-skips 0"),
        "{}",
        run.output
    );
}

#[test]
fn a_nan_loss_stops_the_run_naming_the_step() {
    let t = Instant::now();
    let run = mpirun2(&args("1207", "6", &["--fault-inject", "0:4:nan"]));
    eprintln!("NaN loss: stopped after {:.2} s", t.elapsed().as_secs_f64());
    assert!(!run.success);
    assert!(run.output.contains("step 4: the loss became NaN on rank(s) [0]"), "{}", run.output);
}

#[test]
fn a_crash_between_write_and_rename_leaves_the_last_checkpoint() {
    let dir = std::env::temp_dir().join(format!("candle-mpi-ckpt-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let base = [
        "train",
        "--model",
        "small",
        "--image-size",
        "8",
        "--batch-size",
        "4",
        "--steps",
        "6",
        "--threads",
        "1",
        "--checkpoint-dir",
        d,
    ];
    let o = Command::new(BIN)
        .args(base)
        .args(["--checkpoint-every", "2", "--fault-inject", "0:4:ckpt-kill"])
        .output()
        .unwrap();
    assert!(!o.status.success(), "the process was killed");
    assert!(String::from_utf8_lossy(&o.stderr).contains("after writing the step-4 checkpoint, before renaming it"));
    let path = dir.join(checkpoint::FILE_NAME);
    assert_eq!(checkpoint::load(&path).unwrap().meta.step, 2, "the step-2 checkpoint is whole and loadable");
    let leftovers = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains(".tmp."))
        .count();
    assert_eq!(leftovers, 1, "the unrenamed step-4 file is there, under its temporary name");
    let o = Command::new(BIN).args(base).arg("--resume").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("resumed from step 2"));
    assert_eq!(checkpoint::load(&path).unwrap().meta.step, 6);
    let left = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains(".tmp."))
        .count();
    assert_eq!(left, 0, "the crashed write's temporary was removed at the next start");
    // At the end already: nothing left to train is refused, not reported as 0 steps.
    let o = Command::new(BIN).args(base).arg("--resume").output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("is at step 6 and this run ends at step 6: nothing left to train"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A disk that fills up while the records are written (a file-size limit,
/// set on the running process after MPI's own files exist): summary.json,
/// written first, survives whole; no temporary is left behind; the error
/// says which file could not be written.
#[test]
fn a_full_disk_keeps_the_summary_and_leaves_no_temporary() {
    let out = std::env::temp_dir().join(format!("candle-mpi-full-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    // Ignored in the shell, SIGXFSZ stays ignored across exec: writes past the limit fail instead of killing.
    let mut line = format!("trap '' XFSZ; exec {BIN}");
    for a in args("1214", "10000", &["--out", out.to_str().unwrap()]) {
        line.push(' ');
        line.push_str(&a);
    }
    // Both outputs piped: an inherited stdout may be a file already past the limit (CI's log).
    let child = Command::new("bash")
        .args(["-c", &line])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let limit = libc::rlimit { rlim_cur: 16 << 10, rlim_max: 16 << 10 };
    // SAFETY: sets a resource limit of the child this test started.
    let set = unsafe { libc::prlimit(child.id() as i32, libc::RLIMIT_FSIZE, &limit, std::ptr::null_mut()) };
    assert_eq!(set, 0, "prlimit");
    let o = child.wait_with_output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "the run ended before the limit was set: {e}");
    assert!(e.contains("cannot write") && e.contains("steps.csv"), "{e}");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["steps"], 10000, "the summary is whole");
    let names: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.contains(".tmp.")), "temporaries left: {names:?}");
    std::fs::remove_dir_all(&out).unwrap();
}

/// Rank 0 writing a checkpoint for longer than the timeout is not taken for
/// a stuck rank (the others waited for it and ended the job blaming it), and
/// a timeout below a second is printed as given.
#[test]
fn a_slow_checkpoint_is_not_a_stuck_rank() {
    let dir = std::env::temp_dir().join(format!("candle-mpi-slow-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let run = mpirun2(&args("1215", "4", &common::slow_checkpoint_flags(d)));
    common::assert_ok(&run, "a checkpoint 3 s slower than a 1 s timeout");
    assert!(run.output.contains("writing the step-2 checkpoint 3 s slower"), "{}", run.output);
    let _ = std::fs::remove_dir_all(&dir);
    let run = mpirun2(&args("1216", "40", &["--fault-inject", "1:3:hang", "--collective-timeout", "0.5"]));
    assert!(!run.success && run.output.contains("(--collective-timeout 0.5)"), "{}", run.output);
    assert_none_left("1216");
}

/// Without the barrier before the exchange (`--measure-wait false`) a run
/// trains to the same bits, records no wait, and a hung rank is still named.
#[test]
fn without_the_barrier_the_run_is_the_same_and_a_hang_is_still_caught() {
    let (with, without) = (
        std::env::temp_dir().join(format!("candle-mpi-barrier-{}", std::process::id())),
        std::env::temp_dir().join(format!("candle-mpi-no-barrier-{}", std::process::id())),
    );
    for d in [&with, &without] {
        let _ = std::fs::remove_dir_all(d);
    }
    let run = mpirun2(&args("1217", "4", &["--out", with.to_str().unwrap()]));
    common::assert_ok(&run, "with the barrier");
    let run = mpirun2(&args("1217", "4", &["--measure-wait", "false", "--out", without.to_str().unwrap()]));
    common::assert_ok(&run, "without the barrier");
    let (a, b) = (summary(&with), summary(&without));
    assert_eq!(a["param_l2"], b["param_l2"], "the barrier changed the training");
    assert_eq!(b["wait_s"], 0.0, "no barrier, no measured wait");
    for d in [&with, &without] {
        std::fs::remove_dir_all(d).unwrap();
    }

    let extra = ["--measure-wait", "false", "--fault-inject", "1:3:hang", "--collective-timeout", "3"];
    let run = mpirun2(&args("1219", "40", &extra));
    assert!(!run.success, "{}", run.output);
    assert!(
        run.output.contains("rank 0: step 3: waited") && run.output.contains("in the gradient exchange"),
        "{}",
        run.output
    );
    assert!(run.output.contains("rank(s) 1 (last seen at step 2) never arrived"), "{}", run.output);
    assert_none_left("1219");
}

/// With `--overlap` the same faults end the same way: an overflowing
/// gradient skips the step on every rank, a NaN loss stops the run naming
/// the step, and a rank hung before its backward is named by the others,
/// who wait for it inside the overlapped exchange.
#[test]
fn overlapped_steps_skip_stop_and_end_like_the_others() {
    let out = std::env::temp_dir().join(format!("candle-mpi-overlap-overflow-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let extra = ["--overlap", "--grad-dtype", "f16", "--fault-inject", "1:3:overflow", "--out", out.to_str().unwrap()];
    let run = mpirun2(&args("1221", "6", &extra));
    common::assert_ok(&run, "overlapped overflow run");
    assert!(run.output.contains("step 3 skipped: non-finite gradient"), "warned: {}", run.output);
    let s = summary(&out);
    assert_eq!(s["skipped_steps"], 1);
    assert!(s["param_l2"].as_f64().unwrap().is_finite(), "the weights never saw the inf");
    std::fs::remove_dir_all(&out).unwrap();

    let run = mpirun2(&args("1222", "6", &["--overlap", "--fault-inject", "0:4:nan"]));
    assert!(!run.success);
    assert!(run.output.contains("step 4: the loss became NaN on rank(s) [0]"), "{}", run.output);

    let extra = ["--overlap", "--fault-inject", "1:3:hang", "--collective-timeout", "3"];
    let run = mpirun2(&args("1223", "40", &extra));
    eprintln!("hung rank, overlapped: the job ended after {:.2} s (timeout 3 s)", run.elapsed.as_secs_f64());
    assert!(!run.success, "{}", run.output);
    assert!(
        run.output.contains("rank 0: step 3: waited")
            && run.output.contains("in the gradient exchange (overlapped with backward)"),
        "{}",
        run.output
    );
    assert!(run.output.contains("rank(s) 1 (last seen at step 2) never arrived"), "{}", run.output);
    assert!(run.elapsed < Duration::from_secs(30));
    assert_none_left("1223");
}
