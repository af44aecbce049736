//! The data plane between hosts: an all-reduce of host wire buffers built
//! from MPI messages, half precision on the wire, sums accumulated in f32.
//!
//! MPI has no half-precision type, and a user-defined reduction on u16 buffers
//! would round every partial sum to f16 (seven roundings for eight ranks in a
//! ring). So the all-reduce is built from two MPI calls instead, as Rabenseifner's
//! reduce-scatter + all-gather:
//!
//! 1. all-to-all: rank r receives segment r of every other rank's buffer;
//! 2. rank r converts the segments to f32 and adds them, rounds once;
//! 3. all-gather: every rank receives every reduced segment.
//!
//! Each rank sends and receives 2(n-1)/n of the buffer, as a ring all-reduce
//! does, in 2-byte elements; every rank ends with the same bits, since each
//! segment is reduced by one rank only. Measured against plain MPI_Allreduce of
//! f32 by `candle-mpi allreduce --baseline` (see the README for figures).
//!
//! The order of the sum is the world's hosts (`World::hosts`): each host's
//! ranks in rank order are summed in f32 and rounded to the wire type, then
//! the hosts' sums are added in f32 in host order and rounded once more. On
//! one host, or with one rank per host, that is one plain sum in rank order;
//! in between it is the arithmetic the hierarchical exchange
//! (`hierarchy.rs`) does, so that both leave the same bits.
//!
//! Both count the bytes they send to ranks on other hosts.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use mpi::collective::CommunicatorCollectives;
use mpi::datatype::{Partition, PartitionMut};
use mpi::topology::Communicator;
use mpi::Count;

use super::control::{count, Control};
use super::segments::segments;
use super::waiting;
use super::wire::{Reduce, WireBuf, WireElem};
use super::world::World;

/// Scratch space reused across calls (allocated at the first call of each size).
#[derive(Default)]
pub(super) struct Scratch {
    pub raw16: Vec<u16>,
    pub raw32: Vec<f32>,
}

/// Sums of host buffers by MPI messages, on the world's communicator.
pub struct Messages {
    world: Rc<World>,
    scratch: RefCell<Scratch>,
    /// Each rank's host, as an index into `World::hosts`.
    host_of: Vec<usize>,
    sent_between_hosts: Cell<u64>,
}

fn counts(v: &[usize]) -> anyhow::Result<Vec<Count>> {
    v.iter().map(|&n| count(n)).collect()
}

/// Each rank's host index, from the ranks grouped by host.
pub(super) fn host_index(hosts: &[Vec<usize>]) -> Vec<usize> {
    let mut of = vec![0; hosts.iter().map(Vec::len).sum()];
    for (h, ranks) in hosts.iter().enumerate() {
        for &r in ranks {
            of[r] = h;
        }
    }
    of
}

/// Phase 1 on `comm` (rank `me` of n): segment `me` of every rank's `buf`
/// arrives in `received` (n - 1 segments of `counts[me]`), and `sum` adds
/// all n of them, in comm rank order, into `out`. Returns the elements sent.
pub(super) fn reduce_scatter<T: WireElem, C: Communicator>(
    comm: &C,
    buf: &[T],
    received: &mut [T::Raw],
    out: &mut [T],
    sum: impl FnOnce(&[&[T]], &mut [T]),
) -> anyhow::Result<()> {
    let n = comm.size() as usize;
    let me = comm.rank() as usize;
    let (seg_counts, seg_displs) = segments(buf.len(), n);
    let mine = seg_counts[me];
    let received = &mut received[..mine * (n - 1)];
    {
        let send_counts: Vec<usize> = (0..n).map(|r| if r == me { 0 } else { seg_counts[r] }).collect();
        let recv_counts: Vec<usize> = (0..n).map(|r| if r == me { 0 } else { mine }).collect();
        let recv_displs: Vec<usize> =
            (0..n).map(|r| if r < me { r * mine } else { r.saturating_sub(1) * mine }).collect();
        let send = Partition::new(T::raw(buf), counts(&send_counts)?, counts(&seg_displs)?);
        let mut recv = PartitionMut::new(&mut *received, counts(&recv_counts)?, counts(&recv_displs)?);
        match waiting::poll_interval() {
            None => comm.all_to_all_varcount_into(&send, &mut recv),
            Some(interval) => mpi::request::scope(|scope| {
                waiting::finish(comm.immediate_all_to_all_varcount_into(scope, &send, &mut recv), interval)
            }),
        }
    }
    let received = T::from_raw_mut(received);
    let own = &buf[seg_displs[me]..seg_displs[me] + mine];
    let srcs: Vec<&[T]> = (0..n)
        .map(|r| match r.cmp(&me) {
            std::cmp::Ordering::Equal => own,
            std::cmp::Ordering::Less => &received[r * mine..(r + 1) * mine],
            std::cmp::Ordering::Greater => &received[(r - 1) * mine..r * mine],
        })
        .collect();
    sum(&srcs, out);
    Ok(())
}

