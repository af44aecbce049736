//! Pinning each rank to its share of the host: the numactl arguments for a
//! local rank, from the host's topology (NUMA nodes and their CPUs, GPUs and
//! their NUMA nodes, read from sysfs). `candle-mpi bind` (and
//! scripts/bind.sh, which calls it) applies them; `bench --bind` uses it.
//!
//! - `core`: rank r of n on a host gets the r-th of n equal slices of the
//!   host's CPUs (in node order), memory allocated locally.
//! - `numa`: a GPU run binds CPUs and memory to the NUMA node of the rank's
//!   GPU (PCI device's numa_node); a CPU run spreads ranks over the nodes,
//!   round robin. On one node this binds every rank to that node.

use std::path::Path;

use super::cpus::{format_cpu_list, parse_cpu_list};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BindMode {
    /// No binding (the launcher's own, if any)
    None,
    /// Rank r gets the r-th equal slice of the host's cores
    Core,
    /// CPUs and memory of the rank's GPU's NUMA node, or ranks spread over nodes
    Numa,
}

/// What binding needs to know of a host.
#[derive(Clone, Debug, PartialEq)]
pub struct Topology {
    /// CPUs of each NUMA node, in node order.
    pub nodes: Vec<Vec<usize>>,
    /// NUMA node of each GPU in PCI bus order (None where the firmware does not say).
    pub gpu_nodes: Vec<Option<usize>>,
}

impl Topology {
    /// Reads the host under `sys` (normally "/sys").
    pub fn read(sys: &Path) -> Topology {
        let mut nodes: Vec<(usize, Vec<usize>)> = std::fs::read_dir(sys.join("devices/system/node"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let id = name.strip_prefix("node")?.parse().ok()?;
                let cpus = parse_cpu_list(&std::fs::read_to_string(e.path().join("cpulist")).ok()?)?;
                Some((id, cpus))
            })
            .filter(|(_, cpus)| !cpus.is_empty())
            .collect();
        nodes.sort();
        let mut nodes: Vec<Vec<usize>> = nodes.into_iter().map(|(_, c)| c).collect();
        if nodes.is_empty() {
            // No NUMA information (some containers): one node of every online CPU.
            let online =
                std::fs::read_to_string(sys.join("devices/system/cpu/online")).ok().and_then(|s| parse_cpu_list(&s));
            nodes.push(online.unwrap_or_else(|| (0..super::threads::host_cores()).collect()));
        }
        // NVIDIA GPUs (vendor 0x10de, display class 0x03xxxx), in bus order as nvidia-smi numbers them.
        let mut gpus: Vec<(String, Option<usize>)> = std::fs::read_dir(sys.join("bus/pci/devices"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let read = |f: &str| std::fs::read_to_string(e.path().join(f)).ok().map(|s| s.trim().to_string());
                let is_gpu = read("vendor")? == "0x10de" && read("class")?.starts_with("0x03");
                is_gpu.then(|| {
                    (e.file_name().to_string_lossy().into_owned(), read("numa_node").and_then(|n| n.parse().ok()))
                })
            })
            .collect();
        gpus.sort();
        Topology { nodes, gpu_nodes: gpus.into_iter().map(|(_, n)| n).collect() }
    }

    fn all_cpus(&self) -> Vec<usize> {
        self.nodes.concat()
    }
}

