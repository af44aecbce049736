//! `candle-mpi bench` and `report` end to end on the small CNN: a 1- and
//! 2-worker sweep producing every report file, resuming an interrupted sweep,
//! a failing run recorded while the sweep goes on, and bad launchers refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_candle-mpi");

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("candle-mpi-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn candle(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn sweep_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "bench",
        "--models",
        "small",
        "--workers",
        "1,2",
        "--image-size",
        "8",
        "--classes",
        "10",
        "--batch-size",
        "4",
        "--steps",
        "1",
        "--warmup",
        "1",
        "--repeat",
        "1",
        "--out",
        out,
    ];
    a.extend_from_slice(extra);
    a
}

fn run_json(out: &Path, name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("runs").join(name).join("run.json")).unwrap()).unwrap()
}

#[test]
fn sweep_then_report_then_resume() {
    let out = dir("sweep");
    let o = out.to_str().unwrap();
    let run = candle(&sweep_args(o, &[]));
    assert!(run.status.success(), "{}", text(&run));
    assert!(text(&run).contains("3 run(s)") && text(&run).contains("0 already recorded, 3 to run"), "{}", text(&run));
    for name in ["small-weak-n1-r0", "small-weak-n2-r0", "small-weak-ceiling-n2-r0"] {
        assert_eq!(run_json(&out, name)["ok"], true, "{name}");
    }
    assert!(out.join("runs/small-weak-n2-r0/summary.json").is_file());
    assert!(out.join("runs/small-weak-ceiling-n2-r0/p1/summary.json").is_file(), "two independent processes");
    assert!(run_json(&out, "small-weak-n2-r0")["command"].as_str().unwrap().starts_with("mpirun -np 2 "));

    let report = candle(&["report", o, "--reference", "theano-mpi"]);
    assert!(report.status.success(), "{}", text(&report));
    for f in [
        "report.md",
        "runs.csv",
        "speedup.svg",
        "speedup.png",
        "breakdown.svg",
        "breakdown.png",
        "efficiency.svg",
        "efficiency.png",
    ] {
        let len = std::fs::metadata(out.join(f)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 100, "{f}: {len} bytes");
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## small, weak scaling") && md.contains("| 2 |") && md.contains("Theano-MPI"), "{md}");
    assert_eq!(std::fs::read_to_string(out.join("runs.csv")).unwrap().lines().count(), 4, "header + 3 runs");

    // The model's curve beside the measured one, from the sweep's own 1-worker run.
    let with = out.join("with-prediction");
    let w = with.to_str().unwrap();
    let report = candle(&[
        "report",
        o,
        "--out",
        w,
        "--predict-link",
        "10gbe",
        "--predict-gpus-per-host",
        "2",
        "--predict-to",
        "16",
    ]);
    assert!(report.status.success(), "{}", text(&report));
    let md = std::fs::read_to_string(with.join("report.md")).unwrap();
    assert!(md.contains("## Predicted") && md.contains("10gbe") && md.contains("| 16 |"), "{md}");
    let predicted = md.split("## Predicted").nth(1).unwrap_or_default();
    let measured_2 = predicted.lines().find(|l| l.starts_with("| 2 |") && l.contains(" ± ")).unwrap_or_default();
    assert!(!measured_2.is_empty() && measured_2.matches('|').count() == 6, "the 2-worker row has both: {md}");
    let svg = std::fs::read_to_string(with.join("speedup.svg")).unwrap();
    assert!(svg.contains("small: predicted"), "the curve is in the figure's legend");
    let e = text(&candle(&["report", o, "--out", w, "--predict-link", "token-ring"]));
    assert!(e.contains("--predict-link token-ring: no such interconnect"), "{e}");

    // Interrupted: one run's record is gone. Only that run is made again.
    std::fs::remove_dir_all(out.join("runs/small-weak-n2-r0")).unwrap();
    let again = candle(&sweep_args(o, &[]));
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("2 already recorded, 1 to run") && text(&again).contains("small-weak-n2-r0"),
        "{}",
        text(&again)
    );
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn a_failing_run_is_recorded_and_the_sweep_goes_on() {
    // The digits give 1,438 training images: one worker can take a batch of 1000,
    // two workers' shards of 719 cannot, so the 2-worker run fails on its own.
    let out = dir("fail");
    let o = out.to_str().unwrap();
    let digits = format!("mnist:{}/tests/data/digits", env!("CARGO_MANIFEST_DIR"));
    let args = [
        "bench",
        "--models",
        "small",
        "--workers",
        "2,1",
        "--image-size",
        "8",
        "--classes",
        "10",
        "--batch-size",
        "1000",
        "--steps",
        "1",
        "--warmup",
        "1",
        "--repeat",
        "1",
        "--no-ceiling",
        "--data",
        &digits,
        "--out",
        o,
    ];
    let run = candle(&args);
    assert!(!run.status.success(), "a failed run makes the sweep's exit non-zero");
    let t = text(&run);
    assert!(t.contains("small-weak-n2-r0") && t.contains("FAILED") && t.contains("1 failed"), "{t}");
    let failed = run_json(&out, "small-weak-n2-r0");
    assert_eq!(failed["ok"], false);
    assert!(failed["error"].as_str().unwrap().contains("--batch-size 1000"), "{failed}");
    assert_eq!(run_json(&out, "small-weak-n1-r0")["ok"], true, "the sweep went on after the failure");
    let report = candle(&["report", o]);
    assert!(report.status.success(), "{}", text(&report));
    assert!(std::fs::read_to_string(out.join("report.md")).unwrap().contains("## Failed runs"));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn bad_sweeps_are_refused_before_anything_runs() {
    let out = dir("bad");
    let o = out.to_str().unwrap();
    let e = text(&candle(&sweep_args(o, &["--launcher", "mpirun -n 2"])));
    assert!(e.contains("--launcher 'mpirun -n 2': needs the placeholder {np}"), "{e}");
    let e = text(&candle(&sweep_args(o, &["--launcher", "no-such-mpirun -np {np}"])));
    assert!(e.contains("`no-such-mpirun` is not on PATH"), "{e}");
    let e = text(&candle(&sweep_args(o, &["--mode", "strong", "--global-batch", "6", "--workers", "1,4"])));
    assert!(e.contains("--global-batch 6 does not divide by 4 workers"), "{e}");
    let e = text(&candle(&sweep_args(o, &["--mode", "strong"])));
    assert!(e.contains("--mode strong needs --global-batch"), "{e}");
    assert!(!out.join("runs").exists(), "nothing ran");
    let e = text(&candle(&["report", o]));
    assert!(e.contains("no runs/ folder"), "{e}");
}

/// A one-worker sweep of the small CNN at `size` pixels and `steps` steps.
fn small_sweep<'a>(out: &'a str, size: &'a str, steps: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "bench",
        "--models",
        "small",
        "--workers",
        "1",
        "--image-size",
        size,
        "--classes",
        "10",
        "--batch-size",
        "4",
        "--steps",
        steps,
        "--warmup",
        "1",
        "--repeat",
        "1",
        "--no-ceiling",
        "--out",
        out,
    ];
    a.extend_from_slice(extra);
    a
}

