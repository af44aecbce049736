//! The control plane: what ranks tell each other that is not a gradient sum
//! (a barrier, gathers of metrics and hashes, broadcasts of weights and ids,
//! the abort that ends the job). Always MPI, whatever carries the gradients,
//! as Horovod keeps its coordination apart from its data path.

use std::rc::Rc;

use mpi::collective::CommunicatorCollectives;
use mpi::topology::Communicator;
use mpi::traits::Root;
use mpi::Count;

use super::world::{World, WorldInfo};

/// The MPI world as the control plane uses it (one per process, shared by the
/// data planes that need the same communicator).
pub struct Control {
    world: Rc<World>,
}

/// `n` as an MPI count, or an error where it does not fit.
pub(crate) fn count(n: usize) -> anyhow::Result<Count> {
    Count::try_from(n).map_err(|_| anyhow::anyhow!("{n} elements exceed MPI's count limit of {}", Count::MAX))
}

impl Control {
    pub fn new(world: World) -> Self {
        Self { world: Rc::new(world) }
    }

    /// Who this process is in the job.
    pub fn info(&self) -> &WorldInfo {
        self.world.info()
    }

    /// The world itself, for the data planes built on the same communicator.
    pub(crate) fn world(&self) -> &Rc<World> {
        &self.world
    }

    /// Waits until every rank has arrived.
    pub fn barrier(&self) -> anyhow::Result<()> {
        self.world.comm().barrier();
        Ok(())
    }

    /// Copies `buf` from rank `root` to every rank.
    pub fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> anyhow::Result<()> {
        self.check_root(root)?;
        // MPI counts are 32-bit: send big buffers in pieces.
        for chunk in buf.chunks_mut(1 << 30) {
            self.world.comm().process_at_rank(count(root)?).broadcast_into(chunk);
        }
        Ok(())
    }

    /// Copies `buf` from rank `root` to every rank (NCCL's id, for one).
    pub fn broadcast_bytes(&self, buf: &mut [u8], root: usize) -> anyhow::Result<()> {
        self.check_root(root)?;
        self.world.comm().process_at_rank(count(root)?).broadcast_into(buf);
        Ok(())
    }

    /// Rank 0's `t`, on every rank (same shape, dtype and device as `t`).
    pub fn broadcast_tensor(&self, t: &candle_core::Tensor) -> anyhow::Result<candle_core::Tensor> {
        let mut values: Vec<f32> = t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?;
        self.broadcast_f32(&mut values, 0)?;
        let host = candle_core::Tensor::from_vec(values, t.shape(), &candle_core::Device::Cpu)?;
        Ok(host.to_device(t.device())?.to_dtype(t.dtype())?)
    }

    /// One value from each rank, in rank order (for metrics and checks).
    pub fn all_gather_f64(&self, value: f64) -> anyhow::Result<Vec<f64>> {
        let mut out = vec![0f64; self.info().size];
        self.world.comm().all_gather_into(&value, &mut out[..]);
        Ok(out)
    }

    /// One value from each rank, in rank order (for hashes and counts).
    pub fn all_gather_u64(&self, value: u64) -> anyhow::Result<Vec<u64>> {
        let mut out = vec![0u64; self.info().size];
        self.world.comm().all_gather_into(&value, &mut out[..]);
        Ok(out)
    }

    /// `values` of every rank, concatenated in rank order; every rank must
    /// pass the same number of values (end-of-run records).
    pub fn all_gather_f64s(&self, values: &[f64]) -> anyhow::Result<Vec<f64>> {
        let lens = self.all_gather_u64(values.len() as u64)?;
        anyhow::ensure!(
            lens.iter().all(|&l| l == values.len() as u64),
            "ranks gathered different numbers of values: {lens:?}"
        );
        let mut out = vec![0f64; values.len() * self.info().size];
        if !values.is_empty() {
            self.world.comm().all_gather_into(values, &mut out[..]);
        }
        Ok(out)
    }

    /// Collective: every rank's `mine`, agreed. Where every rank succeeded
    /// each gets its own value; otherwise every rank gets the first failed
    /// rank's own message (that rank its own error), so that whichever rank
    /// ends the job prints why.
    pub fn agree<T>(&self, what: &str, mine: anyhow::Result<T>) -> anyhow::Result<T> {
        let ok = self.all_gather_u64(u64::from(mine.is_ok()))?;
        let Some(failed) = ok.iter().position(|&o| o == 0) else { return mine };
        let mut text = match &mine {
            Err(e) if self.info().rank == failed => format!("{e:#}").into_bytes(),
            _ => vec![],
        };
        let mut len = (text.len() as u64).to_le_bytes();
        self.broadcast_bytes(&mut len, failed)?;
        text.resize(u64::from_le_bytes(len) as usize, 0);
        self.broadcast_bytes(&mut text, failed)?;
        match mine {
            // The failed rank keeps its own error as it is.
            Err(e) if self.info().rank == failed => Err(e),
            _ => anyhow::bail!("{what}: rank {failed} failed: {}", String::from_utf8_lossy(&text)),
        }
    }

    /// Ends every rank of the job at once (MPI_Abort): a rank that fails
    /// alone must not leave the others waiting in a collective.
    pub fn abort(&self, code: i32) -> ! {
        self.world.comm().abort(code)
    }

    fn check_root(&self, root: usize) -> anyhow::Result<()> {
        anyhow::ensure!(root < self.info().size, "broadcast root {root} is not a rank");
        Ok(())
    }
}
