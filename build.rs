//! With feature `cuda`, compiles kernels/*.cu to PTX in OUT_DIR with nvcc;
//! the binary embeds the PTX and the driver JIT-compiles it for the GPU it
//! finds (so one build runs on any GPU of CUDA_COMPUTE_CAP or newer). Without
//! the feature, nothing happens: the CPU build needs no CUDA at all.

use std::path::PathBuf;
use std::process::Command;

const KERNELS: [&str; 2] = ["pool", "pack"];

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
    // 70 (Volta) by default: its PTX runs, JIT-compiled, on every later GPU.
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "70".to_string());
    let cap = cap.trim().trim_end_matches(['a', 'f']).replace('.', "");
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