/// A sweep into an --out that holds runs made with other settings is
/// refused, naming them (it used to report the old runs as its own);
/// --fresh replaces them.
#[test]
fn runs_of_other_settings_are_not_reused() {
    let out = dir("settings");
    let o = out.to_str().unwrap();
    let first = candle(&small_sweep(o, "8", "1", &[]));
    assert!(first.status.success(), "{}", text(&first));
    let other = candle(&small_sweep(o, "16", "2", &[]));
    let t = text(&other);
    assert!(!other.status.success(), "{t}");
    assert!(
        t.contains("holds runs of a sweep with other settings")
            && t.contains("--image-size 8 -> 16")
            && t.contains("--steps 1 -> 2"),
        "{t}"
    );
    let fresh = candle(&small_sweep(o, "16", "2", &["--fresh"]));
    assert!(fresh.status.success(), "{}", text(&fresh));
    assert!(text(&fresh).contains("0 already recorded, 1 to run"), "{}", text(&fresh));
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("runs/small-weak-n1-r0/summary.json")).unwrap())
            .unwrap();
    assert_eq!(s["image_size"], 16);
    std::fs::remove_dir_all(&out).unwrap();
}

/// Ctrl-C on a sweep stops the run under way with its processes (mpirun
/// and its rank were left running, orphaned), records it as interrupted,
/// and ends the sweep.
#[test]
fn ctrl_c_stops_the_run_and_leaves_nothing_behind() {
    let out = dir("sigint");
    let o = out.to_str().unwrap();
    let mut bench = Command::new(BIN)
        .args(small_sweep(o, "8", "100000", &[]))
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let marker = "candle-mpi train .*--steps 100001";
    let running = || {
        let o = Command::new("pgrep").args(["-f", marker]).output().unwrap();
        !o.stdout.is_empty()
    };
    let start = std::time::Instant::now();
    while !running() && start.elapsed() < std::time::Duration::from_secs(30) {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(running(), "the training never started");
    std::thread::sleep(std::time::Duration::from_secs(1));
    // SAFETY: signals the child this test started.
    unsafe { libc::kill(bench.id() as i32, libc::SIGINT) };
    let t = std::time::Instant::now();
    let status = bench.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut bench.stderr.take().unwrap(), &mut err).unwrap();
    eprintln!("Ctrl-C: the sweep ended {:.2} s after the signal", t.elapsed().as_secs_f64());
    assert!(!status.success() && err.contains("interrupted by SIGINT"), "{err}");
    let rec = run_json(&out, "small-weak-n1-r0");
    assert_eq!(rec["ok"], false);
    assert!(rec["error"].as_str().unwrap().contains("interrupted by SIGINT"), "{rec}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!running(), "processes left behind");
    std::fs::remove_dir_all(&out).unwrap();
}
