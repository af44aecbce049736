//! Values that were once silently changed, ignored or crashed on are refused
//! up front, each with a message naming the flag, the value and what is
//! accepted, a non-zero exit, and nothing written.

use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_candle-mpi");

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("candle-mpi-refuse-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Runs the binary, expects failure without a panic, returns stderr.
fn refused(args: &[&str]) -> String {
    let o = Command::new(BIN).args(args).output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{args:?} should fail");
    assert!(!e.contains("panicked"), "{args:?} panicked: {e}");
    e
}

fn train(extra: &[&str]) -> String {
    let mut a = vec!["train", "--model", "small", "--image-size", "8", "--batch-size", "4"];
    a.extend_from_slice(extra);
    refused(&a)
}

#[test]
fn zero_steps_or_epochs() {
    let e = train(&["--steps", "0"]);
    assert!(e.contains("--steps 0: give 1 or more steps"), "{e}");
    let e = train(&["--epochs", "0"]);
    assert!(e.contains("--epochs 0: give 1 or more epochs"), "{e}");
}

#[test]
fn every_zero_that_meant_never() {
    for flag in ["--val-every", "--checkpoint-every", "--verify-sync"] {
        let mut a = vec![flag, "0", "--steps", "2"];
        if flag == "--checkpoint-every" {
            a.extend(["--checkpoint-dir", "/tmp/candle-mpi-refuse-never"]);
        }
        let e = train(&a);
        assert!(e.contains(&format!("{flag} 0: give 1 or more, or leave the flag out")), "{e}");
    }
}

#[test]
fn a_global_batch_below_one_image_per_rank() {
    let e = refused(&["train", "--model", "small", "--image-size", "8", "--steps", "1", "--global-batch", "0"]);
    assert!(e.contains("--global-batch 0: fewer images than the 1 rank(s) of this run"), "{e}");
}

#[test]
fn warmup_that_leaves_nothing_to_time() {
    let e = train(&["--steps", "3", "--warmup-steps", "3"]);
    assert!(e.contains("--warmup-steps 3: the run has 3 step(s)"), "{e}");
}

#[test]
fn learning_rate_that_is_not_a_number() {
    for lr in ["inf", "NaN"] {
        let e = train(&["--steps", "1", "--lr", lr]);
        assert!(e.contains("--lr") && e.contains("must be a number above 0"), "{e}");
    }
}

#[test]
fn timeouts_and_threads_beyond_reason() {
    let e = train(&["--steps", "1", "--collective-timeout", "1e300"]);
    assert!(e.contains("--collective-timeout 1e300: give seconds from 0 to 86400"), "{e}");
    let e = refused(&["--threads", "100000", "models"]);
    assert!(e.contains("--threads 100000: at most"), "{e}");
}

#[test]
fn unwritable_checkpoint_dir_is_found_at_start() {
    let e = train(&["--steps", "1", "--checkpoint-dir", "/proc/candle-mpi-ckpt"]);
    assert!(e.contains("--checkpoint-dir /proc/candle-mpi-ckpt"), "{e}");
    // A directory where the checkpoint file goes.
    let d = scratch("ckpt-dir");
    std::fs::create_dir_all(d.join("checkpoint.safetensors")).unwrap();
    let e = train(&["--steps", "1", "--checkpoint-dir", d.to_str().unwrap()]);
    assert!(e.contains("is a directory, where the checkpoint file goes"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn idx_images_of_no_pixels() {
    let d = scratch("idx0");
    std::fs::create_dir_all(&d).unwrap();
    // 3 images of 0x0, 3 labels.
    std::fs::write(d.join("train-images-idx3-ubyte"), [0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    std::fs::write(d.join("train-labels-idx1-ubyte"), [0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 0]).unwrap();
    let data = format!("mnist:{}", d.display());
    let e = refused(&["train", "--model", "small", "--data", &data, "--steps", "1"]);
    assert!(e.contains("images of 0x0 pixels"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bench_settings_that_run_nothing_or_twice() {
    let e = refused(&["bench", "--models", "small", "--workers", "1,1", "--out", "/tmp/candle-mpi-never"]);
    assert!(e.contains("--workers [1, 1]: each worker count once"), "{e}");
    let e = refused(&["bench", "--models", "small", "--run-timeout", "0", "--out", "/tmp/candle-mpi-never"]);
    assert!(e.contains("--run-timeout 0: give seconds above 0"), "{e}");
}

#[test]
fn allreduce_size_below_one_element() {
    let e = refused(&["allreduce", "--min-bytes", "1", "--max-bytes", "1"]);
    assert!(e.contains("--min-bytes 1: smaller than one f16 element (2 bytes)"), "{e}");
}

/// A run whose parameters alone cannot fit in the memory the host has left
/// is refused before it allocates its way into the out-of-memory killer.
#[test]
fn a_network_that_cannot_fit_is_refused_at_start() {
    let o = Command::new(BIN)
        .args(["train", "--model", "small", "--image-size", "8", "--steps", "1"])
        .env("CANDLE_MPI_MEM_AVAILABLE_MIB", "0.01")
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{e}");
    assert!(
        e.contains("--model small: each of the 1 rank(s) on this host needs at least") && e.contains("0 MiB available"),
        "{e}"
    );
}

#[test]
fn eval_without_a_validation_split_or_weights() {
    let e = refused(&["eval", "--model", "small", "--init-from", "/no/such.safetensors", "--data", "synthetic"]);
    assert!(e.contains("--data synthetic: has no validation split"), "{e}");
    let digits = format!("mnist:{}/tests/data/digits", env!("CARGO_MANIFEST_DIR"));
    let e = refused(&[
        "eval",
        "--model",
        "small",
        "--classes",
        "10",
        "--image-size",
        "8",
        "--init-from",
        "/no/such.safetensors",
        "--data",
        &digits,
    ]);
    assert!(e.contains("--init-from /no/such.safetensors: cannot read it"), "{e}");
    let e = refused(&["export", "/no/checkpoint.safetensors", "/tmp/candle-mpi-never.safetensors"]);
    assert!(e.contains("CHECKPOINT: cannot read checkpoint /no/checkpoint.safetensors"), "{e}");
    let e = refused(&["export", "/tmp/candle-mpi-never.safetensors"]);
    assert!(e.contains("give a CHECKPOINT to export, or --model"), "{e}");
}

#[test]
fn a_hierarchical_exchange_on_one_host() {
    // A lone process is a world of one host.
    let e = train(&["--transport", "hierarchical", "--steps", "1"]);
    assert!(
        e.contains("--transport hierarchical: needs ranks on 2 or more hosts")
            && e.contains("1 host(s) with [1] rank(s)")
            && e.contains("use auto or messages"),
        "{e}"
    );
}
