//! `candle-mpi allreduce` as a user runs it, under mpirun.

mod common;

use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_candle-mpi");
const TIMEOUT: Duration = Duration::from_secs(120);

fn temp_json(tag: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("candle-mpi-allreduce-{tag}-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

fn sweep(np: usize, dtype: &str, extra: &[&str]) -> (common::Run, Vec<serde_json::Value>) {
    let json = temp_json(&format!("{np}-{dtype}"));
    let mut args = vec![
        "allreduce",
        "--min-bytes",
        "1K",
        "--max-bytes",
        "256K",
        "--factor",
        "4",
        "--dtype",
        dtype,
        "--iters",
        "3",
        "--warmup",
        "1",
        "--check",
        "--json",
        json.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let run = common::mpirun(np, BIN, &args, TIMEOUT);
    common::assert_ok(&run, &format!("allreduce -np {np} --dtype {dtype}"));
    let rows: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    std::fs::remove_file(&json).unwrap();
    (run, rows)
}

fn check_rows(rows: &[serde_json::Value], np: usize, elem_bytes: u64) {
    assert_eq!(rows.len(), 5, "1K, 4K, 16K, 64K, 256K");
    for r in rows {
        assert_eq!(r["wrong"], 0, "{r}");
        assert_eq!(r["ranks"], np as u64);
        assert_eq!(r["count"].as_u64().unwrap() * elem_bytes, r["bytes"].as_u64().unwrap());
        let (alg, bus, t) =
            (r["algbw_gbs"].as_f64().unwrap(), r["busbw_gbs"].as_f64().unwrap(), r["time_us"].as_f64().unwrap());
        assert!(t > 0.0);
        assert!((alg - r["bytes"].as_f64().unwrap() / (t * 1e-6) / 1e9).abs() < 1e-6 * alg.max(1.0));
        assert!((bus - alg * 2.0 * (np as f64 - 1.0) / np as f64).abs() < 1e-9 * bus.max(1.0));
    }
}

#[test]
fn f16_on_2_ranks_checks_and_reports_bandwidth() {
    let (run, rows) = sweep(2, "f16", &["--baseline"]);
    check_rows(&rows, 2, 2);
    for r in &rows {
        assert!(
            r["exchange_us"].as_f64().unwrap() > 0.0
                && r["mpi_f32_us"].as_f64().unwrap() > 0.0
                && r["memcpy_us"].as_f64().is_some()
        );
    }
    assert!(
        run.output.contains("busbw") && run.output.contains("Avg bus bandwidth") && run.output.contains("exch/f32"),
        "{}",
        run.output
    );
}

#[test]
fn bf16_and_f32_on_3_ranks() {
    let (run, rows) = sweep(3, "bf16", &[]);
    check_rows(&rows, 3, 2);
    assert!(run.output.contains("oversubscribed") || common::host_cores() >= 3, "{}", run.output);
    let (_, rows) = sweep(3, "f32", &[]);
    check_rows(&rows, 3, 4);
}

#[test]
fn refuses_nccl_without_cuda_and_bad_sizes() {
    // A CPU build refuses NCCL; a CUDA build runs it on a GPU, or, without one,
    // refuses naming the device it could not open.
    let o =
        std::process::Command::new(BIN).args(["allreduce", "--backend", "nccl", "--max-bytes", "4K"]).output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    match (cfg!(feature = "cuda"), o.status.success()) {
        (false, ok) => assert!(!ok && e.contains("--backend nccl") && e.contains("--backend mpi"), "{e}"),
        (true, true) => assert!(String::from_utf8_lossy(&o.stdout).contains("NCCL, device buffers")),
        (true, false) => assert!(e.contains("--device cuda:"), "{e}"),
    }
    let o =
        std::process::Command::new(BIN).args(["allreduce", "--min-bytes", "1M", "--max-bytes", "1K"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--max-bytes 1024 is below --min-bytes 1048576"));
    let o = std::process::Command::new(BIN).args(["allreduce", "--min-bytes", "12Q"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("'12Q' is not a size"));
}

#[test]
fn json_output_is_never_overwritten() {
    let json = temp_json("exists");
    std::fs::write(&json, "keep me").unwrap();
    let o = std::process::Command::new(BIN)
        .args(["allreduce", "--max-bytes", "4K", "--json", json.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("exists"));
    assert_eq!(std::fs::read_to_string(&json).unwrap(), "keep me");
    std::fs::remove_file(&json).unwrap();
}

/// A size that is not a whole number of elements is labelled with the bytes
/// reduced (1025 bytes of f16 are 512 elements: 1024 bytes), not the size asked.
#[test]
fn odd_sizes_are_labelled_with_the_bytes_reduced() {
    let json = temp_json("odd");
    let args =
        ["allreduce", "--min-bytes", "1025", "--max-bytes", "1025", "--iters", "2", "--json", json.to_str().unwrap()];
    let run = common::mpirun(2, BIN, &args, TIMEOUT);
    common::assert_ok(&run, "allreduce of 1025 bytes");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!((rows[0]["bytes"].as_u64(), rows[0]["count"].as_u64()), (Some(1024), Some(512)), "{rows:?}");
    std::fs::remove_file(&json).unwrap();
}