/// The numactl arguments for `local_rank` of `local_size`, and a sentence
/// saying what they do. `gpu` is the rank's GPU index (in bus order) on GPU runs.
pub fn plan(
    topo: &Topology,
    mode: BindMode,
    local_rank: usize,
    local_size: usize,
    gpu: Option<usize>,
) -> (Vec<String>, String) {
    match mode {
        BindMode::None => (vec![], format!("local rank {local_rank}: not bound")),
        BindMode::Core => {
            let cpus = topo.all_cpus();
            let n = local_size.max(1);
            let slice: Vec<usize> = if n <= cpus.len() {
                let per = cpus.len() / n;
                cpus[local_rank * per..(local_rank + 1) * per].to_vec()
            } else {
                // More ranks than cores (oversubscribed): ranks share cores round robin.
                vec![cpus[local_rank % cpus.len()]]
            };
            let list = format_cpu_list(&slice);
            (
                vec![format!("--physcpubind={list}"), "--localalloc".into()],
                format!("local rank {local_rank} of {n}: cores {list}, memory local"),
            )
        }
        BindMode::Numa => {
            let gpu_node = gpu.and_then(|g| topo.gpu_nodes.get(g).copied().flatten());
            let (node, why) = match (gpu, gpu_node) {
                (Some(g), Some(node)) => (node, format!("the node of GPU {g}")),
                (Some(g), None) => (local_rank % topo.nodes.len(), format!("GPU {g}'s node unknown, round robin")),
                (None, _) => (local_rank % topo.nodes.len(), format!("round robin over {} node(s)", topo.nodes.len())),
            };
            (
                vec![format!("--cpunodebind={node}"), format!("--membind={node}")],
                format!(
                    "local rank {local_rank} of {local_size}: NUMA node {node} ({why}), cores {}",
                    format_cpu_list(&topo.nodes[node])
                ),
            )
        }
    }
}

/// This process's local rank and the ranks on its host, from the launcher's
/// environment (Open MPI, MPICH/Hydra, Slurm); (0, 1) outside a launcher.
pub fn local_rank_and_size() -> (usize, usize) {
    let first = |vars: &[&str]| vars.iter().find_map(|v| std::env::var(v).ok()?.trim().parse::<usize>().ok());
    let rank =
        first(&["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK", "SLURM_LOCALID"]).unwrap_or(0);
    (rank, super::threads::local_processes())
}

/// The GPU a rank on `local_rank` uses, in bus order (`exec_bound` sets
/// CUDA_DEVICE_ORDER=PCI_BUS_ID for the command it runs): CUDA_VISIBLE_DEVICES maps it to a physical
/// index when it lists plain numbers, its only entry where it lists one
/// (the rank's own GPU, as the trainer opens it).
pub fn gpu_of(local_rank: usize) -> usize {
    gpu_in_bus_order(local_rank, std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref())
}

fn gpu_in_bus_order(local_rank: usize, visible: Option<&str>) -> usize {
    let listed: Vec<&str> = visible.map(|v| v.split(',').collect()).unwrap_or_default();
    let entry = if listed.len() == 1 { listed.first() } else { listed.get(local_rank) };
    entry.and_then(|g| g.trim().parse().ok()).unwrap_or(local_rank)
}

