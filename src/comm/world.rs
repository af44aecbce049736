//! The MPI world a job starts from: rank, size, local rank and size, host.

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
    _universe: Universe,
}

impl World {
    /// Initialises MPI (a lone process outside mpirun is a world of one).
    pub fn init() -> anyhow::Result<World> {
        let universe = mpi::initialize()
            .ok_or_else(|| anyhow::anyhow!("MPI is already initialised in this process; create the World once"))?;
        let comm = universe.world();
        let shared = comm.split_shared(comm.rank());
        let host = mpi::environment::processor_name().unwrap_or_else(|_| "unknown-host".to_string());
        let info = WorldInfo {
            rank: comm.rank() as usize,
            size: comm.size() as usize,
            local_rank: shared.rank() as usize,
            local_size: shared.size() as usize,
            host,
        };
        drop(shared);
        Ok(World { comm, info, _universe: universe })
    }

    pub fn info(&self) -> &WorldInfo {
        &self.info
    }

    pub(crate) fn comm(&self) -> &SimpleCommunicator {
        &self.comm
    }
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
