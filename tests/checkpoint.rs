//! Checkpoints: a run stopped and resumed ends bit for bit where an unbroken
//! run ends, alone and on 2 ranks; bad checkpoints are refused and left alone.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use candle_mpi::train::checkpoint;

const BIN: &str = env!("CARGO_BIN_EXE_candle-mpi");

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("candle-mpi-ckpt-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn args<'a>(ckpt: &'a str, steps: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "train",
        "--model",
        "small",
        "--image-size",
        "8",
        "--batch-size",
        "8",
        "--synthetic-size",
        "64",
        "--threads",
        "1",
        "--lr",
        "0.05",
        "--steps",
        steps,
        "--log-every",
        "100",
        "--checkpoint-dir",
        ckpt,
    ];
    a.extend_from_slice(extra);
    a
}

fn run(np: usize, a: &[&str]) -> common::Run {
    if np == 1 {
        let mut cmd = Command::new(BIN);
        cmd.args(a).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        common::run_with_deadline(cmd, Duration::from_secs(120))
    } else {
        common::mpirun(np, BIN, a, Duration::from_secs(120))
    }
}

fn tensors(path: &Path) -> Vec<(String, Vec<u32>)> {
    let c = checkpoint::load(path).unwrap();
    let mut all: Vec<(String, Vec<u32>)> = c
        .model
        .iter()
        .map(|(n, t)| (format!("model/{n}"), t))
        .chain(c.momentum.iter().map(|(n, t)| (format!("momentum/{n}"), t)))
        .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()))
        .collect();
    all.sort();
    all
}

fn stop_and_resume_matches_unbroken(np: usize) {
    let (straight, split) = (dir(&format!("straight{np}")), dir(&format!("split{np}")));
    let (s, p) = (straight.to_str().unwrap(), split.to_str().unwrap());
    common::assert_ok(&run(np, &args(s, "12", &[])), "unbroken run");
    common::assert_ok(&run(np, &args(p, "8", &["--checkpoint-every", "4"])), "first half");
    let meta = checkpoint::load(&split.join(checkpoint::FILE_NAME)).unwrap().meta;
    assert_eq!(meta.step, 8);
    let config: serde_json::Value =
        serde_json::from_str(&meta.config.expect("the run's config is in the metadata")).unwrap();
    assert_eq!((config["model"].as_str(), config["batch_size"].as_u64()), (Some("small"), Some(8)));
    let resumed = run(np, &args(p, "12", &["--resume"]));
    common::assert_ok(&resumed, "resumed run");
    assert!(resumed.output.contains("resumed from step 8"), "{}", resumed.output);
    let a = tensors(&straight.join(checkpoint::FILE_NAME));
    let b = tensors(&split.join(checkpoint::FILE_NAME));
    assert_eq!(a.len(), b.len());
    assert!(a.iter().any(|(n, _)| n.starts_with("momentum/")), "momentum is saved");
    for ((na, va), (nb, vb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(va == vb, "{na} differs after stop and resume on {np} rank(s)");
    }
    std::fs::remove_dir_all(&straight).unwrap();
    std::fs::remove_dir_all(&split).unwrap();
}

#[test]
fn resume_is_bit_exact_on_one_rank() {
    stop_and_resume_matches_unbroken(1);
}

#[test]
fn resume_is_bit_exact_on_two_ranks() {
    stop_and_resume_matches_unbroken(2);
}

#[test]
fn bad_checkpoints_are_refused_and_left_alone() {
    let d = dir("bad");
    let p = d.to_str().unwrap();
    let empty = run(1, &args(p, "4", &["--resume"]));
    assert!(!empty.success && empty.output.contains("no checkpoint at"), "{}", empty.output);

    common::assert_ok(&run(1, &args(p, "4", &[])), "a run to make a checkpoint");
    let other = run(1, &args(p, "8", &["--resume", "--classes", "7"]));
    assert!(
        !other.success
            && other.output.contains("holds small with 10 classes")
            && other.output.contains("this run is small with 7 classes"),
        "{}",
        other.output
    );

    let file = d.join(checkpoint::FILE_NAME);
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let truncated = run(1, &args(p, "8", &["--resume"]));
    assert!(!truncated.success && truncated.output.contains("damaged or not a checkpoint"), "{}", truncated.output);
    assert_eq!(std::fs::read(&file).unwrap().len(), bytes.len() / 2, "a refused checkpoint is not overwritten");

    let two = run(2, &args(p, "8", &["--resume"]));
    assert!(
        !two.success && two.output.contains("damaged or not a checkpoint"),
        "rank 0's failure stops both ranks:\n{}",
        two.output
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// Bytes changed after writing (one flipped in a tensor) are refused by the
/// checksum, and momentum that does not fit the parameters is named.
#[test]
fn flipped_bytes_and_misfit_momentum_are_refused() {
    let d = dir("checksum");
    let p = d.to_str().unwrap();
    common::assert_ok(&run(1, &args(p, "4", &[])), "a run to make a checkpoint");
    let file = d.join(checkpoint::FILE_NAME);
    let good = std::fs::read(&file).unwrap();
    let mut bytes = good.clone();
    let at = bytes.len() - 9;
    bytes[at] ^= 0x10;
    std::fs::write(&file, &bytes).unwrap();
    let flipped = run(1, &args(p, "8", &["--resume"]));
    assert!(!flipped.success && flipped.output.contains("is damaged: its tensors' checksum"), "{}", flipped.output);

    std::fs::write(&file, &good).unwrap();
    let loaded = checkpoint::load(&file).unwrap();
    let mut model: Vec<(String, candle_core::Tensor)> = loaded.model.clone().into_iter().collect();
    model.sort_by(|a, b| a.0.cmp(&b.0));
    // No momentum at all, after 4 steps with momentum 0.9.
    checkpoint::save(&file, &loaded.meta, &model, &[]).unwrap();
    let none = run(1, &args(p, "8", &["--resume"]));
    assert!(!none.success && none.output.contains("the checkpoint lacks momentum/"), "{}", none.output);
    // A buffer of the right size in the wrong shape.
    let mut momentum: Vec<(String, candle_core::Tensor)> = loaded.momentum.clone().into_iter().collect();
    momentum.sort_by(|a, b| a.0.cmp(&b.0));
    let (name, t) = momentum.iter_mut().find(|(_, t)| t.rank() == 4).unwrap();
    *t = t.flatten_all().unwrap();
    let name = name.clone();
    checkpoint::save(&file, &loaded.meta, &model, &momentum).unwrap();
    let misfit = run(1, &args(p, "8", &["--resume"]));
    assert!(!misfit.success && misfit.output.contains(&format!("momentum/{name} has shape")), "{}", misfit.output);
    std::fs::remove_dir_all(&d).unwrap();
}
