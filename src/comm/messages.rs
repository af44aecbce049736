//! The data plane between hosts: an all-reduce of host wire buffers built
//! from MPI messages, half precision on the wire, sums accumulated in f32.
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
use mpi::Count;

use super::control::{count, Control};
use super::segments::segments;
use super::wire::{Reduce, WireBuf, WireElem};
use super::world::World;

/// Scratch space reused across calls (allocated at the first call of each size).
#[derive(Default)]
struct Scratch {
    raw16: Vec<u16>,
    raw32: Vec<f32>,
}

/// Sums of host buffers by MPI messages, on the world's communicator.
pub struct Messages {
    world: Rc<World>,
    scratch: RefCell<Scratch>,
}

fn counts(v: &[usize]) -> anyhow::Result<Vec<Count>> {
    v.iter().map(|&n| count(n)).collect()
}

impl Messages {
    pub fn new(control: &Control) -> Self {
        Self { world: control.world().clone(), scratch: RefCell::new(Scratch::default()) }
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
            let recv_displs: Vec<usize> =
                (0..n).map(|r| if r < me { r * mine } else { r.saturating_sub(1) * mine }).collect();
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

impl Reduce for Messages {
    fn all_reduce_sum(&self, buf: WireBuf<'_>) -> anyhow::Result<()> {
        let mut scratch = self.scratch.borrow_mut();
        match buf {
            WireBuf::F16(b) => self.reduce(b, &mut scratch.raw16),
            WireBuf::Bf16(b) => self.reduce(b, &mut scratch.raw16),
            WireBuf::F32(b) => self.reduce(b, &mut scratch.raw32),
        }
    }
}
