//! `candle-mpi bench`: the speed-up sweep.

use clap::Args;

use candle_mpi::comm::GradDtype;
use candle_mpi::data::DataSpec;
use candle_mpi::host::bind::BindMode;
use candle_mpi::host::device::DeviceKind;
use candle_mpi::model::ModelKind;
use candle_mpi::record::sweep::Mode;
use candle_mpi::study::sweep::{self, BenchConfig};
use candle_mpi::train::Overlap;

#[derive(Args)]
pub struct BenchArgs {
    /// Networks, comma separated
    #[arg(long, value_delimiter = ',', required = true, value_name = "NAMES")]
    models: Vec<ModelKind>,
    /// Worker counts, comma separated
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8", value_name = "N,...")]
    workers: Vec<usize>,
    /// weak: --batch-size per worker; strong: --global-batch split over the workers
    #[arg(long, value_enum, default_value_t = Mode::Weak)]
    mode: Mode,
    /// Images per worker per step (weak scaling)
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Images per step over all workers (strong scaling); must divide by every worker count
    #[arg(long, value_name = "G")]
    global_batch: Option<usize>,
    /// Input side in pixels [default: the network's own]
    #[arg(long, value_name = "PIXELS")]
    image_size: Option<usize>,
    /// Classes of the classifier
    #[arg(long, default_value_t = 1000, value_name = "K")]
    classes: usize,
    /// Timed steps per run
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Steps before the timed ones (left out of the step times)
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Runs of each network and worker count (speed-ups get a mean and std)
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Where each rank computes
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
    /// Element type gradients travel in
    #[arg(long, value_enum, default_value_t = GradDtype::F16)]
    grad_dtype: GradDtype,
    /// Each run's `train --overlap` (auto: on across hosts, off on one host)
    #[arg(long, value_enum, default_value_t = Overlap::Auto, num_args = 0..=1, default_missing_value = "on",
          value_name = "auto|on|off")]
    overlap: Overlap,
    /// Pin each rank with numactl (see `candle-mpi bind --help`)
    #[arg(long, value_enum, default_value_t = BindMode::None)]
    bind: BindMode,
    /// How to start N workers; {np} is replaced by N, the train command is appended
    #[arg(long, default_value = "mpirun -np {np}", value_name = "TEMPLATE")]
    launcher: String,
    /// Passed to the launcher as --hostfile F (several hosts)
    #[arg(long, value_name = "FILE")]
    hostfile: Option<std::path::PathBuf>,
    /// Data of every run (see `train --help`)
    #[arg(long, default_value = "synthetic")]
    data: DataSpec,
    /// Skip the host-ceiling runs
    #[arg(long)]
    no_ceiling: bool,
    /// Kill a run that takes longer than this, in seconds (recorded as failed)
    #[arg(long, default_value_t = 1800, value_name = "S")]
    run_timeout: u64,
    /// Directory of the sweep (created; an interrupted sweep there resumes
    /// when its settings are the same)
    #[arg(long, value_name = "DIR")]
    out: std::path::PathBuf,
    /// Replace the runs an earlier sweep recorded in --out instead of resuming
    #[arg(long)]
    fresh: bool,
}

pub fn exec(args: &BenchArgs) -> anyhow::Result<()> {
    let cfg = BenchConfig {
        exe: std::env::current_exe()?,
        models: args.models.clone(),
        workers: args.workers.clone(),
        mode: args.mode,
        batch_size: args.batch_size,
        global_batch: args.global_batch,
        image_size: args.image_size,
        classes: args.classes,
        steps: args.steps,
        warmup: args.warmup,
        repeat: args.repeat,
        device: args.device,
        grad_dtype: args.grad_dtype,
        overlap: args.overlap,
        bind: args.bind,
        launcher: args.launcher.clone(),
        hostfile: args.hostfile.clone(),
        data: args.data.to_string(),
        ceiling: !args.no_ceiling,
        run_timeout: std::time::Duration::from_secs(args.run_timeout),
        out: args.out.clone(),
        fresh: args.fresh,
    };
    sweep::run(&cfg)
}
