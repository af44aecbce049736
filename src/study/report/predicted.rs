//! The performance model beside a sweep (`report --predict-link ...`): for
//! each network, the curve `predict` draws from the sweep's own 1-worker
//! runs and the links given, out to the worker count asked for, and a
//! table of predicted against measured speed-up where both exist.

use std::path::Path;

use crate::comm::GradDtype;
use crate::model::ModelKind;
use crate::study::predict::collective::Algorithm;
use crate::study::predict::request::{ComputeFrom, LinkFrom, PredictRequest};
use crate::study::predict::{self, PredictedRow};

use super::rows::Series;

/// What the model is drawn with.
#[derive(Clone, Debug)]
pub struct PredictOptions {
    pub between: LinkFrom,
    pub inside: Option<LinkFrom>,
    pub per_host: usize,
    pub algorithm: Algorithm,
    /// The largest worker count drawn.
    pub up_to: usize,
}

/// One network's predicted curve, with its inputs as text.
pub struct Curve {
    pub label: String,
    pub model: ModelKind,
    pub rows: Vec<PredictedRow>,
    pub inputs: String,
}

/// The `train` flags of the sweep's first 1-worker run of `model` (config.json's args).
fn one_worker_args(dir: &Path, model: ModelKind) -> anyhow::Result<serde_json::Value> {
    let mut runs: Vec<_> = std::fs::read_dir(dir.join("runs"))?.flatten().map(|e| e.path()).collect();
    runs.sort();
    for run in runs {
        let Ok(text) = std::fs::read_to_string(run.join("run.json")) else { continue };
        let rec: serde_json::Value = serde_json::from_str(&text)?;
        let fits = rec["ok"] == true
            && rec["workers"] == 1
            && rec["kind"].as_str().is_some_and(|k| k.eq_ignore_ascii_case("mpi"))
            && rec["model"].as_str() == Some(model.to_string().as_str());
        if fits {
            let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("config.json"))?)?;
            return Ok(config["args"].clone());
        }
    }
    anyhow::bail!("{}: no finished 1-worker run of {model} to predict from", dir.display())
}

fn grad_dtype(name: Option<&str>) -> GradDtype {
    match name {
        Some("bf16") => GradDtype::Bf16,
        Some("f32") => GradDtype::F32,
        _ => GradDtype::F16,
    }
}

/// The predicted curve of every network of `series` (weak scaling) measured in `dir`.
pub fn curves(dir: &Path, series: &Series, opts: &PredictOptions) -> anyhow::Result<Vec<Curve>> {
    let mut out = vec![];
    for ((model, mode), rows) in series {
        if mode != "weak" {
            continue;
        }
        let args = one_worker_args(dir, *model)?;
        let mut workers: Vec<usize> = rows.iter().map(|r| r.workers).collect();
        let mut n = 1;
        while n <= opts.up_to {
            workers.push(n);
            n *= 2;
        }
        workers.sort_unstable();
        workers.dedup();
        let request = PredictRequest {
            model: *model,
            image_size: args["image_size"].as_u64().map_or(model.default_image_size(), |s| s as usize),
            classes: args["classes"].as_u64().unwrap_or(1000) as usize,
            batch: None,
            compute: ComputeFrom::Records(dir.to_path_buf()),
            grad_dtype: grad_dtype(args["grad_dtype"].as_str()),
            bucket_bytes: (args["bucket_mb"].as_f64().unwrap_or(25.0) * 1024.0 * 1024.0) as usize,
            // auto overlaps across hosts: every count above one is across hosts with one worker a host.
            overlap: match args["overlap"].as_str() {
                Some("on") => true,
                Some("auto") => opts.per_host == 1,
                _ => args["overlap"].as_bool().unwrap_or(false),
            },
            backward_share: 0.67,
            between: opts.between.clone(),
            inside: opts.inside.clone(),
            per_host: opts.per_host,
            algorithm: opts.algorithm,
            workers,
        };
        let cfg = request.resolve()?;
        out.push(Curve {
            label: format!("{model}: predicted"),
            model: *model,
            rows: predict::predict(&cfg),
            inputs: predict::describe(&cfg),
        });
    }
    Ok(out)
}

/// The report's section: each curve's inputs, and predicted against measured.
pub fn section(curves: &[Curve], series: &Series) -> String {
    let mut md = String::from(
        "\n## Predicted (`candle-mpi predict`'s model, from this sweep's 1-worker runs)\n\n\
         The dotted lines of the speed-up figure. Measured speed-ups are means over the repeats; \
         ratio = measured / predicted.\n",
    );
    for c in curves {
        md.push_str(&format!("\n### {}\n\n```\n{}```\n\n", c.model, c.inputs));
        md.push_str(
            "| workers | predicted step s | predicted speed-up | measured speed-up | ratio |\n|---|---|---|---|---|\n",
        );
        let measured = series.iter().find(|((m, mode), _)| *m == c.model && mode == "weak").map(|(_, r)| r);
        for r in &c.rows {
            let m = measured.and_then(|rows| rows.iter().find(|x| x.workers == r.workers && x.speedup.n > 0));
            let (ms, ratio) = match m {
                Some(x) => (
                    format!("{:.2} ± {:.2}", x.speedup.mean, x.speedup.std),
                    format!("{:.2}", x.speedup.mean / r.speedup),
                ),
                None => ("-".into(), "-".into()),
            };
            md.push_str(&format!("| {} | {:.4} | {:.2} | {ms} | {ratio} |\n", r.workers, r.step_s, r.speedup));
        }
    }
    md
}