/// Phase 3 on `comm`: every rank's reduced segment `mine` into its place in `buf`.
pub(super) fn all_gather<T: WireElem, C: Communicator>(comm: &C, mine: &[T], buf: &mut [T]) -> anyhow::Result<()> {
    let (seg_counts, seg_displs) = segments(buf.len(), comm.size() as usize);
    let mut recv = PartitionMut::new(T::raw_mut(buf), counts(&seg_counts)?, counts(&seg_displs)?);
    match waiting::poll_interval() {
        None => comm.all_gather_varcount_into(T::raw(mine), &mut recv),
        Some(interval) => mpi::request::scope(|scope| {
            waiting::finish(comm.immediate_all_gather_varcount_into(scope, T::raw(mine), &mut recv), interval)
        }),
    }
    Ok(())
}

/// Elements one rank sends in a reduce-scatter + all-gather of `len`
/// elements over `n` ranks to the ranks `to_count` selects (by comm rank).
pub(super) fn sent_to(len: usize, n: usize, me: usize, to_count: impl Fn(usize) -> bool) -> usize {
    let (seg_counts, _) = segments(len, n);
    (0..n).filter(|&r| r != me && to_count(r)).map(|r| seg_counts[r] + seg_counts[me]).sum()
}

/// Sums `srcs` (one per world rank, in rank order) host by host: each
/// host's ranks in f32, rounded to the wire type, then the hosts in f32,
/// rounded once more; a plain sum where every rank is on one host or each
/// on its own. `partials` holds the hosts' sums (`dst.len()` each) where
/// they are needed (`sums_by_host`).
fn sum_by_host<T: WireElem>(hosts: &[Vec<usize>], srcs: &[&[T]], dst: &mut [T], partials: &mut [T]) {
    if !sums_by_host(hosts) {
        return T::sum_into(srcs, dst);
    }
    let partials: Vec<&mut [T]> = partials.chunks_exact_mut(dst.len().max(1)).take(hosts.len()).collect();
    let mut sums: Vec<&[T]> = Vec::with_capacity(hosts.len());
    for (ranks, p) in hosts.iter().zip(partials) {
        T::sum_into(&ranks.iter().map(|&r| srcs[r]).collect::<Vec<_>>(), p);
        sums.push(p);
    }
    T::sum_into(&sums, dst);
}

/// Whether the sum goes host by host: several hosts, one of them with several ranks.
fn sums_by_host(hosts: &[Vec<usize>]) -> bool {
    hosts.len() > 1 && hosts.iter().any(|h| h.len() > 1)
}

impl Messages {
    pub fn new(control: &Control) -> Self {
        let world = control.world().clone();
        let host_of = host_index(world.hosts());
        Self { world, scratch: RefCell::new(Scratch::default()), host_of, sent_between_hosts: Cell::new(0) }
    }

    /// Plain MPI_Allreduce of f32 sums: the reference `allreduce --baseline` times.
    pub fn mpi_allreduce_f32(&self, send: &[f32], recv: &mut [f32]) {
        self.world.comm().all_reduce_into(send, recv, mpi::collective::SystemOperation::sum());
    }

    /// Bytes this rank has sent to ranks on other hosts, all calls together.
    pub fn sent_between_hosts(&self) -> u64 {
        self.sent_between_hosts.get()
    }
}

impl ReduceTyped for Messages {
    fn scratch(&self) -> &RefCell<Scratch> {
        &self.scratch
    }

