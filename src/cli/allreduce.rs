//! `candle-mpi allreduce`: the collective benchmark.

use clap::Args;

use candle_mpi::comm::{GradDtype, Transport};
use candle_mpi::study::allreduce::{self, parse_size, AllreduceConfig, Backend};

#[derive(Args)]
pub struct AllreduceArgs {
    /// Smallest buffer, in bytes (K, M, G suffixes: powers of 2)
    #[arg(long, default_value = "1K", value_parser = parse_size, value_name = "BYTES")]
    min_bytes: usize,
    /// Largest buffer, in bytes
    #[arg(long, default_value = "64M", value_parser = parse_size, value_name = "BYTES")]
    max_bytes: usize,
    /// Each size is the previous one times this
    #[arg(long, default_value_t = 2)]
    factor: usize,
    /// Element type on the wire
    #[arg(long, value_enum, default_value_t = GradDtype::F16)]
    dtype: GradDtype,
    /// Timed iterations per size
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Untimed iterations before timing
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Collective library
    #[arg(long, value_enum, default_value_t = Backend::Mpi)]
    backend: Backend,
    /// Which MPI data plane sums the buffers: shared memory on one host, hierarchical across hosts (auto), flat messages, or hierarchical
    #[arg(long, value_enum, default_value_t = Transport::Auto)]
    transport: Transport,
    /// Verify the sums and report elements that are off (#wrong)
    #[arg(long)]
    check: bool,
    /// Also time the full f16 exchange, MPI_Allreduce of f32, and memcpy, in the same run
    #[arg(long)]
    baseline: bool,
    /// Write the rows as JSON to this file (refuses to overwrite)
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
}

pub fn exec(args: &AllreduceArgs) -> anyhow::Result<()> {
    let cfg = AllreduceConfig {
        min_bytes: args.min_bytes,
        max_bytes: args.max_bytes,
        factor: args.factor,
        dtype: args.dtype,
        iters: args.iters,
        warmup: args.warmup,
        check: args.check,
        baseline: args.baseline,
        transport: args.transport,
    };
    allreduce::run_command(&cfg, args.backend, args.json.as_deref())
}
