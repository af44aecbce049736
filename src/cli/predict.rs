//! `candle-mpi predict`: speed-up of N workers from what one worker and one
//! all-reduce measured.

use clap::Args;

use candle_mpi::comm::GradDtype;
use candle_mpi::model::ModelKind;
use candle_mpi::record::files::{check_new_file, write_atomic};
use candle_mpi::study::predict::collective::Algorithm;
use candle_mpi::study::predict::request::{ComputeFrom, LinkFrom, PredictRequest};
use candle_mpi::study::predict::{self, presets};

#[derive(Args)]
pub struct PredictArgs {
    /// Network whose gradients are exchanged
    #[arg(long, value_enum, required_unless_present = "list_links")]
    model: Option<ModelKind>,
    /// Input side in pixels [default: the network's own]
    #[arg(long, value_name = "PIXELS")]
    image_size: Option<usize>,
    /// Classes of the classifier (the last layer's size)
    #[arg(long, default_value_t = 1000, value_name = "K")]
    classes: usize,
    /// Images per worker per step [default: the records']
    #[arg(long)]
    batch_size: Option<usize>,
    /// One worker's step from records: a `train --out` directory (summary.json)
    /// or a `bench` sweep (its 1-worker runs of --model)
    #[arg(long, value_name = "DIR", group = "compute")]
    from: Option<std::path::PathBuf>,
    /// One worker's step in seconds, for hardware not measured here
    #[arg(long, value_name = "SECONDS", group = "compute")]
    step_time: Option<f64>,
    /// One worker's images per second, for hardware not measured here
    #[arg(long, value_name = "RATE", group = "compute")]
    images_per_s: Option<f64>,
    /// Element type gradients travel in
    #[arg(long, value_enum, default_value_t = GradDtype::F16)]
    grad_dtype: GradDtype,
    /// Size of a gradient bucket, in MiB (as `train --bucket-mb`)
    #[arg(long, default_value_t = 25.0)]
    bucket_mb: f64,
    /// Overlap the exchange with backward (as `train --overlap`)
    #[arg(long)]
    overlap: bool,
    /// Backward's part of one worker's compute
    #[arg(long, default_value_t = 0.67, value_name = "FRACTION")]
    backward_share: f64,
    /// The link between hosts, by name (--list-links prints them with their sources)
    #[arg(long, value_name = "PRESET", group = "between")]
    link: Option<String>,
    /// The link between hosts, fitted to an `allreduce --json` record
    #[arg(long, value_name = "FILE", group = "between")]
    link_from: Option<std::path::PathBuf>,
    /// The link inside a host, by name [default: the link between hosts]
    #[arg(long, value_name = "PRESET", group = "inside_link")]
    inside: Option<String>,
    /// The link inside a host, fitted to an `allreduce --json` record
    #[arg(long, value_name = "FILE", group = "inside_link")]
    inside_from: Option<std::path::PathBuf>,
    /// Workers on each host
    #[arg(long, default_value_t = 8, value_name = "G")]
    gpus_per_host: usize,
    /// How the gradients are summed across hosts
    #[arg(long, value_enum, default_value_t = Algorithm::Ring)]
    algorithm: Algorithm,
    /// Worker counts, comma separated
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32,64,128,256,512,1024", value_name = "N,...")]
    workers: Vec<usize>,
    /// Also write the inputs and rows as JSON (a new file)
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
    /// Print the named links with their figures and sources, and stop
    #[arg(long)]
    list_links: bool,
}

pub fn exec(args: &PredictArgs) -> anyhow::Result<()> {
    if args.list_links {
        for l in presets::all() {
            println!("{:<18} {:>8.3} GB/s {:>6.1} us  {}", l.name, l.bandwidth / 1e9, l.alpha_s * 1e6, l.source);
        }
        return Ok(());
    }
    let model = args.model.ok_or_else(|| anyhow::anyhow!("--model: name the network whose gradients travel"))?;
    let compute = match (&args.from, args.step_time, args.images_per_s) {
        (Some(dir), _, _) => ComputeFrom::Records(dir.clone()),
        (_, Some(s), _) => ComputeFrom::StepTime(s),
        (_, _, Some(r)) => ComputeFrom::ImagesPerS(r),
        _ => anyhow::bail!(
            "one worker's step is missing: give --from DIR (a training's or a sweep's records), \
             --step-time SECONDS or --images-per-s RATE"
        ),
    };
    let link = |preset: &Option<String>, file: &Option<std::path::PathBuf>| match (preset, file) {
        (Some(name), _) => Some(LinkFrom::Preset(name.clone())),
        (_, Some(path)) => Some(LinkFrom::Fitted(path.clone())),
        _ => None,
    };
    anyhow::ensure!(
        args.bucket_mb.is_finite() && args.bucket_mb > 0.0,
        "--bucket-mb {}: give a positive size",
        args.bucket_mb
    );
    if let Some(path) = &args.json {
        check_new_file(path, "--json")?;
    }
    let between = link(&args.link, &args.link_from).ok_or_else(|| {
        anyhow::anyhow!("the link between hosts is missing: give --link PRESET (see --list-links) or --link-from FILE")
    })?;
    let request = PredictRequest {
        model,
        image_size: args.image_size.unwrap_or(model.default_image_size()),
        classes: args.classes,
        batch: args.batch_size,
        compute,
        grad_dtype: args.grad_dtype,
        bucket_bytes: (args.bucket_mb * 1024.0 * 1024.0) as usize,
        overlap: args.overlap,
        backward_share: args.backward_share,
        between,
        inside: link(&args.inside, &args.inside_from),
        per_host: args.gpus_per_host,
        algorithm: args.algorithm,
        workers: args.workers.clone(),
    };
    let cfg = request.resolve()?;
    let rows = predict::predict(&cfg);
    println!("{model} at {} px, predicted\n{}", request.image_size, predict::describe(&cfg));
    print!("{}", predict::table(&rows));
    if let Some(path) = &args.json {
        let doc = serde_json::json!({ "inputs": cfg, "rows": rows });
        write_atomic(path, serde_json::to_string_pretty(&doc)?.as_bytes())?;
    }
    Ok(())
}
