//! The MPI world a job starts from: rank, size, local rank and size, host,
//! and which ranks share each host.

use mpi::collective::{CommunicatorCollectives, Root};
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use serde::Serialize;

/// Who this process is (plain data, cheap to copy into records).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct WorldInfo {
    pub rank: usize,
    pub size: usize,
    /// Rank among the processes sharing this host's memory (MPI's shared-memory split).
    pub local_rank: usize,
    pub local_size: usize,
    pub host: String,
}

/// MPI, initialised; finalised when dropped. One per process.
pub struct World {
    // Field order matters: the communicator must go before MPI is finalised.
    comm: SimpleCommunicator,
    info: WorldInfo,
    hosts: Vec<Vec<usize>>,
    _universe: Universe,
}

impl World {
    /// Initialises MPI (a lone process outside mpirun is a world of one).
    pub fn init() -> anyhow::Result<World> {
        // Funneled: other threads compute (rayon, the overlapped backward), only this one calls MPI.
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| anyhow::anyhow!("MPI is already initialised in this process; create the World once"))?;
        let comm = universe.world();
        let shared = comm.split_shared(comm.rank());
        let host = mpi::environment::processor_name().unwrap_or_else(|_| "unknown-host".to_string());
        // Each host by the lowest world rank on it: the first of its shared-memory group.
        let mut first = comm.rank();
        shared.process_at_rank(0).broadcast_into(&mut first);
        let mut firsts = vec![0i32; comm.size() as usize];
        comm.all_gather_into(&first, &mut firsts[..]);
        let info = WorldInfo {
            rank: comm.rank() as usize,
            size: comm.size() as usize,
            local_rank: shared.rank() as usize,
            local_size: shared.size() as usize,
            host,
        };
        drop(shared);
        Ok(World { comm, info, hosts: hosts_of(&firsts), _universe: universe })
    }

    pub fn info(&self) -> &WorldInfo {
        &self.info
    }

    pub(crate) fn comm(&self) -> &SimpleCommunicator {
        &self.comm
    }

    /// The world's ranks by host: hosts in the order of their lowest rank,
    /// each host's ranks ascending (the order every reduction adds in).
    pub fn hosts(&self) -> &[Vec<usize>] {
        &self.hosts
    }
}

/// Ranks grouped by the first rank of their host (`first[r]` for rank r).
fn hosts_of(first: &[i32]) -> Vec<Vec<usize>> {
    let mut hosts: Vec<Vec<usize>> = Vec::new();
    for (rank, &f) in first.iter().enumerate() {
        match hosts.iter_mut().find(|h| h[0] == f as usize) {
            Some(h) => h.push(rank),
            None => hosts.push(vec![rank]),
        }
    }
    hosts
}

impl Drop for World {
    /// A rank that unwinds from a panic must not finalise: MPI_Finalize waits
    /// for the other ranks, which wait in a collective for this one, and the job
    /// hangs. It aborts the whole job instead, naming itself.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("rank {}: panicked; aborting the MPI job", self.info.rank);
            self.comm.abort(70);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::hosts_of;

    #[test]
    fn ranks_are_grouped_by_host_in_order_of_their_first_rank() {
        assert_eq!(hosts_of(&[0, 0, 0]), vec![vec![0, 1, 2]]);
        assert_eq!(hosts_of(&[0, 0, 2, 2]), vec![vec![0, 1], vec![2, 3]]);
        // Round-robin placement: ranks 0 and 2 on one host, 1 and 3 on the other.
        assert_eq!(hosts_of(&[0, 1, 0, 1]), vec![vec![0, 2], vec![1, 3]]);
    }
}
