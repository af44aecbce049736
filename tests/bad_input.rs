//! Bad input, one case each: a message that names the flag and the value,
//! a non-zero exit, and nothing written.

use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_candle-mpi");

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("candle-mpi-bad-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Runs the binary, expects failure, returns stderr.
fn refused_with_env(args: &[&str], env: &[(&str, &str)]) -> String {
    let o = Command::new(BIN).args(args).envs(env.iter().copied()).output().unwrap();
    assert!(!o.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn refused(args: &[&str]) -> String {
    refused_with_env(args, &[])
}

fn digits() -> String {
    format!("mnist:{}/tests/data/digits", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn unknown_model() {
    let e = refused(&["train", "--model", "lenet"]);
    assert!(e.contains("invalid value 'lenet' for '--model <MODEL>'") && e.contains("alexnet"), "{e}");
}

#[test]
fn zero_or_negative_batch() {
    let e = refused(&["train", "--model", "small", "--batch-size", "0", "--steps", "1"]);
    assert!(e.contains("--batch-size 0"), "{e}");
    let e = refused(&["train", "--model", "small", "--batch-size", "-4", "--steps", "1"]);
    assert!(e.contains("'-4'") || e.contains("--batch-size"), "{e}");
}

#[test]
fn global_batch_not_divisible() {
    // One process: any G divides; the 2-rank case is in train_digits.rs. Bench checks every count up front.
    let e = refused(&[
        "bench",
        "--models",
        "small",
        "--mode",
        "strong",
        "--global-batch",
        "6",
        "--workers",
        "1,4",
        "--out",
        "/tmp/never",
    ]);
    assert!(e.contains("--global-batch 6 does not divide by 4 workers"), "{e}");
}

#[test]
fn image_too_small() {
    let e = refused(&["train", "--model", "resnet50", "--image-size", "16"]);
    assert!(e.contains("--image-size 16"), "{e}");
}

#[test]
fn missing_data_directory() {
    let e = refused(&["train", "--model", "small", "--data", "mnist:/no/such/dir", "--image-size", "8"]);
    assert!(e.contains("--data mnist:/no/such/dir: no such directory"), "{e}");
}

#[test]
fn truncated_idx_file() {
    let dir = scratch("idx");
    std::fs::create_dir_all(&dir).unwrap();
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/digits");
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        if f.file_name().unwrap().to_string_lossy().contains("ubyte") {
            std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
        }
    }
    let images = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("train-images"))
        .unwrap();
    let bytes = std::fs::read(&images).unwrap();
    std::fs::write(&images, &bytes[..bytes.len() / 2]).unwrap();
    let spec = format!("mnist:{}", dir.display());
    let e = refused(&["train", "--model", "small", "--data", &spec, "--image-size", "8"]);
    assert!(e.contains("train-images") && (e.contains("truncated") || e.contains("bytes")), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn truncated_cifar_file() {
    let dir = scratch("cifar");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 1..=5 {
        std::fs::write(dir.join(format!("data_batch_{i}.bin")), vec![0u8; 3073 * 2 + 100]).unwrap();
    }
    let spec = format!("cifar10:{}", dir.display());
    let e = refused(&["train", "--model", "small", "--data", &spec, "--image-size", "8"]);
    assert!(e.contains("data_batch_1.bin") && e.contains("truncated"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn labels_beyond_classes() {
    let e = refused(&["train", "--model", "small", "--data", &digits(), "--image-size", "8", "--classes", "5"]);
    assert!(e.contains("beyond --classes 5"), "{e}");
}

#[test]
fn unwritable_out() {
    let e = refused(&["train", "--model", "small", "--steps", "1", "--out", "/proc/candle-mpi-records"]);
    assert!(e.contains("--out /proc/candle-mpi-records: cannot create the directory"), "{e}");
}

#[test]
fn bench_without_mpirun_on_path() {
    let out = scratch("nompi");
    let e =
        refused_with_env(&["bench", "--models", "small", "--out", out.to_str().unwrap()], &[("PATH", "/nonexistent")]);
    assert!(e.contains("`mpirun` is not on PATH") && e.contains("scripts/setup.sh"), "{e}");
    assert!(!out.exists(), "nothing written");
}

#[test]
fn cuda_on_a_build_without_it() {
    if cfg!(feature = "cuda") {
        return; // a CUDA build trains on its GPU: tests/train_digits.rs holds what it says without one
    }
    let e = refused(&["train", "--model", "small", "--device", "cuda", "--steps", "1"]);
    assert!(e.contains("--device cuda: this build has no GPU support") && e.contains("--features cuda"), "{e}");
}

#[test]
fn launcher_without_its_placeholder() {
    let e = refused(&["bench", "--models", "small", "--launcher", "mpirun -np 4", "--out", "/tmp/never"]);
    assert!(e.contains("--launcher 'mpirun -np 4': needs the placeholder {np}"), "{e}");
}

#[test]
fn fault_spec_that_means_nothing() {
    let e = refused(&["train", "--model", "small", "--fault-inject", "1:2:explode"]);
    assert!(e.contains("'1:2:explode' is not a fault"), "{e}");
}
