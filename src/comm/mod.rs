//! The transports under the exchange, in Horovod's split: a control plane
//! (`control.rs`: barrier, gathers, broadcasts, abort; always MPI) apart from
//! the data plane that sums gradient buffers: MPI messages (`messages.rs`),
//! a shared-memory window where every rank shares one host (`shm.rs`), or
//! NCCL on GPUs (`nccl.rs`, feature `cuda`). `wire.rs` and `simd.rs` are the
//! element types that travel and their conversions, `segments.rs` how a
//! buffer is shared out between ranks, `world.rs` the MPI process itself.
//! Everything around the call (order, buckets, scaling, checks) is the
//! exchange's (`crate::exchange`).

pub mod control;
pub mod messages;
#[cfg(feature = "cuda")]
pub mod nccl;
#[cfg(not(feature = "cuda"))]
#[path = "nccl_absent.rs"]
pub mod nccl;
pub mod segments;
pub mod shm;
pub mod simd;
pub mod wire;
pub mod world;

pub use self::control::Control;
pub use self::messages::Messages;
pub use self::nccl::Nccl;
pub use self::shm::SharedWindow;
pub use self::wire::{GradDtype, Reduce, WireBuf, WireElem};
pub use self::world::{World, WorldInfo};

/// What one rank communicates with: the control plane, and the data planes
/// its gradients can travel by.
pub struct Comm {
    control: Control,
    messages: Messages,
    nccl: Option<Nccl>,
}

impl Comm {
    /// Ranks whose gradients live on the host: MPI carries everything.
    pub fn mpi(world: World) -> Self {
        Self::new(Control::new(world), None)
    }

    /// The control plane, and NCCL for GPU ranks.
    pub fn new(control: Control, nccl: Option<Nccl>) -> Self {
        let messages = Messages::new(&control);
        Self { control, messages, nccl }
    }

    pub fn info(&self) -> &WorldInfo {
        self.control.info()
    }

    pub fn control(&self) -> &Control {
        &self.control
    }

    /// Plain MPI messages, whatever else the rank has.
    pub fn messages(&self) -> &Messages {
        &self.messages
    }

    /// Who sums host wire buffers that are not in shared memory: NCCL (on
    /// device copies) where the rank has it, MPI messages otherwise.
    pub fn host_reduce(&self) -> &dyn Reduce {
        match &self.nccl {
            Some(nccl) => nccl,
            None => &self.messages,
        }
    }

    /// NCCL, for exchanges that stay on the GPU.
    pub fn nccl(&self) -> Option<&Nccl> {
        self.nccl.as_ref()
    }
}

/// How ranks on one host exchange gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Shared memory when every rank is on one host, messages otherwise
    Auto,
    /// Always MPI messages (all-to-all + all-gather), as between hosts
    Messages,
}
