//! The performance model against a published table, and `candle-mpi
//! predict` as a user meets it.
//!
//! Theano-MPI on 8 K80 GPUs (shared/design.md): from each row's 1-GPU
//! training time alone, the two K80 presets (PCIe inside a socket, the
//! sockets' link beyond 4 GPUs) predict the exchange and the speed-up at 2,
//! 4 and 8. Both presets are fitted to the AlexNet row, so that row checks
//! the arithmetic and the other four are the test. Target (the issue's, not
//! widened): speed-up within 10% at 8 for every row, and the rows in the
//! published order. VGG16 at batch 16 misses it, and the test says by how
//! much and why: its published training time at 8 GPUs is 23% above an
//! eighth of one GPU's, which no model of the exchange can give.

use std::process::Command;

use candle_mpi::comm::GradDtype;
use candle_mpi::model::ModelKind;
use candle_mpi::study::predict::collective::{Algorithm, Topology};
use candle_mpi::study::predict::inputs::{NetworkProfile, WorkerStep};
use candle_mpi::study::predict::{predict, presets, PredictConfig};
use candle_mpi::study::report::reference::THEANO_MPI_K80;

const BIN: &str = env!("CARGO_BIN_EXE_candle-mpi");

/// (network, per-GPU batch) of each published row, in its order.
const ROWS: [(ModelKind, usize); 5] = [
    (ModelKind::Alexnet, 128),
    (ModelKind::Googlenet, 32),
    (ModelKind::Vgg16, 16),
    (ModelKind::Vgg16, 32),
    (ModelKind::Resnet50, 64),
];

struct Predicted {
    /// Seconds per 5120 images: training, exchange; at 1, 2, 4, 8 GPUs.
    per_5120: [(f64, f64); 4],
    speedup: [f64; 4],
}

fn k80(batch: usize, t1_per_5120: f64, network: &NetworkProfile) -> Predicted {
    let cfg = PredictConfig {
        network: network.clone(),
        worker: WorkerStep::given(t1_per_5120 * batch as f64 / 5120.0, batch, "Theano-MPI's 1-GPU time"),
        grad_dtype: GradDtype::F16,
        // Theano-MPI exchanges after backward, all gradients at once.
        bucket_bytes: usize::MAX / 2,
        overlap: false,
        backward_share: 0.67,
        topology: Topology {
            per_host: 4,
            inside: presets::named("k80-socket", "test").unwrap(),
            between: presets::named("k80-cross-socket", "test").unwrap(),
        },
        algorithm: Algorithm::Ring,
        workers: vec![1, 2, 4, 8],
    };
    let rows = predict(&cfg);
    let per_5120 = |i: usize| {
        let steps = 5120.0 / (rows[i].workers * batch) as f64;
        (steps * rows[i].compute_s, steps * rows[i].comm_s)
    };
    Predicted {
        per_5120: [per_5120(0), per_5120(1), per_5120(2), per_5120(3)],
        speedup: [rows[0].speedup, rows[1].speedup, rows[2].speedup, rows[3].speedup],
    }
}

