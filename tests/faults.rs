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
    assert!(out.contains("start-up check: rank 1 (gradient dtype, bucket layout) differ from rank 0"), "{out}");
    assert!(!out.contains("step      1/"), "no step ran: {out}");
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
    let skipped: Vec<&str> = csv.lines().filter(|l| l.ends_with(",1")).collect();
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
    std::fs::remove_dir_all(&dir).unwrap();
}
