//! The command line: clap definitions only. One file per subcommand, each an
//! `Args` struct and an `exec()` that turns its flags into one call of the
//! library; `Cli::exec` sets the threads and dispatches.

mod allreduce;
mod bench;
mod bind;
mod eval;
mod export;
mod models;
mod predict;
mod report;
mod train;

use clap::{Args, Parser, Subcommand};

/// Data-parallel CNN training with candle, and the speed-up study around it.
///
/// One worker process per GPU (or per CPU core group), started by mpirun, trains
/// the same network on its own shard of the data; after every backward pass the
/// workers average their gradients in half precision (NCCL on GPUs, MPI on CPUs).
///
/// Networks: AlexNet, VGG16, ResNet50 and GoogLeNet as torchvision defines them
/// (same parameter names and counts), plus a small CNN for tests.
///
/// Examples:
///   candle-mpi models                       the networks, their sizes and costs
///   candle-mpi models --image-size 64 --json
///   mpirun -np 2 candle-mpi allreduce --baseline --check
///                                           fp16 all-reduce bandwidth vs MPI f32
///   mpirun -np 2 candle-mpi train --model small --data mnist:tests/data/digits \
///       --image-size 8 --classes 10 --batch-size 16 --epochs 15
///                                           data-parallel training on 2 ranks
///   candle-mpi bench --models alexnet,resnet50 --workers 1,2,4,8 --image-size 64 --out runs/sweep
///                                           the speed-up sweep (starts mpirun itself)
///   candle-mpi report runs/sweep            tables and figures of a sweep
#[derive(Parser)]
#[command(name = "candle-mpi", version, about, long_about, verbatim_doc_comment)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct GlobalArgs {
    /// Compute threads per process [default: the host's cores divided by the
    /// processes of this job on the host, read from the MPI launcher]
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// List the networks: parameters, input size and forward cost per image.
    ///
    /// Each network is built at the given size and class count and run forward on
    /// one image; the multiply-adds of its convolutions and linear layers are
    /// counted from the shapes that pass produces (torchvision's "GFLOPS" column
    /// counts the same multiply-adds). Parameters exclude batch-norm running
    /// statistics, as torchvision's counts do.
    #[command(verbatim_doc_comment)]
    Models(models::ModelsArgs),
    /// Benchmark the gradient all-reduce, in the shape of nccl-tests' all_reduce_perf.
    ///
    /// Run under mpirun, one process per worker:
    ///   mpirun -np 2 candle-mpi allreduce --min-bytes 2M --max-bytes 128M --baseline --check
    ///
    /// For each size (bytes of the buffer in --dtype) it prints the mean time of
    /// one all-reduce on the slowest rank, the algorithm bandwidth algbw = bytes /
    /// time, and the bus bandwidth busbw = algbw * 2(n-1)/n (what each link
    /// carries in a ring; comparable across rank counts), then the average busbw.
    /// Half-precision sums are accumulated in f32 and rounded once.
    ///
    /// --check fills each rank's buffer with small integers whose sum is exact in
    /// every type and counts the elements off the expected sum (#wrong).
    /// --baseline times, in the same run and for the same element count: the full
    /// exchange (f32 gradients -> scaled f16 -> all-reduce -> f32), plain
    /// MPI_Allreduce of f32 sums, and a local memcpy of the same bytes; exch/f32
    /// is the ratio of the first two.
    #[command(verbatim_doc_comment)]
    Allreduce(allreduce::AllreduceArgs),
    /// Train a network data-parallel: alone, or one process per worker under mpirun.
    ///
    /// Every rank builds the same network (same --seed), checks at start that
    /// every rank runs the same network, shapes, buckets and flags, takes rank
    /// 0's weights, reads its own shard of each epoch (shuffled identically on
    /// every rank), and after each backward pass averages gradients with the
    /// others in --grad-dtype (NCCL on GPUs, MPI on CPUs). A step whose averaged
    /// gradient holds inf or NaN is skipped on every rank and counted; a NaN
    /// loss, or more than --max-skips skips in a row, stops the run. A rank
    /// that waits longer than --collective-timeout for the others ends the job,
    /// naming the step and the ranks that never arrived.
    ///
    /// Times per step and rank: data (waiting for the loader thread), compute
    /// (forward, backward, optimizer), wait (the barrier before the exchange:
    /// how far ahead of the slowest rank), comm (the exchange). The first step
    /// is reported apart (warm-up). --out DIR writes config.json, steps.csv (one
    /// row per step and rank) and summary.json (step time of the slowest rank:
    /// median, mean, std; images/s; s per 5120 images; memory per rank;
    /// validation loss, top-1 and top-5).
    ///
    /// Example, 2 ranks on the digits shipped in tests/data:
    ///   mpirun -np 2 candle-mpi train --model small --data mnist:tests/data/digits \
    ///       --image-size 8 --classes 10 --batch-size 16 --epochs 15 --out runs/digits
    #[command(verbatim_doc_comment)]
    Train(train::TrainArgs),
    /// The speed-up sweep: one mpirun per network, worker count and repeat.
    ///
    /// For each network, each N of --workers and each repeat, starts
    ///   <launcher with {np}=N> [--oversubscribe] [--hostfile F] candle-mpi train ... --out OUT/runs/<run>
    /// on synthetic data (--warmup + --steps steps; the warm-up steps are left out
    /// of the step times). --oversubscribe is added only when N exceeds the host's
    /// cores, and such runs are marked in the records and the report.
    ///
    /// Beside each N > 1 it measures the host's ceiling: N independent
    /// single-process trainings started together, each with one rank's batch and
    /// share of the cores, no exchange. Their summed throughput is what this host
    /// could give N workers if communication were free (--no-ceiling skips it).
    ///
    /// A failed run is recorded with its stderr tail and the sweep goes on; running
    /// the same command again skips the runs already recorded as done, so an
    /// interrupted sweep resumes, provided every setting that shapes a run is the
    /// same (OUT/sweep.json keeps them; --fresh replaces runs made otherwise).
    /// Ctrl-C stops the run under way with its processes, recorded as interrupted.
    /// Then run `candle-mpi report OUT`.
    ///
    /// Weak scaling (--mode weak, default) keeps --batch-size per worker; strong
    /// scaling (--mode strong) splits --global-batch over the workers.
    #[command(verbatim_doc_comment)]
    Bench(bench::BenchArgs),
    /// Tables and figures of a sweep made by `bench`.
    ///
    /// Reads OUT/runs/*/ (run.json and the trainings' summary.json) and writes,
    /// into --out (default: the sweep directory): report.md (machine, tables per
    /// network, figures), runs.csv (every run; the columns of the seed's timing
    /// analysis, type,process,size_dataset,num_epochs,tot_time,iter_time, then
    /// ours), and speedup / breakdown / efficiency as SVG and PNG.
    #[command(verbatim_doc_comment)]
    Report(report::ReportArgs),
    /// Predict step time, images/s and speed-up of N workers (up to 1024 and
    /// beyond) from what one worker and one all-reduce measured.
    ///
    ///   candle-mpi predict --model resnet50 --image-size 64 --classes 10 --from runs/sweep \
    ///       --link-from ar.json --gpus-per-host 2
    ///                                  this machine's sweep and `allreduce --json` record
    ///                                  (give the sweep's --image-size and --classes)
    ///   candle-mpi predict --model resnet50 --batch-size 64 --step-time 0.097 \
    ///       --inside nvlink-h100 --link ib-ndr --gpus-per-host 8 --overlap
    ///                                  hardware not measured here, from named links
    ///   candle-mpi predict --list-links    the named links and their sources
    ///
    /// A step of N workers is one worker's compute and data, plus the exchange
    /// the step waits for, plus the wait for the slowest of N. The exchange is
    /// the training's own bucket plan (--grad-dtype, --bucket-mb, --overlap),
    /// each bucket an all-reduce in the alpha-beta model (ring, flat or
    /// hierarchical over hosts of --gpus-per-host workers; Thakur, Rabenseifner
    /// and Gropp 2005) plus its share of the pack and unpack one worker
    /// measured. With --overlap, buckets leave as backward finishes their
    /// stages and only what ends after backward is waited for. The inputs are
    /// printed above the table; docs/scaling-model.md derives every term and
    /// says where the model is wrong.
    #[command(verbatim_doc_comment)]
    Predict(predict::PredictArgs),
    /// Loss, top-1 and top-5 of a network's weights on a validation split.
    ///
    ///   candle-mpi eval --model resnet50 --init-from resnet50.safetensors --data folder:/data/imagenet
    ///   mpirun -np 4 candle-mpi eval ...        each rank its shard, the totals gathered
    ///
    /// The weights are a safetensors file under torchvision's names
    /// (scripts/torchvision-export.py writes torchvision's own) or a candle-mpi
    /// checkpoint; every parameter and batch-norm buffer must be there with its
    /// shape. Images are read as `train`'s validation reads them (folder data:
    /// resized to 8/7 of the side, centre-cropped).
    #[command(verbatim_doc_comment)]
    Eval(eval::EvalArgs),
    /// Write weights under torchvision's names, for `load_state_dict`.
    ///
    ///   candle-mpi export runs/ckpt/checkpoint.safetensors resnet50.safetensors
    ///                                  a trained network (its momentum left out)
    ///   candle-mpi export --model resnet50 --classes 10 --seed 3 init.safetensors
    ///                                  the initial weights `train --seed 3` starts from
    ///
    /// A `num_batches_tracked` counter (the checkpoint's step, or 0) is written
    /// beside every batch norm, as torchvision's state_dict has one. OUT is
    /// never overwritten.
    #[command(verbatim_doc_comment)]
    Export(export::ExportArgs),
    /// Run a command bound to this rank's share of the host (numactl).
    ///
    /// Under mpirun, for each rank:
    ///   mpirun -np 8 candle-mpi bind --mode numa -- candle-mpi train ...
    /// core: local rank r of n gets the r-th equal slice of the host's cores;
    /// numa: CPUs and memory of the NUMA node of the rank's GPU (sysfs), or, on
    /// CPU runs (--cpu), ranks spread over the nodes. Prints what it did on stderr.
    /// scripts/bind.sh is the same for launch lines written by hand.
    #[command(verbatim_doc_comment)]
    Bind(bind::BindArgs),
}

impl Cli {
    /// Runs the command (the process's compute threads are set first).
    pub fn exec(self) -> anyhow::Result<()> {
        candle_mpi::host::threads::configure(self.global.threads)?;
        match &self.command {
            Command::Models(args) => models::exec(args),
            Command::Allreduce(args) => allreduce::exec(args),
            Command::Train(args) => train::exec(args),
            Command::Bench(args) => bench::exec(args),
            Command::Report(args) => report::exec(args),
            Command::Predict(args) => predict::exec(args),
            Command::Bind(args) => bind::exec(args),
            Command::Eval(args) => eval::exec(args),
            Command::Export(args) => export::exec(args),
        }
    }
}
