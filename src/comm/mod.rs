//! The transports under the exchange, in Horovod's split: a control plane
//! (`control.rs`: barrier, gathers, broadcasts, abort; always MPI) apart from
//! the data plane that sums gradient buffers: MPI messages (`messages.rs`),
//! the same in two levels across hosts (`hierarchy.rs`: inside each host,
//! then one host's share between hosts), a shared-memory window where every
//! rank shares one host (`shm.rs`), or NCCL on GPUs (`nccl.rs`, feature `cuda`). `wire.rs` and `simd.rs` are the
//! element types that travel and their conversions, `segments.rs` how a
//! buffer is shared out between ranks, `waiting.rs` how a rank waits for
//! the data planes' calls, `world.rs` the MPI process itself.
//! Everything around the call (order, buckets, scaling, checks) is the
//! exchange's (`crate::exchange`).

pub mod control;
pub mod hierarchy;
pub mod messages;
#[cfg(feature = "cuda")]
pub mod nccl;
#[cfg(not(feature = "cuda"))]
#[path = "nccl_absent.rs"]
pub mod nccl;
pub mod segments;
pub mod shm;
pub mod simd;
pub mod waiting;
pub mod wire;
pub mod world;

pub use self::control::Control;
pub use self::hierarchy::Hierarchy;
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
    hierarchy: Option<Hierarchy>,
    nccl: Option<Nccl>,
}

impl Comm {
    /// Collective. Ranks whose gradients live on the host: MPI carries everything.
    pub fn mpi(world: World) -> anyhow::Result<Self> {
        Self::new(Control::new(world), None)
    }

    /// Collective: the control plane, the data planes of host memory, and
    /// NCCL for GPU ranks.
    pub fn new(control: Control, nccl: Option<Nccl>) -> anyhow::Result<Self> {
        let messages = Messages::new(&control);
        let hierarchy = Hierarchy::new(&control)?;
        Ok(Self { control, messages, hierarchy, nccl })
    }

    pub fn info(&self) -> &WorldInfo {
        self.control.info()
    }

    /// Hosts the ranks run on.
    pub fn host_count(&self) -> usize {
        self.control.world().hosts().len()
    }

    pub fn control(&self) -> &Control {
        &self.control
    }

    /// Plain MPI messages, whatever else the rank has.
    pub fn messages(&self) -> &Messages {
        &self.messages
    }

    /// Who sums host wire buffers that are not in shared memory: NCCL (on
    /// device copies) where the rank has it; else the hierarchical exchange
    /// where the ranks span hosts evenly and `transport` allows; else flat
    /// MPI messages.
    pub fn host_reduce(&self, transport: Transport) -> &dyn Reduce {
        match (&self.nccl, self.hierarchy_for(transport)) {
            (Some(nccl), _) => nccl,
            (None, Some(h)) => h,
            (None, None) => &self.messages,
        }
    }

    /// The hierarchical data plane, where the ranks span hosts evenly and
    /// `transport` allows it.
    fn hierarchy_for(&self, transport: Transport) -> Option<&Hierarchy> {
        self.hierarchy.as_ref().filter(|_| transport != Transport::Messages)
    }

    /// Refuses a transport the job's layout cannot give.
    pub fn check_transport(&self, transport: Transport) -> anyhow::Result<()> {
        if transport == Transport::Hierarchical && self.nccl.is_some() {
            anyhow::bail!("--transport hierarchical: GPU ranks exchange through NCCL; leave --transport auto");
        }
        if transport == Transport::Hierarchical && self.hierarchy.is_none() {
            let sizes: Vec<usize> = self.control.world().hosts().iter().map(Vec::len).collect();
            anyhow::bail!(
                "--transport hierarchical: needs ranks on 2 or more hosts with as many ranks on each; this job has \
                 {} host(s) with {sizes:?} rank(s); use auto or messages",
                sizes.len()
            );
        }
        Ok(())
    }

    /// True where host buffers take the hierarchical exchange under `transport`.
    pub fn is_hierarchical(&self, transport: Transport) -> bool {
        self.nccl.is_none() && self.hierarchy_for(transport).is_some()
    }

    /// Bytes this rank has sent to ranks on other hosts through MPI data planes.
    pub fn sent_between_hosts(&self) -> u64 {
        self.messages.sent_between_hosts() + self.hierarchy.as_ref().map_or(0, Hierarchy::sent_between_hosts)
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
    /// Shared memory when every rank is on one host; across hosts with as
    /// many ranks on each, hierarchical; else messages
    Auto,
    /// Always flat MPI messages (all-to-all + all-gather over every rank)
    Messages,
    /// Inside each host first, then one host's share between hosts (needs 2 or more hosts with as many ranks on each)
    Hierarchical,
}
