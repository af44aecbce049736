//! Weights in and out under torchvision's names: `train --init-from`,
//! `export` and `eval`, end to end on the small CNN (tests/torchvision.rs
//! holds the four networks to torchvision's numbers; the names and shapes
//! of all four load both ways with torchvision itself, shown by
//! scripts/torchvision-export.py --check, which needs torch).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_candle-mpi");

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("candle-mpi-weights-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn candle(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn train<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut a =
        vec!["train", "--model", "small", "--image-size", "8", "--batch-size", "4", "--threads", "1", "--steps", "2"];
    a.extend_from_slice(extra);
    a
}

/// The first step's loss a run recorded.
fn first_loss(out: &Path) -> String {
    let csv = std::fs::read_to_string(out.join("steps.csv")).unwrap();
    csv.lines().nth(1).unwrap().split(',').nth(3).unwrap().to_string()
}

/// Weights exported from seed 3 and read back by a run of seed 99 start it
/// exactly where a run of seed 3 starts: every parameter and buffer arrives.
#[test]
fn exported_initial_weights_start_a_run_exactly() {
    let d = dir("init");
    let w = d.join("init.safetensors");
    let o = candle(&["export", "--model", "small", "--classes", "10", "--image-size", "8", "--seed", "3", s(&w)]);
    assert!(o.status.success(), "{}", text(&o));
    let (a, b) = (d.join("a"), d.join("b"));
    let o = candle(&train(&["--seed", "3", "--out", s(&a)]));
    assert!(o.status.success(), "{}", text(&o));
    // The data of the second run is seed 3's too: only the weights come from the file.
    let o = candle(&train(&["--seed", "3", "--init-from", s(&w), "--out", s(&b)]));
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(first_loss(&a), first_loss(&b));
    let o = candle(&train(&["--seed", "99", "--out", s(&d.join("c"))]));
    assert!(o.status.success());
    assert_ne!(first_loss(&a), first_loss(&d.join("c")), "another seed is another start (the check can fail)");
    // OUT is never overwritten.
    let o = candle(&["export", "--model", "small", "--classes", "10", "--image-size", "8", s(&w)]);
    assert!(!o.status.success() && text(&o).contains("the file exists"), "{}", text(&o));
    std::fs::remove_dir_all(&d).unwrap();
}

/// A file of another class count, another network, or one that lacks a
/// tensor is refused, naming what does not fit; nothing trains.
#[test]
fn weights_that_do_not_fit_are_refused_by_name() {
    let d = dir("misfit");
    let w = d.join("w.safetensors");
    assert!(candle(&["export", "--model", "small", "--classes", "10", "--image-size", "8", s(&w)]).status.success());
    let o = candle(&train(&["--classes", "7", "--init-from", s(&w)]));
    assert!(
        !o.status.success() && text(&o).contains("fc.weight is [10, 128] in the file, [7, 128] in this network"),
        "{}",
        text(&o)
    );
    let alex = d.join("alexnet.safetensors");
    assert!(candle(&["export", "--model", "alexnet", "--classes", "10", "--image-size", "32", s(&alex)])
        .status
        .success());
    let o = candle(&train(&["--init-from", s(&alex)]));
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("missing bn1.bias") && t.contains("not in this network: classifier.1.bias"),
        "{t}"
    );
    // One tensor taken out.
    let mut tensors = candle_core::safetensors::load(&w, &candle_core::Device::Cpu).unwrap();
    tensors.remove("bn2.running_var").unwrap();
    let lacking = d.join("lacking.safetensors");
    candle_core::safetensors::save(&tensors, &lacking).unwrap();
    let o = candle(&train(&["--init-from", s(&lacking)]));
    assert!(!o.status.success() && text(&o).contains("missing bn2.running_var"), "{}", text(&o));
    let o = candle(&train(&["--init-from", s(&w), "--resume", "--checkpoint-dir", s(&d)]));
    assert!(!o.status.success() && text(&o).contains("--init-from and --resume: choose one"), "{}", text(&o));
    let o = candle(&train(&["--init-from", "/no/such.safetensors"]));
    assert!(!o.status.success() && text(&o).contains("--init-from /no/such.safetensors: no such file"), "{}", text(&o));
    std::fs::remove_dir_all(&d).unwrap();
}

/// A checkpoint exported holds every variable under its name, and a
/// batch counter (the step) beside every batch norm, as torchvision's
/// state_dict; `eval` of it on the digits' test split gives the top-1 the
/// training run recorded, on 1 rank and on 2.
#[test]
fn a_checkpoint_exported_and_evaluated_gives_the_runs_figures() {
    let d = dir("eval");
    let digits = format!("mnist:{}/tests/data/digits", env!("CARGO_MANIFEST_DIR"));
    let (ckpt, out) = (d.join("ckpt"), d.join("out"));
    let o = candle(&[
        "train",
        "--model",
        "small",
        "--data",
        &digits,
        "--image-size",
        "8",
        "--classes",
        "10",
        "--batch-size",
        "32",
        "--epochs",
        "3",
        "--threads",
        "1",
        "--checkpoint-dir",
        s(&ckpt),
        "--out",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let steps = summary["steps"].as_u64().unwrap() as i64;
    let w = d.join("trained.safetensors");
    let o = candle(&["export", s(&ckpt.join("checkpoint.safetensors")), s(&w)]);
    assert!(o.status.success() && text(&o).contains(&format!("small after step {steps}")), "{}", text(&o));
    let tensors = candle_core::safetensors::load(&w, &candle_core::Device::Cpu).unwrap();
    for bn in ["bn1", "bn2"] {
        let t = &tensors[&format!("{bn}.num_batches_tracked")];
        assert_eq!((t.dtype(), t.to_scalar::<i64>().unwrap()), (candle_core::DType::I64, steps));
        assert!(tensors.contains_key(&format!("{bn}.running_mean")) && tensors.contains_key(&format!("{bn}.weight")));
    }
    let top1 = format!("top-1 {:.2}%", summary["val_top1"].as_f64().unwrap() * 100.0);
    let eval =
        ["eval", "--model", "small", "--init-from", s(&w), "--data", &digits, "--image-size", "8", "--classes", "10"];
    let o = candle(&eval);
    assert!(o.status.success() && text(&o).contains(&top1), "want {top1}: {}", text(&o));
    let two = common::mpirun(2, BIN, &eval, Duration::from_secs(60));
    common::assert_ok(&two, "eval on 2 ranks");
    assert!(two.output.contains("small on 358 validation images"), "each rank its 179: {}", two.output);
    std::fs::remove_dir_all(&d).unwrap();
}
