//! The MPI backend: half precision on the wire, sums accumulated in f32.
//!
//! MPI has no half-precision type, and a user-defined reduction on u16 buffers
//! would round every partial sum to f16 (seven roundings for eight ranks in a
//! ring). So the all-reduce is built from two MPI calls instead, as Rabenseifner's
//! reduce-scatter + all-gather:
//!
//! 1. all-to-all: rank r receives segment r of every other rank's buffer;
//! 2. rank r converts the segments to f32, adds them in rank order, rounds once;
//! 3. all-gather: every rank receives every reduced segment.
//!
//! Each rank sends and receives 2(n-1)/n of the buffer, as a ring all-reduce
//! does, in 2-byte elements; every rank ends with the same bits, since each
//! segment is reduced by one rank only. Measured against plain MPI_Allreduce of
//! f32 by `candle-mpi allreduce --baseline` (see the README for figures).

use std::cell::RefCell;
use std::rc::Rc;

use mpi::collective::CommunicatorCollectives;
use mpi::datatype::{Partition, PartitionMut};
use mpi::topology::Communicator;
use mpi::traits::Root;
use mpi::Count;

use super::wire::WireElem;
use super::{Collective, SharedWindow, WireBuf, World, WorldInfo};

/// How a buffer of `len` elements is cut into one segment per rank: the first
/// `len % n` ranks take one element more.
pub fn segments(len: usize, n: usize) -> (Vec<usize>, Vec<usize>) {
    let base = len / n;
    let extra = len % n;
    let counts: Vec<usize> = (0..n).map(|r| base + usize::from(r < extra)).collect();
    let mut displs = Vec::with_capacity(n);
    let mut at = 0;
    for c in &counts {
        displs.push(at);
        at += c;
    }
    (counts, displs)
}

/// Scratch space reused across calls (allocated at the first call of each size).
#[derive(Default)]
struct Scratch {
    raw16: Vec<u16>,
    raw32: Vec<f32>,
}

pub struct MpiCollective {
    world: World,
    scratch: RefCell<Scratch>,
}

fn count(n: usize) -> anyhow::Result<Count> {
    Count::try_from(n).map_err(|_| anyhow::anyhow!("{n} elements exceed MPI's count limit of {}", Count::MAX))
}

fn counts(v: &[usize]) -> anyhow::Result<Vec<Count>> {
    v.iter().map(|&n| count(n)).collect()
}

impl MpiCollective {
    pub fn new(world: World) -> Self {
        Self { world, scratch: RefCell::new(Scratch::default()) }
    }

    /// Copies `buf` from rank `root` to every rank (NCCL's id, for one).
    pub fn broadcast_bytes(&self, buf: &mut [u8], root: usize) -> anyhow::Result<()> {
        anyhow::ensure!(root < self.world.info().size, "broadcast root {root} is not a rank");
        self.world.comm().process_at_rank(count(root)?).broadcast_into(buf);
        Ok(())
    }

    /// Plain MPI_Allreduce of f32 sums: the reference `allreduce --baseline` times.
    pub fn mpi_allreduce_f32(&self, send: &[f32], recv: &mut [f32]) {
        self.world.comm().all_reduce_into(send, recv, mpi::collective::SystemOperation::sum());
    }