    fn reduce<T: WireElem>(&self, buf: &mut [T], scratch: &mut Vec<T::Raw>) -> anyhow::Result<()> {
        let n = self.world.info().size;
        let me = self.world.info().rank;
        if n == 1 || buf.is_empty() {
            return Ok(());
        }
        let mine = segments(buf.len(), n).0[me];
        let hosts = self.world.hosts();
        // Scratch: n - 1 received segments of `mine` elements, the reduced
        // segment, and the hosts' sums of it where the sum goes host by host.
        let host_sums = if sums_by_host(hosts) { hosts.len() * mine } else { 0 };
        let need = mine * n + host_sums;
        if scratch.len() < need {
            scratch.resize(need, T::Raw::default());
        }
        let (received, rest) = scratch[..need].split_at_mut(mine * (n - 1));
        let (reduced, partials) = rest.split_at_mut(mine);
        let (reduced, partials) = (T::from_raw_mut(reduced), T::from_raw_mut(partials));
        reduce_scatter(self.world.comm(), buf, received, reduced, |srcs, out| sum_by_host(hosts, srcs, out, partials))?;
        all_gather(self.world.comm(), reduced, buf)?;
        let away = sent_to(buf.len(), n, me, |r| self.host_of[r] != self.host_of[me]);
        self.sent_between_hosts.set(self.sent_between_hosts.get() + (away * std::mem::size_of::<T>()) as u64);
        Ok(())
    }
}

/// A data plane that sums a buffer of any wire type with reused scratch
/// space: `Reduce` for it picks the scratch of the buffer's raw type.
pub(super) trait ReduceTyped {
    fn scratch(&self) -> &RefCell<Scratch>;
    fn reduce<T: WireElem>(&self, buf: &mut [T], scratch: &mut Vec<T::Raw>) -> anyhow::Result<()>;
}

impl<P: ReduceTyped> Reduce for P {
    fn all_reduce_sum(&self, buf: WireBuf<'_>) -> anyhow::Result<()> {
        let mut scratch = self.scratch().borrow_mut();
        match buf {
            WireBuf::F16(b) => self.reduce(b, &mut scratch.raw16),
            WireBuf::Bf16(b) => self.reduce(b, &mut scratch.raw16),
            WireBuf::F32(b) => self.reduce(b, &mut scratch.raw32),
        }
    }
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;

    #[test]
    fn the_sum_by_host_is_a_plain_sum_on_one_host_or_one_rank_per_host() {
        let vals: Vec<Vec<f16>> = (0..4)
            .map(|r| (0..50).map(|i| f16::from_f32(((i * 7 + r * 13) % 23) as f32 * 0.37 - 3.1)).collect())
            .collect();
        let srcs: Vec<&[f16]> = vals.iter().map(Vec::as_slice).collect();
        let plain = |srcs: &[&[f16]]| {
            let mut d = vec![f16::ZERO; 50];
            f16::sum_into(srcs, &mut d);
            d
        };
        let by = |hosts: &[Vec<usize>]| {
            let mut d = vec![f16::ZERO; 50];
            let mut partials = vec![f16::ZERO; hosts.len() * 50];
            sum_by_host(hosts, &srcs, &mut d, &mut partials);
            d
        };
        assert_eq!(by(&[vec![0, 1, 2, 3]]), plain(&srcs));
        assert_eq!(by(&[vec![0], vec![1], vec![2], vec![3]]), plain(&srcs));
        // Two hosts of two: each host's sum rounded to f16, then the two added.
        let host = |a: usize, b: usize| plain(&[srcs[a], srcs[b]]);
        let (h0, h1) = (host(0, 2), host(1, 3));
        assert_eq!(by(&[vec![0, 2], vec![1, 3]]), plain(&[&h0, &h1]));
        assert_ne!(by(&[vec![0, 2], vec![1, 3]]), plain(&srcs), "these values round differently by host");
    }

    #[test]
    fn bytes_to_other_hosts_are_those_of_the_segments_that_leave() {
        // 10 elements over 4 ranks: segments 3, 3, 2, 2; rank 0 sends segment r
        // to rank r and its own segment (3) to each in the all-gather.
        assert_eq!(sent_to(10, 4, 0, |_| true), (3 + 3) + (2 + 3) + (2 + 3));
        assert_eq!(sent_to(10, 4, 0, |r| r >= 2), (2 + 3) + (2 + 3));
        assert_eq!(sent_to(10, 4, 0, |_| false), 0);
        assert_eq!(host_index(&[vec![0, 2], vec![1, 3]]), vec![0, 1, 0, 1]);
    }
}
