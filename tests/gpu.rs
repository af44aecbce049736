//! The GPU suite (`cargo test --release --features cuda`): each test needs
//! CUDA devices; where the driver shows fewer, it prints "skipped: needs N
//! CUDA device(s), M visible" and passes. With them it really runs: the
//! pooling kernels against the CPU op (bit for bit), the convolution on the
//! GPU against the CPU op and candle's conv2d, the NCCL all-reduce, a
//! training step of each network on the GPU (finite loss, no step skipped),
//! and short runs with each gradient type that must end where the CPU run
//! ends.
//!
//! A CUDA build links the CUDA driver and NCCL dynamically (cudarc's
//! dynamic-linking): on a host without libcuda.so.1 or libnccl.so.2 this
//! binary, like `candle-mpi` itself, does not load at all, and the loader's
//! "cannot open shared object file" is all it prints. `scripts/gpu-check.sh
//! run` looks for the driver first and says "no CUDA driver" instead.
#![cfg(feature = "cuda")]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::LazyLock;
use std::time::Duration;

use candle_core::{Device, Tensor};
use candle_mpi::ops::conv::{conv2d_gemm, conv2d_gemm_relu, Geometry};
use candle_mpi::ops::pool::{avg_pool2d, max_pool2d, Pool2d};

/// The binary under test: cargo's, or CANDLE_MPI_BIN where this suite runs
/// away from its build (scripts/gpu-check.sh carries both to a GPU host).
static BIN: LazyLock<String> =
    LazyLock::new(|| std::env::var("CANDLE_MPI_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_candle-mpi").into()));

fn gpus() -> usize {
    cudarc::driver::CudaContext::device_count().map(|n| n as usize).unwrap_or(0)
}

