//! Named interconnects, each with where its figures come from. Bandwidths
//! are per direction, as nccl-tests' bus bandwidth counts them; a preset
//! from a datasheet is the link's peak, so a prediction on it is a bound
//! that real collectives approach, not reach (nccl-tests' measured bus
//! bandwidth is typically 70-90% of it on large buffers).

use super::collective::Link;

fn link(name: &str, alpha_s: f64, gb_per_s: f64, source: &str) -> Link {
    Link { name: name.into(), alpha_s, bandwidth: gb_per_s * 1e9, gamma_s_per_byte: 0.0, source: source.into() }
}

/// Every preset, by name.
pub fn all() -> Vec<Link> {
    vec![
        link(
            "k80-socket",
            10e-6,
            3.26,
            "fitted, not a datasheet: the bus bandwidth Theano-MPI's AlexNet row implies at 2 and 4 K80 GPUs \
             (shared/design.md: 0.78 s and 0.54 s of exchange per 5120 images, 122 MB of fp16 gradients; \
             3.13 and 3.39 GB/s, mean 3.26): PCIe 3 peer-to-peer inside one CPU socket",
        ),
        link(
            "k80-cross-socket",
            10e-6,
            1.75,
            "fitted, not a datasheet: the bus bandwidth Theano-MPI's AlexNet row implies at 8 K80 GPUs \
             (0.61 s per 5120 images), where the ring crosses the two sockets' QPI link",
        ),
        link("pcie3-x16", 5e-6, 15.75, "PCI-SIG PCIe 3.0: 8 GT/s x 16 lanes, 128b/130b coding"),
        link("pcie4-x16", 5e-6, 31.5, "PCI-SIG PCIe 4.0: 16 GT/s x 16 lanes, 128b/130b coding"),
        link("nvlink-v100", 5e-6, 150.0, "NVIDIA Tesla V100 SXM2 datasheet: NVLink 300 GB/s, both directions"),
        link("nvlink-a100", 5e-6, 300.0, "NVIDIA A100 SXM datasheet: NVLink 600 GB/s, both directions"),
        link("nvlink-h100", 5e-6, 450.0, "NVIDIA H100 SXM datasheet: NVLink 900 GB/s, both directions"),
        link("1gbe", 50e-6, 0.125, "IEEE 802.3 1000BASE-T line rate, 1 Gbit/s; TCP latency tens of us"),
        link("10gbe", 20e-6, 1.25, "IEEE 802.3 10GBASE line rate, 10 Gbit/s; TCP latency tens of us"),
        link("25gbe", 10e-6, 3.125, "IEEE 802.3by 25GBASE line rate, 25 Gbit/s"),
        link("ib-edr", 1e-6, 12.5, "InfiniBand EDR (IBTA), 100 Gbit/s per port; RDMA latency about 1 us"),
        link("ib-hdr", 1e-6, 25.0, "InfiniBand HDR (IBTA), 200 Gbit/s per port; RDMA latency about 1 us"),
        link("ib-ndr", 1e-6, 50.0, "InfiniBand NDR (IBTA), 400 Gbit/s per port; RDMA latency about 1 us"),
    ]
}

/// The preset `name`, or an error listing them.
pub fn named(name: &str, flag: &str) -> anyhow::Result<Link> {
    all().into_iter().find(|l| l.name == name).ok_or_else(|| {
        let names: Vec<String> = all().into_iter().map(|l| l.name).collect();
        anyhow::anyhow!("{flag} {name}: no such interconnect; accepted: {}", names.join(", "))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_preset_says_where_it_comes_from_and_names_are_unique() {
        let all = super::all();
        for l in &all {
            assert!(l.source.len() > 20 && l.bandwidth > 0.0 && l.alpha_s > 0.0, "{l:?}");
        }
        let mut names: Vec<&str> = all.iter().map(|l| l.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
        let e = super::named("nvlink-b200", "--link").unwrap_err().to_string();
        assert!(e.contains("--link nvlink-b200") && e.contains("ib-ndr"), "{e}");
    }
}