#[test]
fn theano_mpi_on_8_k80s_from_the_one_gpu_time() {
    let mut predicted_at_8 = vec![];
    let mut published_at_8 = vec![];
    for (i, &(model, batch)) in ROWS.iter().enumerate() {
        let (name, published) = THEANO_MPI_K80[i];
        let network = NetworkProfile::measure(model, 224, 1000).unwrap();
        let t1 = published[0].0 + published[0].1;
        let p = k80(batch, t1, &network);
        let published_speedup: Vec<f64> = published.iter().map(|(a, b)| t1 / (a + b)).collect();
        for (k, n) in [(1, 2), (2, 4), (3, 8)] {
            let off = p.speedup[k] / published_speedup[k] - 1.0;
            eprintln!(
                "{name} at {n}: predicted {:.2}+{:.2} s per 5120 images, speed-up {:.2}; published {:.2}+{:.2}, {:.2} ({:+.1}%)",
                p.per_5120[k].0,
                p.per_5120[k].1,
                p.speedup[k],
                published[k].0,
                published[k].1,
                published_speedup[k],
                100.0 * off
            );
            if name == "VGG16 b16" && n == 8 {
                // The miss, and its cause: the exchange is predicted within 15%, the training time is not ideal.
                assert!(off.abs() > 0.10, "VGG16 b16 now within 10%: update the docs and this test");
                assert!((p.per_5120[k].1 / published[k].1 - 1.0).abs() < 0.15, "VGG16 b16's exchange at 8");
                assert!(published[k].0 > 1.2 * published[0].0 / 8.0, "the published training time at 8");
            } else {
                assert!(
                    off.abs() <= 0.10,
                    "{name} at {n} GPUs: predicted speed-up {:.2} vs published {:.2}",
                    p.speedup[k],
                    published_speedup[k]
                );
            }
        }
        predicted_at_8.push((name, p.speedup[3]));
        published_at_8.push((name, published_speedup[3]));
    }
    fn order(mut v: Vec<(&'static str, f64)>) -> Vec<&'static str> {
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v.into_iter().map(|(n, _)| n).collect()
    }
    assert_eq!(order(predicted_at_8), order(published_at_8), "rows ordered by speed-up at 8");
}

#[test]
fn overlap_hides_the_exchange_behind_backward_and_never_costs() {
    let network = NetworkProfile::measure(ModelKind::Resnet50, 64, 10).unwrap();
    let base = PredictConfig {
        network,
        worker: WorkerStep::given(2.0, 16, "test"),
        grad_dtype: GradDtype::F16,
        bucket_bytes: 25 << 20,
        overlap: false,
        backward_share: 0.67,
        topology: Topology {
            per_host: 1,
            inside: presets::named("1gbe", "test").unwrap(),
            between: presets::named("1gbe", "test").unwrap(),
        },
        algorithm: Algorithm::Ring,
        workers: vec![1, 2, 8, 64],
    };
    let after = predict(&base);
    let during = predict(&PredictConfig { overlap: true, ..base.clone() });
    assert_eq!(after[0].speedup, 1.0);
    for (a, d) in after.iter().zip(&during).skip(1) {
        assert!(d.comm_s < a.comm_s, "{} workers: overlap hid nothing", a.workers);
        assert!(d.step_s <= a.step_s + 1e-12);
        // The whole exchange is the same work either way (the bucket plans differ a little).
        assert!((d.exchange_s / a.exchange_s - 1.0).abs() < 0.05, "{} vs {}", d.exchange_s, a.exchange_s);
        assert!((a.comm_s - a.exchange_s).abs() < 1e-12, "after backward, all of it is waited for");
    }
    // Past its ceiling the ring's time grows by 2(p-1)/p: speed-up keeps rising, efficiency falls.
    assert!(after[3].speedup > after[2].speedup && after[3].efficiency < after[2].efficiency);
}

fn predict_cli(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(BIN).arg("predict").args(args).output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn predict_prints_its_inputs_and_a_row_per_worker_count() {
    let (ok, out, err) = predict_cli(&[
        "--model",
        "small",
        "--image-size",
        "32",
        "--classes",
        "10",
        "--batch-size",
        "16",
        "--step-time",
        "0.05",
        "--inside",
        "nvlink-h100",
        "--link",
        "ib-ndr",
        "--gpus-per-host",
        "8",
        "--workers",
        "1,8,1024",
    ]);
    assert!(ok, "{err}");
    for want in ["inputs:", "--step-time 0.05", "nvlink-h100", "ib-ndr", "InfiniBand NDR", "| 1024 | 128 |"] {
        assert!(out.contains(want), "{want} missing:\n{out}");
    }
    let (ok, out, _) = predict_cli(&["--list-links"]);
    assert!(ok && out.contains("k80-socket") && out.contains("PCI-SIG"), "{out}");
}

#[test]
fn bad_predictions_are_refused_naming_the_flag() {
    let base = ["--model", "small", "--image-size", "32", "--classes", "10", "--batch-size", "16"];
    for (extra, want) in [
        (vec!["--link", "ib-ndr"], "one worker's step is missing"),
        (vec!["--step-time", "0.1"], "the link between hosts is missing"),
        (vec!["--step-time", "0.1", "--link", "token-ring"], "--link token-ring: no such interconnect"),
        (vec!["--step-time=-1", "--link", "ib-ndr"], "--step-time -1"),
        (vec!["--step-time", "0.1", "--link", "ib-ndr", "--backward-share", "2"], "--backward-share 2"),
        (vec!["--step-time", "0.1", "--link", "ib-ndr", "--gpus-per-host", "0"], "--gpus-per-host 0"),
        (vec!["--from", "/nonexistent", "--link", "ib-ndr"], "--from /nonexistent"),
        (vec!["--step-time", "0.1", "--link-from", "/nonexistent.json"], "--link-from /nonexistent.json"),
    ] {
        let mut args: Vec<&str> = base.to_vec();
        args.extend(extra.iter());
        let (ok, _, err) = predict_cli(&args);
        assert!(!ok && err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn a_link_is_fitted_from_an_allreduce_record() {
    let dir = std::env::temp_dir().join(format!("candle-mpi-predict-fit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // 4 ranks, 20 us + bytes / 2 GB/s algbw: the ring's link is 2 x 3/4 = 1.5x faster, 20/6 us a message.
    let rows: Vec<serde_json::Value> = [1usize << 20, 4 << 20, 16 << 20]
        .iter()
        .map(|&b| serde_json::json!({"bytes": b, "time_us": 20.0 + b as f64 / 2e9 * 1e6, "ranks": 4}))
        .collect();
    let path = dir.join("ar.json");
    std::fs::write(&path, serde_json::to_string(&rows).unwrap()).unwrap();
    let link = candle_mpi::study::predict::inputs::fit_link(&path, "--link-from").unwrap();
    assert!((link.bandwidth / 3e9 - 1.0).abs() < 1e-9, "{link:?}");
    assert!((link.alpha_s * 1e6 - 20.0 / 6.0).abs() < 1e-6, "{link:?}");
    std::fs::write(&path, "[{\"bytes\": 1, \"time_us\": 2, \"ranks\": 4}]").unwrap();
    let e = candle_mpi::study::predict::inputs::fit_link(&path, "--link-from").unwrap_err().to_string();
    assert!(e.contains("at least two sizes"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
