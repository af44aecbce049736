//! The time of one all-reduce of `n` bytes over `p` workers, `g` to a host,
//! in the alpha-beta(-gamma) model of Thakur, Rabenseifner and Gropp (2005):
//! a message of m bytes over a link costs alpha + m beta, and reducing m
//! bytes costs m gamma.
//!
//! - ring (a reduce-scatter and an all-gather of p - 1 steps each, the
//!   bandwidth-optimal all-reduce; NCCL's ring): 2(p-1) alpha + 2(p-1)/p n
//!   beta + (p-1)/p n gamma, on the slowest link the ring crosses (between
//!   hosts once the workers span two);
//! - flat (candle-mpi's messages plane on several hosts: every rank sends
//!   each other rank its share, so a host's link carries the g ranks' shares
//!   for the p - g ranks elsewhere): 2(p-1) alpha + 2 g (p-g)/p n beta_between
//!   + (p-1)/p n gamma;
//! - hierarchical (inside each host a reduce-scatter, between hosts an
//!   all-reduce of each local rank's 1/g share, inside again an
//!   all-gather): 2(g-1) alpha_in + 2(g-1)/g n beta_in on the link inside,
//!   and between hosts g rings of n/g over h = p/g hosts, which share the
//!   host's link: the ring of n over h hosts.
//!
//! With one host every algorithm is the ring on the link inside it.

use serde::Serialize;

/// One level of the interconnect: what a message of m bytes costs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Link {
    pub name: String,
    /// Seconds per message (latency).
    pub alpha_s: f64,
    /// Bytes per second each way (1 / beta): nccl-tests' bus bandwidth.
    pub bandwidth: f64,
    /// Seconds per byte reduced (0 where the reduction hides under the transfer).
    pub gamma_s_per_byte: f64,
    /// Where the figures come from.
    pub source: String,
}

impl Link {
    fn beta(&self) -> f64 {
        1.0 / self.bandwidth
    }
}

/// How the gradients are summed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// One ring over every worker (NCCL's ring; candle-mpi's messages plane
    /// with one rank per host)
    Ring,
    /// Every rank sends each other rank its share (candle-mpi's messages plane
    /// with several ranks per host)
    Flat,
    /// Inside each host, then one host's share between hosts, then inside
    /// (candle-mpi's hierarchical exchange, Horovod's hierarchical all-reduce)
    Hierarchical,
}

/// The machine the workers run on: `per_host` workers to a host, a link inside
/// a host and one between hosts.
#[derive(Clone, Debug, Serialize)]
pub struct Topology {
    pub per_host: usize,
    pub inside: Link,
    pub between: Link,
}

/// The ring all-reduce of `n` bytes over `p` workers on `link`.
pub fn ring(n: f64, p: usize, link: &Link) -> f64 {
    if p <= 1 || n <= 0.0 {
        return 0.0;
    }
    let p = p as f64;
    2.0 * (p - 1.0) * link.alpha_s + 2.0 * (p - 1.0) / p * n * link.beta() + (p - 1.0) / p * n * link.gamma_s_per_byte
}

/// Seconds of one all-reduce of `n` bytes over `p` workers on `topology`.
pub fn all_reduce(n: f64, p: usize, topology: &Topology, algorithm: Algorithm) -> f64 {
    let g = topology.per_host.max(1);
    if p <= g {
        return ring(n, p, &topology.inside);
    }
    let (pf, gf) = (p as f64, g as f64);
    match algorithm {
        Algorithm::Ring => ring(n, p, &topology.between),
        Algorithm::Flat => {
            let b = &topology.between;
            2.0 * (pf - 1.0) * b.alpha_s
                + 2.0 * gf * (pf - gf) / pf * n * b.beta()
                + (pf - 1.0) / pf * n * b.gamma_s_per_byte
        }
        Algorithm::Hierarchical => {
            let hosts = p.div_ceil(g);
            let i = &topology.inside;
            let inside = if g > 1 {
                2.0 * (gf - 1.0) * i.alpha_s
                    + 2.0 * (gf - 1.0) / gf * n * i.beta()
                    + (gf - 1.0) / gf * n * i.gamma_s_per_byte
            } else {
                0.0
            };
            // g rings of n/g side by side through the host's one link.
            inside + ring(n, hosts, &topology.between)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(alpha_s: f64, bandwidth: f64) -> Link {
        Link { name: "l".into(), alpha_s, bandwidth, gamma_s_per_byte: 0.0, source: "test".into() }
    }

    #[test]
    fn the_ring_by_hand() {
        // 8 workers, 100 MB at 10 GB/s and 5 us: 14 messages and 1.75 x 100 MB.
        let t = ring(100e6, 8, &link(5e-6, 10e9));
        assert!((t - (14.0 * 5e-6 + 1.75 * 0.01)).abs() < 1e-12, "{t}");
        assert_eq!(ring(100e6, 1, &link(5e-6, 10e9)), 0.0);
        // nccl-tests' bus bandwidth of the modelled ring is the link's, whatever p (alpha 0).
        for p in [2, 4, 16, 1024] {
            let t = ring(1e9, p, &link(0.0, 4e9));
            let busbw = 1e9 / t * 2.0 * (p as f64 - 1.0) / p as f64;
            assert!((busbw - 4e9).abs() < 1.0, "{p}: {busbw}");
        }
    }

    #[test]
    fn hierarchical_sends_one_hosts_share_between_hosts() {
        let topo = Topology { per_host: 4, inside: link(0.0, 100e9), between: link(0.0, 1e9) };
        let n = 400e6;
        // 2 hosts of 4: inside 2 x 3/4 n at 100 GB/s; between hosts 4 rings of n/4 over 2 hosts share the link: n.
        let h = all_reduce(n, 8, &topo, Algorithm::Hierarchical);
        let want = 2.0 * 0.75 * n / 100e9 + n / 1e9;
        assert!((h - want).abs() < 1e-9, "{h} vs {want}");
        // The flat plane sends g (p - g)/p n = 2 n per phase through each host's link: 4x the hierarchical load.
        let f = all_reduce(n, 8, &topo, Algorithm::Flat);
        assert!((f - 4.0 * n / 1e9).abs() < 1e-9, "{f}");
        // One rank per host: all three are the ring between hosts.
        let one = Topology { per_host: 1, ..topo.clone() };
        let r = all_reduce(n, 4, &one, Algorithm::Ring);
        for a in [Algorithm::Flat, Algorithm::Hierarchical] {
            assert!((all_reduce(n, 4, &one, a) - r).abs() < 1e-12, "{a:?}");
        }
        // Within one host, the link inside.
        assert!((all_reduce(n, 4, &topo, Algorithm::Flat) - ring(n, 4, &topo.inside)).abs() < 1e-15);
    }
}
