//! What the machine is, read off it once per sweep for the report
//! (`record::sweep::MachineInfo`, written as machine.json).

use std::path::Path;
use std::process::Command;

use crate::record::sweep::MachineInfo;

fn first_line_of(program: &str, args: &[&str]) -> Option<String> {
    let o = Command::new(program).args(args).output().ok()?;
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    text.lines().find(|l| !l.trim().is_empty()).map(|l| l.trim().to_string())
}

/// This host: CPU, cores, memory, GPUs (nvidia-smi), MPI, NCCL, NUMA nodes.
pub fn detect() -> MachineInfo {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let gpus = Command::new("nvidia-smi")
        .args(["--query-gpu=name,memory.total", "--format=csv,noheader"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect()
        })
        .unwrap_or_default();
    MachineInfo {
        host: std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string(),
        cpu,
        cores: super::threads::host_cores(),
        memory_gib: mem_kib / 1024.0 / 1024.0,
        gpus,
        mpi: first_line_of("mpirun", &["--version"]).unwrap_or_else(|| "unknown".into()),
        nccl: if super::cuda::GPU_BUILD {
            "linked at run time (libnccl.so.2)".into()
        } else {
            "not in this build (CPU only)".into()
        },
        numa_nodes: super::bind::Topology::read(Path::new("/sys")).nodes.len(),
    }
}
