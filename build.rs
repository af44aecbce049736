//! With feature `cuda`, compiles kernels/*.cu to PTX in OUT_DIR with nvcc;
//! the binary embeds the PTX and the driver JIT-compiles it for the GPU it
//! finds, so the kernels run on any GPU of the target compute capability or
//! newer. The target is CUDA_COMPUTE_CAP, else the first GPU nvidia-smi
//! reports (as candle-kernels finds it), else 75, and never below 75, the
//! oldest CUDA 13's nvcc accepts. candle's own kernels (candle-kernels) take
//! the same CUDA_COMPUTE_CAP but make 90 into sm_90a, whose PTX loads on
//! compute capability 9.0 only: a build for a Hopper GPU runs on Hopper
//! alone. Without the feature nothing happens: the CPU build needs no CUDA.

use std::path::PathBuf;
use std::process::Command;

const KERNELS: [&str; 3] = ["pool", "pack", "conv"];
/// The oldest compute capability CUDA 13's nvcc compiles for.
const OLDEST_CAP: u32 = 75;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    for k in KERNELS {
        println!("cargo:rerun-if-changed=kernels/{k}.cu");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cap = compute_cap();
    for k in KERNELS {
        let ptx = out.join(format!("{k}.ptx"));
        let status = Command::new("nvcc")
            .args(["--ptx", &format!("-arch=compute_{cap}"), "-O3", "--fmad=false", "-o"])
            .arg(&ptx)
            .arg(format!("kernels/{k}.cu"))
            .status()
            .unwrap_or_else(|e| panic!("feature cuda: cannot run nvcc ({e}); put the CUDA toolkit's bin/ on PATH (scripts/setup-cuda-toolkit.sh)"));
        assert!(status.success(), "nvcc failed on kernels/{k}.cu");
    }
}

/// "8.6", "86", "90a" -> 86, 90; None where it is no capability.
fn parse_cap(text: &str) -> Option<u32> {
    let digits = text.trim().trim_end_matches(['a', 'f']).replace('.', "");
    digits.parse().ok().filter(|&c| (10..1000).contains(&c))
}

/// The target compute capability: CUDA_COMPUTE_CAP, else the first GPU's, else the oldest.
fn compute_cap() -> u32 {
    let (cap, from) = match std::env::var("CUDA_COMPUTE_CAP") {
        Ok(text) => {
            let cap = parse_cap(&text).unwrap_or_else(|| {
                panic!("CUDA_COMPUTE_CAP={text}: not a compute capability (accepted: 75, 8.6, 90a ...)")
            });
            (cap, "CUDA_COMPUTE_CAP")
        }
        Err(_) => match nvidia_smi_cap() {
            Some(cap) => (cap, "nvidia-smi"),
            None => (OLDEST_CAP, "no CUDA_COMPUTE_CAP and no GPU found"),
        },
    };
    if cap < OLDEST_CAP {
        println!("cargo:warning=compute capability {cap} (from {from}) is older than CUDA 13 compiles for; building for {OLDEST_CAP}");
        return OLDEST_CAP;
    }
    cap
}

fn nvidia_smi_cap() -> Option<u32> {
    let out = Command::new("nvidia-smi").args(["--query-gpu=compute_cap", "--format=csv,noheader"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).lines().next().and_then(parse_cap)
}
