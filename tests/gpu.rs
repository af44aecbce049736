//! The GPU suite (`cargo test --release --features cuda`): each test needs a
//! CUDA device; without one it prints "skipped: no CUDA device" and passes.
//! With one it really runs: the pooling kernels against the CPU op (bit for
//! bit), the NCCL all-reduce on one GPU and under mpirun on every GPU, and a
//! training step of each network on the GPU.
#![cfg(feature = "cuda")]

mod common;

use std::process::Command;
use std::time::Duration;

use candle_core::{Device, Tensor};
use candle_mpi::ops::pool::{avg_pool2d, max_pool2d, Pool2d};

const BIN: &str = env!("CARGO_BIN_EXE_candle-mpi");

fn gpus() -> usize {
    cudarc::driver::CudaContext::device_count().map(|n| n as usize).unwrap_or(0)
}

macro_rules! need_gpu {
    () => {
        if gpus() == 0 {
            eprintln!("skipped: no CUDA device");
            return;
        }
    };
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_device(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

#[test]
fn pooling_kernels_match_the_cpu_op_bit_for_bit() {
    need_gpu!();
    let gpu = Device::new_cuda(0).unwrap();
    // Integers from a small set make ties, as ReLU outputs do.
    let values: Vec<f32> = (0..2 * 3 * 13 * 11).map(|i| ((i * 7 / 5) % 4) as f32).collect();
    let x = Tensor::from_vec(values, (2, 3, 13, 11), &Device::Cpu).unwrap();
    for p in [Pool2d::new(3, 2), Pool2d::new(3, 2).padding(1), Pool2d::new(2, 2).ceil(), Pool2d::new(3, 1).padding(1)] {
        for max in [true, false] {
            let run = |dev: &Device| {
                let v = candle_core::Var::from_tensor(&x.to_device(dev).unwrap()).unwrap();
                let y = if max { max_pool2d(v.as_tensor(), p) } else { avg_pool2d(v.as_tensor(), p) }.unwrap();
                let w = Tensor::arange(0f32, y.elem_count() as f32, dev).unwrap().reshape(y.shape()).unwrap();
                let g = (y.clone() * w).unwrap().sum_all().unwrap().backward().unwrap();
                (bits(&y), bits(g.get(v.as_tensor()).unwrap()))
            };
            assert_eq!(run(&Device::Cpu), run(&gpu), "{p:?} max={max}: GPU and CPU differ");
        }
    }
}

#[test]
fn nccl_allreduce_on_one_gpu_and_on_all() {
    need_gpu!();
    let o = Command::new(BIN)
        .args(["allreduce", "--backend", "nccl", "--check", "--min-bytes", "1K", "--max-bytes", "16M", "--iters", "5"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("# Out of bounds values : 0"),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let n = gpus();
    let run = common::mpirun(
        n,
        BIN,
        &["allreduce", "--backend", "nccl", "--check", "--max-bytes", "64M"],
        Duration::from_secs(300),
    );
    common::assert_ok(&run, &format!("NCCL all-reduce on {n} GPU(s)"));
    assert!(run.output.contains("# Out of bounds values : 0"), "{}", run.output);
    eprintln!("{}", run.output);
}

#[test]
fn every_network_trains_a_step_on_the_gpu() {
    need_gpu!();
    for model in ["alexnet", "vgg16", "resnet50", "googlenet"] {
        let o = Command::new(BIN)
            .args([
                "train",
                "--model",
                model,
                "--device",
                "cuda",
                "--image-size",
                "64",
                "--batch-size",
                "8",
                "--steps",
                "3",
                "--log-every",
                "1",
            ])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{model}: {out}{}", String::from_utf8_lossy(&o.stderr));
        assert!(out.contains("done: 3 steps"), "{model}: {out}");
        eprintln!("{model}: {}", out.lines().find(|l| l.starts_with("done:")).unwrap_or(""));
    }
}

#[test]
fn a_gpu_run_ends_where_the_cpu_run_ends() {
    need_gpu!();
    // The device exchange (pack kernel, NCCL, unpack kernel) against the host one.
    let l2 = |device: &str, lr: &str| -> f64 {
        let out = std::env::temp_dir().join(format!("candle-mpi-gpu-vs-cpu-{device}-{lr}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let o = Command::new(BIN)
            .args([
                "train",
                "--model",
                "alexnet",
                "--device",
                device,
                "--image-size",
                "32",
                "--dropout",
                "0",
                "--batch-size",
                "8",
                "--steps",
                "5",
            ])
            .args(["--lr", lr, "--grad-dtype", "f16", "--out", out.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{device}: {}", String::from_utf8_lossy(&o.stderr));
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
        std::fs::remove_dir_all(&out).unwrap();
        s["param_l2"].as_f64().unwrap()
    };
    // How far 5 steps move the norm on the CPU, and how far the GPU run ends from it.
    let (start, cpu, gpu) = (l2("cpu", "1e-30"), l2("cpu", "0.01"), l2("cuda", "0.01"));
    eprintln!("param_l2: start {start}, after 5 steps cpu {cpu}, cuda {gpu}");
    assert!((cpu - start).abs() > 1e-9 * start, "the steps must move the parameters");
    assert!(
        (gpu - cpu).abs() < 0.01 * (cpu - start).abs(),
        "GPU run off by more than 1% of the update: start {start}, cpu {cpu}, cuda {gpu}"
    );
}
