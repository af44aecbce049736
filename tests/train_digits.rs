//! `candle-mpi train` learns the shipped 8x8 digits to at least 90% validation
//! accuracy, alone and on 2 ranks under mpirun; and refuses bad input clearly.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_candle-mpi");

fn digits_args(out: &str) -> Vec<String> {
    let data = format!("mnist:{}/tests/data/digits", env!("CARGO_MANIFEST_DIR"));
    [
        "train",
        "--model",
        "small",
        "--data",
        &data,
        "--image-size",
        "8",
        "--classes",
        "10",
        "--batch-size",
        "16",
        "--epochs",
        "10",
        "--log-every",
        "1000",
        "--out",
        out,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn fresh_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("candle-mpi-train-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn learns_digits_on_one_rank() {
    let out = fresh_dir("1");
    let mut args = digits_args(out.to_str().unwrap());
    args.extend(["--val-every".to_string(), "4".to_string()]);
    let o = Command::new(BIN).args(&args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = summary(&out);
    assert_eq!(s["world_size"], 1);
    assert_eq!(s["skipped_steps"], 0);
    let acc = s["val_top1"].as_f64().unwrap();
    assert!(acc >= 0.90, "validation accuracy {acc}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("validation top-1"));
    let top5 = s["val_top5"].as_f64().unwrap();
    assert!(top5 >= acc && top5 <= 1.0, "top-5 {top5} below top-1 {acc}");
    assert!(s["val_loss"].as_f64().unwrap() < 0.5);
    // --val-every 4 over 10 epochs: after epochs 4, 8 and at the end.
    let epochs: Vec<u64> = s["val_history"].as_array().unwrap().iter().map(|e| e[0].as_u64().unwrap()).collect();
    assert_eq!(epochs, vec![4, 8, 10]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("validation after epoch 4:"));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn learns_digits_on_two_ranks() {
    let out = fresh_dir("2");
    let args = digits_args(out.to_str().unwrap());
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let run = common::mpirun(2, BIN, &args, Duration::from_secs(120));
    common::assert_ok(&run, "train on 2 ranks");
    let s = summary(&out);
    assert_eq!(s["world_size"], 2);
    // 1,438 images, 2 ranks of 16 per step: 44 steps per epoch.
    assert_eq!(s["steps"], 440);
    let csv = std::fs::read_to_string(out.join("steps.csv")).unwrap();
    assert!(csv.starts_with(candle_mpi::record::CSV_HEADER));
    assert_eq!(csv.lines().count(), 1 + 2 * 440, "header and one row per step and rank");
    for r in 0..2 {
        assert_eq!(
            csv.lines().skip(1).filter(|l| l.split(',').nth(1) == Some(&r.to_string())).count(),
            440,
            "rank {r}"
        );
    }
    let acc = s["val_top1"].as_f64().unwrap();
    assert!(acc >= 0.90, "validation accuracy {acc}");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn verify_sync_names_a_rank_that_drifts() {
    let clean =
        ["train", "--model", "small", "--steps", "6", "--batch-size", "8", "--verify-sync", "2", "--log-every", "100"];
    let run = common::mpirun(2, BIN, &clean, Duration::from_secs(120));
    common::assert_ok(&run, "clean run with --verify-sync");

    // The test aid nudges rank 1's weights after step 3; the check after step 4 must stop the job.
    let run = common::mpirun_env(2, BIN, &clean, &[("CANDLE_MPI_FAULT", "1:3:desync")], Duration::from_secs(120));
    assert!(!run.success, "a drifted rank must fail the run:\n{}", run.output);
    assert!(
        run.output.contains("after step 4 rank(s) [1]") && run.output.contains("out of lock-step"),
        "{}",
        run.output
    );
}

#[test]
fn global_batch_is_split_over_the_ranks() {
    let out = fresh_dir("global");
    let args = ["train", "--model", "small", "--steps", "2", "--global-batch", "12", "--out", out.to_str().unwrap()];
    let run = common::mpirun(2, BIN, &args, Duration::from_secs(120));
    common::assert_ok(&run, "global batch 12 on 2 ranks");
    assert_eq!(summary(&out)["batch_per_rank"], 6);
    std::fs::remove_dir_all(&out).unwrap();
    let bad = ["train", "--model", "small", "--steps", "2", "--global-batch", "7"];
    let run = common::mpirun(2, BIN, &bad, Duration::from_secs(120));
    assert!(!run.success && run.output.contains("--global-batch 7 does not divide by the 2 rank(s)"), "{}", run.output);
}

#[test]
fn summary_has_every_field_a_report_reads() {
    let out = fresh_dir("fields");
    let args = [
        "train",
        "--model",
        "small",
        "--steps",
        "5",
        "--batch-size",
        "4",
        "--image-size",
        "8",
        "--grad-dtype",
        "f32",
        "--out",
        out.to_str().unwrap(),
    ];
    let run = common::mpirun(2, BIN, &args, Duration::from_secs(120));
    common::assert_ok(&run, "run with records");
    let s = summary(&out);
    for key in [
        "model",
        "device",
        "world_size",
        "batch_per_rank",
        "global_batch",
        "image_size",
        "grad_dtype",
        "steps",
        "first_step_s",
        "step_s_median",
        "step_s_mean",
        "step_s_std",
        "compute_s",
        "comm_s",
        "wait_s",
        "data_s",
        "images_per_s",
        "s_per_5120_images",
        "peak_rss_mib",
        "skipped_steps",
        "final_loss",
        "param_l2",
        "val_top1",
        "val_top5",
        "checkpoint_s",
    ] {
        assert!(s.get(key).is_some(), "summary.json lacks {key}: {s}");
    }
    assert_eq!(
        (s["device"].as_str(), s["grad_dtype"].as_str(), s["global_batch"].as_u64()),
        (Some("cpu"), Some("f32"), Some(8))
    );
    // The step time is the slowest rank's: from steps.csv, by hand.
    let csv = std::fs::read_to_string(out.join("steps.csv")).unwrap();
    let mut per_step: std::collections::BTreeMap<u64, f64> = Default::default();
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let total: f64 = f[5..9].iter().map(|v| v.parse::<f64>().unwrap()).sum();
        let e = per_step.entry(f[0].parse().unwrap()).or_default();
        *e = e.max(total);
    }
    let mut later: Vec<f64> = per_step.values().skip(1).copied().collect();
    later.sort_by(f64::total_cmp);
    let median = s["step_s_median"].as_f64().unwrap();
    let by_hand = 0.5 * (later[1] + later[2]); // 4 later steps: the mean of the middle two
    assert!((median - by_hand).abs() < 1e-6, "median {median} vs {later:?}");
    let rate = s["images_per_s"].as_f64().unwrap();
    assert!(
        (rate * median - 8.0).abs() < 1e-6 && (s["s_per_5120_images"].as_f64().unwrap() * rate - 5120.0).abs() < 1e-6
    );
    assert!(s["param_l2"].as_f64().unwrap() > 0.0);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!((config["args"]["model"].as_str(), config["world_size"].as_u64()), (Some("small"), Some(2)));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn summary_reports_memory_per_rank() {
    let out = fresh_dir("mem");
    let args = ["train", "--model", "small", "--steps", "2", "--batch-size", "4", "--out", out.to_str().unwrap()];
    let run = common::mpirun(2, BIN, &args, Duration::from_secs(120));
    common::assert_ok(&run, "memory run");
    let s = summary(&out);
    let rss: Vec<f64> = s["peak_rss_mib"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(rss.len(), 2);
    assert!(rss.iter().all(|m| *m > 1.0), "{rss:?}");
    std::fs::remove_dir_all(&out).unwrap();
}

fn refused(args: &[&str]) -> String {
    let o = Command::new(BIN).args(args).output().unwrap();
    assert!(!o.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn bad_input_is_refused_by_name() {
    let e = refused(&["train", "--model", "small", "--data", "mnist:/no/such/dir", "--image-size", "8"]);
    assert!(e.contains("mnist:/no/such/dir") && e.contains("no such directory"), "{e}");
    let e = refused(&["train", "--model", "small", "--data", "imagenet"]);
    assert!(e.contains("'imagenet' is not a data source"), "{e}");
    let digits = format!("mnist:{}/tests/data/digits", env!("CARGO_MANIFEST_DIR"));
    let e = refused(&["train", "--model", "small", "--data", &digits, "--image-size", "8", "--classes", "5"]);
    assert!(e.contains("beyond --classes 5"), "{e}");
    // A CPU build refuses --device cuda; a CUDA build trains on a GPU, or, without
    // one, refuses naming the flag and the missing driver or device.
    let o = Command::new(BIN).args(["train", "--model", "small", "--device", "cuda", "--steps", "1"]).output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    match (cfg!(feature = "cuda"), o.status.success()) {
        (false, ok) => assert!(!ok && e.contains("--device cuda") && e.contains("--features cuda"), "{e}"),
        (true, true) => assert!(String::from_utf8_lossy(&o.stdout).contains("done: 1 steps")),
        (true, false) => assert!(e.contains("--device cuda:") && !e.contains("--features cuda"), "{e}"),
    }
    let e = refused(&["train", "--model", "small", "--batch-size", "4096", "--steps", "1"]);
    assert!(e.contains("--batch-size 4096"), "{e}");
    let e = refused(&["train", "--model", "vgg16", "--image-size", "16"]);
    assert!(e.contains("--image-size 16"), "{e}");

    // Another run's records are never overwritten, unless asked.
    let out = fresh_dir("keep");
    let o = out.to_str().unwrap();
    for name in ["config.json", "steps.csv", "summary.json"] {
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join(name), "keep me").unwrap();
        let e = refused(&["train", "--model", "small", "--steps", "1", "--image-size", "8", "--out", o]);
        assert!(
            e.contains(&format!("--out {o}: holds another run's records ({name})")) && e.contains("--overwrite"),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(out.join(name)).unwrap(), "keep me");
        std::fs::remove_dir_all(&out).unwrap();
    }
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("summary.json"), "old").unwrap();
    let ok = Command::new(BIN)
        .args(["train", "--model", "small", "--steps", "1", "--image-size", "8", "--out", o, "--overwrite"])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(summary(&out)["steps"], 1, "--overwrite replaces the records");
    std::fs::remove_dir_all(&out).unwrap();
}
