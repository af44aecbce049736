//! The hierarchical data plane, for ranks on several hosts (Horovod's
//! hierarchical all-reduce, built from the same two MPI calls as
//! `messages.rs`):
//!
//! 1. inside each host: local rank l receives segment l of every local
//!    rank's buffer and sums them in f32, in rank order, rounded to the wire
//!    type (the host's partial sum of that segment);
//! 2. between hosts: the ranks of local index l, one per host, all-reduce
//!    their partials (reduce-scatter + all-gather), hosts added in f32 in
//!    host order and rounded once;
//! 3. inside each host: an all-gather of the reduced segments.
//!
//! Only step 2 leaves a host, and it carries one host's segment, not every
//! rank's: each host sends 1/(ranks per host) of the bytes the flat exchange
//! sends between hosts. The arithmetic is that of `messages.rs`'s sum by
//! host, so both leave the same bits on every rank.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use mpi::topology::{Color, Communicator, SimpleCommunicator};

use super::control::Control;
use super::messages::{all_gather, host_index, reduce_scatter, sent_to, ReduceTyped, Scratch};
use super::segments::segments;
use super::wire::WireElem;
use super::world::World;

pub struct Hierarchy {
    /// This host's ranks, in rank order.
    intra: SimpleCommunicator,
    /// The ranks of this rank's local index, one per host, in host order.
    inter: SimpleCommunicator,
    scratch: RefCell<Scratch>,
    sent_between_hosts: Cell<u64>,
    // After the communicators: MPI must outlive them (they are freed first).
    _world: Rc<World>,
}

impl Hierarchy {
    /// Collective: the two communicators, where the ranks span two or more
    /// hosts with the same number of ranks on each; else None.
    pub fn new(control: &Control) -> anyhow::Result<Option<Hierarchy>> {
        let world = control.world();
        let hosts = world.hosts();
        if !spans_even_hosts(hosts) {
            return Ok(None);
        }
        let me = world.info().rank;
        let host = host_index(hosts)[me];
        let local = hosts[host].iter().position(|&r| r == me).expect("every rank is on a host");
        let split = |color: usize, key: usize| {
            world
                .comm()
                .split_by_color_with_key(Color::with_value(color as i32), key as i32)
                .ok_or_else(|| anyhow::anyhow!("MPI_Comm_split gave no communicator for the hierarchical exchange"))
        };
        let intra = split(host, local)?;
        let inter = split(local, host)?;
        Ok(Some(Hierarchy {
            intra,
            inter,
            scratch: RefCell::default(),
            sent_between_hosts: Cell::new(0),
            _world: world.clone(),
        }))
    }

    /// Bytes this rank has sent to ranks on other hosts, all calls together.
    pub fn sent_between_hosts(&self) -> u64 {
        self.sent_between_hosts.get()
    }
}

impl ReduceTyped for Hierarchy {
    fn scratch(&self) -> &RefCell<Scratch> {
        &self.scratch
    }

    fn reduce<T: WireElem>(&self, buf: &mut [T], scratch: &mut Vec<T::Raw>) -> anyhow::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let (local_size, local) = (self.intra.size() as usize, self.intra.rank() as usize);
        let (host_count, host) = (self.inter.size() as usize, self.inter.rank() as usize);
        let mine = segments(buf.len(), local_size).0[local];
        let sub = segments(mine, host_count).0[host];
        // Scratch: the host's received segments, the partial, the hosts' received pieces, the reduced piece.
        let need = mine * local_size + sub * host_count;
        if scratch.len() < need {
            scratch.resize(need, T::Raw::default());
        }
        let (received, rest) = scratch[..need].split_at_mut(mine * (local_size - 1));
        let (partial, rest) = rest.split_at_mut(mine);
        let (received_between, reduced) = rest.split_at_mut(sub * (host_count - 1));
        let (partial, reduced) = (T::from_raw_mut(partial), T::from_raw_mut(reduced));
        reduce_scatter(&self.intra, buf, received, partial, T::sum_into)?;
        reduce_scatter(&self.inter, partial, received_between, reduced, T::sum_into)?;
        all_gather(&self.inter, reduced, partial)?;
        all_gather(&self.intra, partial, buf)?;
        let away = sent_to(mine, host_count, host, |_| true);
        self.sent_between_hosts.set(self.sent_between_hosts.get() + (away * std::mem::size_of::<T>()) as u64);
        Ok(())
    }
}

/// Two or more hosts, each with the same number of ranks.
pub fn spans_even_hosts(hosts: &[Vec<usize>]) -> bool {
    hosts.len() >= 2 && hosts.iter().all(|h| h.len() == hosts[0].len())
}