macro_rules! need_gpus {
    ($n:expr) => {
        let (need, have) = ($n, gpus());
        if have < need {
            eprintln!("skipped: needs {need} CUDA device(s), {have} visible");
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

/// A fresh folder for one run's records.
fn out_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("candle-mpi-gpu-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// `train ARGS --out DIR` on one process; its summary.json.
fn train(tag: &str, args: &[&str]) -> serde_json::Value {
    let dir = out_dir(tag);
    let o = Command::new(&*BIN).arg("train").args(args).arg("--out").arg(&dir).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{tag}: {}{err}", String::from_utf8_lossy(&o.stdout));
    let s = serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    s
}

/// A run that really trained: every step applied, a finite loss.
fn assert_trained(tag: &str, s: &serde_json::Value) {
    assert_eq!(s["skipped_steps"].as_u64(), Some(0), "{tag}: steps were skipped: {s}");
    let loss = s["final_loss"].as_f64().unwrap_or(f64::NAN);
    assert!(loss.is_finite() && loss > 0.0, "{tag}: final loss {loss}");
}

#[test]
fn pooling_kernels_match_the_cpu_op_bit_for_bit() {
    need_gpus!(1);
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

/// Values in [-1, 1) from a seed, the same on every device.
fn pseudo(len: usize, seed: usize) -> Vec<f32> {
    (0..len).map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0) - 1.0).collect()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_device(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(a.len() == b.len() && worst <= 1e-3 * scale, "{what}: differs by {worst} (largest value {scale})");
}

/// Our convolution on the GPU (im2col / col2im kernels, cuBLAS GEMMs)
/// gives the CPU op's output and gradients and candle's conv2d's, with
/// bias, fused ReLU, strides and padding; and the time of a VGG16 layer's
/// forward and backward beside candle's conv2d's, printed.
#[test]
fn convolution_on_the_gpu_matches_the_cpu_op_and_candle() {
    need_gpus!(1);
    let gpu = Device::new_cuda(0).unwrap();
    let cases = [(4, 3, 33, 16, 3, 1, 1), (3, 8, 17, 12, 3, 2, 1), (2, 16, 9, 32, 1, 1, 0), (2, 3, 23, 8, 11, 4, 2)];
    for (case, &(n, c, hw, oc, k, stride, padding)) in cases.iter().enumerate() {
        let g = Geometry { kernel: k, stride, padding };
        let x = Tensor::from_vec(pseudo(n * c * hw * hw, case), (n, c, hw, hw), &Device::Cpu).unwrap();
        let w = Tensor::from_vec(pseudo(oc * c * k * k, case + 10), (oc, c, k, k), &Device::Cpu).unwrap();
        let b = Tensor::from_vec(pseudo(oc, case + 20), oc, &Device::Cpu).unwrap();
        for relu in [false, true] {
            let run = |dev: &Device, candle: bool| {
                let vars: Vec<_> = [&x, &w, &b]
                    .iter()
                    .map(|t| candle_core::Var::from_tensor(&t.to_device(dev).unwrap()).unwrap())
                    .collect();
                let (xv, wv, bv) = (vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor());
                let y = if candle {
                    let y = xv
                        .conv2d(wv, padding, stride, 1, 1)
                        .unwrap()
                        .broadcast_add(&bv.reshape((1, oc, 1, 1)).unwrap())
                        .unwrap();
                    if relu {
                        y.relu().unwrap()
                    } else {
                        y
                    }
                } else if relu {
                    conv2d_gemm_relu(xv, wv, Some(bv), g).unwrap()
                } else {
                    conv2d_gemm(xv, wv, Some(bv), g).unwrap()
                };
                let r = Tensor::from_vec(pseudo(y.elem_count(), case + 30), y.shape(), dev).unwrap();
                let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let mut out = vec![values(&y)];
                out.extend([xv, wv, bv].iter().map(|v| values(grads.get(v).unwrap())));
                out
            };
            let ours = run(&gpu, false);
            for (reference, name) in [(run(&Device::Cpu, false), "the CPU op"), (run(&gpu, true), "candle's conv2d")] {
                for (i, part) in ["y", "dx", "dw", "db"].iter().enumerate() {
                    assert_close(&ours[i], &reference[i], &format!("case {case} relu {relu}: {part} against {name}"));
                }
            }
        }
    }
    // A VGG16 layer at 56 px, batch 16: ours and candle's conv2d, forward and backward.
    let x = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (16, 128, 56, 56), &gpu).unwrap()).unwrap();
    let w = candle_core::Var::from_tensor(&Tensor::randn(0f32, 0.05, (256, 128, 3, 3), &gpu).unwrap()).unwrap();
    let g = Geometry { kernel: 3, stride: 1, padding: 1 };
    for candle in [false, true, false, true] {
        let start = std::time::Instant::now();
        for _ in 0..5 {
            let y = if candle { x.conv2d(&w, 1, 1, 1, 1).unwrap() } else { conv2d_gemm(&x, &w, None, g).unwrap() };
            let grads = y.sum_all().unwrap().backward().unwrap();
            let _ = values(&grads.get(&w).unwrap().sum_all().unwrap());
        }
        let name = if candle { "candle's conv2d" } else { "ours" };
        eprintln!(
            "VGG16 layer 128->256 at 56 px, batch 16, forward + backward: {name} {:.1} ms",
            start.elapsed().as_secs_f64() * 200.0
        );
    }
}

/// A world of one: NCCL's "sum" is a copy, so this checks the device
/// buffers, the communicator's start and the table, not the arithmetic.
#[test]
fn nccl_allreduce_in_a_world_of_one_copies_the_buffer() {
    need_gpus!(1);
    let o = Command::new(&*BIN)
        .args(["allreduce", "--backend", "nccl", "--check", "--min-bytes", "1K", "--max-bytes", "16M", "--iters", "5"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("# Out of bounds values : 0"),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The sum itself needs two GPUs or more: one rank per GPU under mpirun,
/// the all-reduce checked against the exact sums, then two training steps
/// whose exchange goes through NCCL.
#[test]
fn nccl_sums_over_every_gpu() {
    need_gpus!(2);
    let n = gpus();
    let run = common::mpirun(
        n,
        &BIN,
        &["allreduce", "--backend", "nccl", "--check", "--max-bytes", "64M"],
        Duration::from_secs(300),
    );
    common::assert_ok(&run, &format!("NCCL all-reduce on {n} GPUs"));
    assert!(run.output.contains("# Out of bounds values : 0"), "{}", run.output);
    let dir = out_dir("mpirun-train");
    let dir_arg = dir.to_str().unwrap();
    let args =
        ["train", "--model", "alexnet", "--device", "cuda", "--image-size", "64", "--steps", "2", "--out", dir_arg];
    let run = common::mpirun(n, &BIN, &args, Duration::from_secs(300));
    common::assert_ok(&run, &format!("training on {n} GPUs"));
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_trained("alexnet on every GPU", &s);
    assert_eq!(s["world_size"].as_u64(), Some(n as u64));
}

#[test]
fn every_network_trains_a_step_on_the_gpu() {
    need_gpus!(1);
    for model in ["alexnet", "vgg16", "resnet50", "googlenet"] {
        let s = train(
            model,
            &["--model", model, "--device", "cuda", "--image-size", "64", "--batch-size", "8", "--steps", "3"],
        );
        assert_trained(model, &s);
        eprintln!("{model}: {:.1} images/s, {} MiB of tensors", s["images_per_s"], s["gpu_tensor_peak_mib"]);
    }
}

#[test]
fn a_gpu_run_ends_where_the_cpu_run_ends_with_every_gradient_type() {
    need_gpus!(1);
    // The device exchange (pack kernel, NCCL, unpack kernel) against the host one.
    for dtype in ["f16", "bf16", "f32"] {
        let run = |device: &str, lr: &str| {
            let tag = format!("{device}-{lr}-{dtype}");
            let args = ["--model", "alexnet", "--device", device, "--image-size", "32", "--dropout", "0"];
            let s = train(
                &tag,
                &[&args[..], &["--batch-size", "8", "--steps", "5", "--lr", lr, "--grad-dtype", dtype]].concat(),
            );
            assert_trained(&tag, &s);
            s["param_l2"].as_f64().unwrap()
        };
        // How far 5 steps move the norm on the CPU, and how far the GPU run ends from it.
        let (start, cpu, gpu) = (run("cpu", "1e-30"), run("cpu", "0.01"), run("cuda", "0.01"));
        eprintln!("{dtype}: param_l2 start {start}, after 5 steps cpu {cpu}, cuda {gpu}");
        assert!((cpu - start).abs() > 1e-9 * start, "{dtype}: the steps must move the parameters");
        assert!(
            (gpu - cpu).abs() < 0.01 * (cpu - start).abs(),
            "{dtype}: GPU run off by more than 1% of the update: start {start}, cpu {cpu}, cuda {gpu}"
        );
    }
}

#[test]
fn overlapped_on_the_gpu_ends_where_the_exchange_after_backward_ends() {
    need_gpus!(1);
    // NCCL on its own stream, buckets queued as backward finishes their stages:
    // the same training within 1% of its update, and the overlap recorded.
    let run = |lr: &str, overlap: bool| {
        let tag = format!("overlap-{lr}-{overlap}");
        let mut args = vec![
            "--model",
            "resnet50",
            "--device",
            "cuda",
            "--image-size",
            "64",
            "--batch-size",
            "8",
            "--steps",
            "5",
            "--lr",
            lr,
            "--bucket-mb",
            "1",
        ];
        if overlap {
            args.push("--overlap");
        }
        let s = train(&tag, &args);
        assert_trained(&tag, &s);
        s
    };
    let (start, after, during) = (run("1e-30", false), run("0.01", false), run("0.01", true));
    let l2 = |s: &serde_json::Value| s["param_l2"].as_f64().unwrap();
    let (start, after, during) = (l2(&start), l2(&after), l2(&during));
    eprintln!("overlap on the GPU: param_l2 start {start}, after backward {after}, overlapped {during}");
    assert!((after - start).abs() > 1e-9 * start, "the steps must move the parameters");
    assert!((during - after).abs() < 0.01 * (after - start).abs(), "overlapped run off by more than 1% of the update");
}