    fn reduce<T: WireElem>(&self, buf: &mut [T], scratch: &mut Vec<T::Raw>) -> anyhow::Result<()> {
        let n = self.world.info().size;
        let me = self.world.info().rank;
        if n == 1 || buf.is_empty() {
            return Ok(());
        }
        let (seg_counts, seg_displs) = segments(buf.len(), n);
        let mine = seg_counts[me];
        let my_start = seg_displs[me];
        // Scratch: n - 1 received segments of `mine` elements, then the reduced segment.
        let need = mine * n;
        if scratch.len() < need {
            scratch.resize(need, T::Raw::default());
        }
        let (received, reduced) = scratch[..need].split_at_mut(mine * (n - 1));

        // 1. All-to-all: send segment r to rank r (nothing to myself).
        {
            let send_counts: Vec<usize> = (0..n).map(|r| if r == me { 0 } else { seg_counts[r] }).collect();
            let recv_counts: Vec<usize> = (0..n).map(|r| if r == me { 0 } else { mine }).collect();
            let recv_displs: Vec<usize> = (0..n).map(|r| if r < me { r * mine } else { r.saturating_sub(1) * mine }).collect();
            let send = Partition::new(T::raw(buf), counts(&send_counts)?, counts(&seg_displs)?);
            let mut recv = PartitionMut::new(&mut *received, counts(&recv_counts)?, counts(&recv_displs)?);
            self.world.comm().all_to_all_varcount_into(&send, &mut recv);
        }

        // 2. Sum my segment over ranks, in rank order, in f32; round once.
        let received = T::from_raw_mut(received);
        let reduced = T::from_raw_mut(reduced);
        let own = &buf[my_start..my_start + mine];
        let srcs: Vec<&[T]> = (0..n)
            .map(|r| match r.cmp(&me) {
                std::cmp::Ordering::Equal => own,
                std::cmp::Ordering::Less => &received[r * mine..(r + 1) * mine],
                std::cmp::Ordering::Greater => &received[(r - 1) * mine..r * mine],
            })
            .collect();
        T::sum_into(&srcs, reduced);

        // 3. All-gather the reduced segments into the buffer.
        let mut recv = PartitionMut::new(T::raw_mut(buf), counts(&seg_counts)?, counts(&seg_displs)?);
        self.world.comm().all_gather_varcount_into(T::raw(reduced), &mut recv);
        Ok(())
    }
}

impl Collective for MpiCollective {
    fn info(&self) -> &WorldInfo {
        self.world.info()
    }

    fn all_reduce_sum(&self, buf: WireBuf<'_>) -> anyhow::Result<()> {
        let mut scratch = self.scratch.borrow_mut();
        match buf {
            WireBuf::F16(b) => self.reduce(b, &mut scratch.raw16),
            WireBuf::Bf16(b) => self.reduce(b, &mut scratch.raw16),
            WireBuf::F32(b) => self.reduce(b, &mut scratch.raw32),
        }
    }

    fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> anyhow::Result<()> {
        anyhow::ensure!(root < self.world.info().size, "broadcast root {root} is not a rank");
        // MPI counts are 32-bit: send big buffers in pieces.
        for chunk in buf.chunks_mut(1 << 30) {
            self.world.comm().process_at_rank(count(root)?).broadcast_into(chunk);
        }
        Ok(())
    }

    fn barrier(&self) -> anyhow::Result<()> {
        self.world.comm().barrier();
        Ok(())
    }

    fn all_gather_f64(&self, value: f64) -> anyhow::Result<Vec<f64>> {
        let mut out = vec![0f64; self.world.info().size];
        self.world.comm().all_gather_into(&value, &mut out[..]);
        Ok(out)
    }

    fn all_gather_u64(&self, value: u64) -> anyhow::Result<Vec<u64>> {
        let mut out = vec![0u64; self.world.info().size];
        self.world.comm().all_gather_into(&value, &mut out[..]);
        Ok(out)
    }

    fn all_gather_f64s(&self, values: &[f64]) -> anyhow::Result<Vec<f64>> {
        let lens = self.all_gather_u64(values.len() as u64)?;
        anyhow::ensure!(
            lens.iter().all(|&l| l == values.len() as u64),
            "ranks gathered different numbers of values: {lens:?}"
        );
        let mut out = vec![0f64; values.len() * self.world.info().size];
        if !values.is_empty() {
            self.world.comm().all_gather_into(values, &mut out[..]);
        }
        Ok(out)
    }

    fn shared_window(&self, bytes: usize) -> anyhow::Result<Option<Rc<SharedWindow>>> {
        SharedWindow::new(&self.world, bytes)
    }

    /// MPI_Abort on the world.
    fn abort(&self, code: i32) -> ! {
        self.world.comm().abort(code)
    }
}

#[cfg(test)]
mod tests {
    use super::segments;

    #[test]
    fn segments_cover_the_buffer_and_differ_by_at_most_one() {
        for len in [0, 1, 2, 7, 1_000_003] {
            for n in 1..=8 {
                let (c, d) = segments(len, n);
                assert_eq!(c.iter().sum::<usize>(), len);
                assert!(c.iter().max().unwrap() - c.iter().min().unwrap() <= 1);
                for r in 1..n {
                    assert_eq!(d[r], d[r - 1] + c[r - 1]);
                }
            }
        }
    }
}