/// Replaces this process by `command`, bound by numactl as `mode` says for
/// this rank (unbound, with a warning, where numactl is missing); `cpu`
/// binds as a CPU run even on a host with GPUs. Returns only on failure.
pub fn exec_bound(mode: BindMode, cpu: bool, command: &[String]) -> anyhow::Result<std::convert::Infallible> {
    let topo = Topology::read(Path::new("/sys"));
    let (local_rank, local_size) = local_rank_and_size();
    let gpu = (!cpu && !topo.gpu_nodes.is_empty()).then(|| gpu_of(local_rank));
    let (numactl_args, said) = plan(&topo, mode, local_rank, local_size, gpu);
    let have_numactl = std::process::Command::new("numactl").arg("--show").output().is_ok_and(|o| o.status.success());
    let mut cmd = if numactl_args.is_empty() || !have_numactl {
        if !numactl_args.is_empty() {
            eprintln!("bind: numactl is not installed (scripts/setup.sh installs it); running unbound");
        }
        let mut c = std::process::Command::new(&command[0]);
        c.args(&command[1..]);
        c
    } else {
        eprintln!("bind: {said}: numactl {}", numactl_args.join(" "));
        let mut c = std::process::Command::new("numactl");
        c.args(&numactl_args).args(command);
        c
    };
    if gpu.is_some() {
        // CUDA numbers GPUs fastest first unless told otherwise; the NUMA nodes above are in bus order.
        match std::env::var("CUDA_DEVICE_ORDER") {
            Err(_) => {
                cmd.env("CUDA_DEVICE_ORDER", "PCI_BUS_ID");
            }
            Ok(order) if order != "PCI_BUS_ID" => eprintln!(
                "bind: CUDA_DEVICE_ORDER={order}: CUDA may number the GPUs otherwise than their bus order, \
                 and a rank's NUMA node may not be its GPU's; unset it or set PCI_BUS_ID"
            ),
            Ok(_) => {}
        }
    }
    let err = std::os::unix::process::CommandExt::exec(&mut cmd);
    anyhow::bail!("bind: cannot run `{}`: {err}", command[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A made-up host: 2 NUMA nodes of 16 cores, 8 GPUs, 4 on each node.
    fn two_node_eight_gpu() -> Topology {
        Topology {
            nodes: vec![(0..16).collect(), (16..32).collect()],
            gpu_nodes: vec![Some(0), Some(0), Some(0), Some(0), Some(1), Some(1), Some(1), Some(1)],
        }
    }

    #[test]
    fn a_ranks_gpu_follows_cuda_visible_devices() {
        assert_eq!(gpu_in_bus_order(2, None), 2);
        assert_eq!(gpu_in_bus_order(1, Some("4,5,6")), 5);
        // One GPU a rank (a wrapper's CUDA_VISIBLE_DEVICES=$GPU): that one, whatever the local rank.
        assert_eq!(gpu_in_bus_order(1, Some("6")), 6);
        // UUIDs and MIG names are not bus positions: the local rank stands.
        assert_eq!(gpu_in_bus_order(1, Some("GPU-8f2a,GPU-77c1")), 1);
    }

    #[test]
    fn eight_gpu_ranks_bind_to_their_gpus_nodes() {
        let t = two_node_eight_gpu();
        let args: Vec<Vec<String>> = (0..8).map(|r| plan(&t, BindMode::Numa, r, 8, Some(r)).0).collect();
        assert_eq!(args[0], ["--cpunodebind=0", "--membind=0"]);
        assert_eq!(args[3], ["--cpunodebind=0", "--membind=0"]);
        assert_eq!(args[4], ["--cpunodebind=1", "--membind=1"]);
        assert_eq!(args[7], ["--cpunodebind=1", "--membind=1"]);
        // CUDA_VISIBLE_DEVICES=4,5 puts local ranks 0 and 1 on GPUs 4 and 5: node 1.
        assert_eq!(plan(&t, BindMode::Numa, 0, 2, Some(4)).0, ["--cpunodebind=1", "--membind=1"]);
    }

    #[test]
    fn core_binding_slices_the_host_evenly() {
        let t = two_node_eight_gpu();
        let (args, said) = plan(&t, BindMode::Core, 5, 8, None);
        assert_eq!(args, ["--physcpubind=20-23", "--localalloc"]);
        assert!(said.contains("cores 20-23"), "{said}");
        // CPU runs under numa spread over the nodes.
        assert_eq!(plan(&t, BindMode::Numa, 3, 4, None).0, ["--cpunodebind=1", "--membind=1"]);
        // One node of 2 cores, 4 ranks: cores shared round robin.
        let small = Topology { nodes: vec![vec![0, 1]], gpu_nodes: vec![] };
        assert_eq!(plan(&small, BindMode::Core, 3, 4, None).0[0], "--physcpubind=1");
        assert!(plan(&small, BindMode::None, 0, 1, None).0.is_empty());
    }

    #[test]
    fn reads_a_fake_sysfs() {
        let root = std::env::temp_dir().join(format!("candle-mpi-sysfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (node, cpus) in [(0, "0-1"), (1, "2-3")] {
            let d = root.join(format!("devices/system/node/node{node}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("cpulist"), cpus).unwrap();
        }
        for (bus, vendor, class, node) in [
            ("0000:81:00.0", "0x10de", "0x030200", "1"),
            ("0000:01:00.0", "0x10de", "0x030200", "0"),
            ("0000:02:00.0", "0x8086", "0x020000", "0"),
        ] {
            let d = root.join("bus/pci/devices").join(bus);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("vendor"), vendor).unwrap();
            std::fs::write(d.join("class"), class).unwrap();
            std::fs::write(d.join("numa_node"), node).unwrap();
        }
        let t = Topology::read(&root);
        assert_eq!(t.nodes, vec![vec![0, 1], vec![2, 3]]);
        assert_eq!(t.gpu_nodes, vec![Some(0), Some(1)], "two NVIDIA GPUs in bus order; the NIC is not one");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
