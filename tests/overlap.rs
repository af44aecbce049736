//! `train --overlap` against the exchange after backward: every parameter,
//! batch-norm buffer and momentum ends bit for bit the same under mpirun
//! (2 and 3 ranks, shared memory and MPI messages, f16, bf16 and f32 on the
//! wire, networks of 3 to 18 stages), the records say how much of the
//! exchange was hidden, and flags that would undo the overlap are refused.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use candle_mpi::train::checkpoint;

const BIN: &str = env!("CARGO_BIN_EXE_candle-mpi");

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("candle-mpi-overlap-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Every tensor of the final checkpoint (weights, buffers, momentum) as bits, by name.
fn tensors(path: &Path) -> Vec<(String, Vec<u32>)> {
    let c = checkpoint::load(path).unwrap();
    let bits = |t: &candle_core::Tensor| -> Vec<u32> {
        t.to_dtype(candle_core::DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    };
    let mut v: Vec<(String, Vec<u32>)> = c.model.iter().map(|(n, t)| (format!("model/{n}"), bits(t))).collect();
    v.extend(c.momentum.iter().map(|(n, t)| (format!("momentum/{n}"), bits(t))));
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

struct Trained {
    tensors: Vec<(String, Vec<u32>)>,
    summary: serde_json::Value,
    csv: String,
}

/// Trains `steps` steps on `np` ranks, with or without `--overlap`.
fn train(np: usize, model: &str, image: &str, dtype: &str, transport: &str, overlap: bool) -> Trained {
    let tag = format!("{model}-{np}-{dtype}-{transport}-{overlap}");
    let d = dir(&tag);
    let (ckpt, out) = (d.join("ckpt"), d.join("out"));
    let mut args = vec![
        "train",
        "--model",
        model,
        "--image-size",
        image,
        "--classes",
        "10",
        "--dropout",
        "0",
        "--synthetic-size",
        "48",
        "--batch-size",
        "2",
        "--steps",
        "4",
        "--lr",
        "0.01",
        "--seed",
        "5",
        "--grad-dtype",
        dtype,
        "--transport",
        transport,
        // Small buckets: many of them, cut inside tensors, ready at different stages.
        "--bucket-mb",
        "0.05",
        "--threads",
        "1",
        "--log-every",
        "100",
        "--checkpoint-dir",
        ckpt.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    if overlap {
        args.push("--overlap");
    }
    let run = common::mpirun(np, BIN, &args, Duration::from_secs(300));
    common::assert_ok(&run, &tag);
    let trained = Trained {
        tensors: tensors(&ckpt.join(checkpoint::FILE_NAME)),
        summary: serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap(),
        csv: std::fs::read_to_string(out.join("steps.csv")).unwrap(),
    };
    std::fs::remove_dir_all(&d).unwrap();
    trained
}

fn assert_same(a: &Trained, b: &Trained, what: &str) {
    assert_eq!(a.summary["skipped_steps"], 0, "{what}: a skipped step would leave the weights untouched");
    assert_eq!(a.tensors.len(), b.tensors.len(), "{what}");
    for ((na, va), (nb, vb)) in a.tensors.iter().zip(&b.tensors) {
        assert_eq!(na, nb, "{what}");
        assert!(va == vb, "{what}: {na} differs with --overlap");
    }
    assert_eq!(a.summary["final_loss"], b.summary["final_loss"], "{what}");
}

/// The column `name` of every row of steps.csv.
fn column(csv: &str, name: &str) -> Vec<f64> {
    let at = csv.lines().next().unwrap().split(',').position(|c| c == name).unwrap();
    csv.lines().skip(1).map(|l| l.split(',').nth(at).unwrap().parse().unwrap()).collect()
}

#[test]
fn overlap_gives_the_same_bits_on_every_wire_type_and_transport() {
    for (np, dtype, transport) in [
        (2, "f16", "auto"),
        (2, "bf16", "messages"),
        (2, "f32", "auto"),
        (3, "f16", "messages"),
        (3, "bf16", "auto"),
        (3, "f32", "messages"),
    ] {
        let what = format!("small, {np} ranks, {dtype}, {transport}");
        let (after, during) =
            (train(np, "small", "8", dtype, transport, false), train(np, "small", "8", dtype, transport, true));
        assert_same(&after, &during, &what);
        // Overlapped: no barrier, and the step waited for at most the whole exchange.
        let (comm, exchange, wait) =
            (column(&during.csv, "comm_s"), column(&during.csv, "exchange_s"), column(&during.csv, "wait_s"));
        assert!(wait.iter().all(|&w| w == 0.0), "{what}: no barrier with --overlap");
        assert!(exchange.iter().all(|&e| e > 0.0), "{what}: exchange_s recorded");
        assert!(comm.iter().all(|&c| c > 0.0), "{what}: the last bucket is always after backward");
        // After backward: what the step waited for is the whole exchange.
        assert_eq!(column(&after.csv, "comm_s"), column(&after.csv, "exchange_s"), "{what}");
        for key in ["comm_s", "exchange_s"] {
            assert!(during.summary[key].as_f64().is_some(), "{what}: summary.json lacks {key}");
        }
    }
}

#[test]
fn deep_networks_overlapped_give_the_same_bits() {
    // AlexNet: 8 stages, no batch norm; ResNet50: 18 stages, batch norm in every block.
    for (model, image, dtype) in [("alexnet", "32", "f16"), ("resnet50", "32", "bf16")] {
        let what = format!("{model}, 2 ranks, {dtype}");
        let (after, during) =
            (train(2, model, image, dtype, "auto", false), train(2, model, image, dtype, "auto", true));
        assert_same(&after, &during, &what);
    }
}

#[test]
fn flags_that_would_undo_the_overlap_are_refused() {
    let o = std::process::Command::new(BIN)
        .args(["train", "--model", "small", "--steps", "1", "--overlap", "--measure-wait", "true"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("--measure-wait true") && e.contains("--overlap"), "{e}");
}
