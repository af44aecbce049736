//! What a sweep records (`bench` writes them, `report` reads them): each
//! run's plan and outcome (run.json) and the machine (machine.json).

use serde::{Deserialize, Serialize};

use crate::model::ModelKind;

/// Weak scaling keeps the batch per worker; strong keeps the global batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Weak,
    Strong,
}

/// An MPI run of N workers, or the N independent processes of the ceiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    Mpi,
    Ceiling,
}

/// One planned run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    pub model: ModelKind,
    pub mode: Mode,
    pub workers: usize,
    pub repeat: usize,
    pub kind: RunKind,
}

impl RunSpec {
    pub fn name(&self) -> String {
        let kind = match self.kind {
            RunKind::Mpi => "",
            RunKind::Ceiling => "-ceiling",
        };
        format!("{}-{:?}{kind}-n{}-r{}", self.model, self.mode, self.workers, self.repeat).to_lowercase()
    }
}

/// What `run.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    #[serde(flatten)]
    pub spec: RunSpec,
    pub ok: bool,
    /// N exceeded the host's cores: ranks shared cores (marked in the report).
    pub oversubscribed: bool,
    pub batch_per_rank: usize,
    pub threads_per_process: Option<usize>,
    pub command: String,
    pub wall_s: f64,
    /// The last lines of stderr of a failed run.
    pub error: Option<String>,
}

/// What the machine is, for the report: written once per sweep as machine.json.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MachineInfo {
    pub host: String,
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub gpus: Vec<String>,
    pub mpi: String,
    pub nccl: String,
    pub numa_nodes: usize,
}
