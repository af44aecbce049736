//! The start-up check: before any gradient travels, every rank runs what
//! rank 0 runs.

use candle_core::Var;

use super::config::TrainConfig;
use crate::comm::Control;
use crate::exchange::bucket_layout;

/// What every rank must agree on, each named by the flag that sets it: a
/// difference in any of them would make ranks run different collectives or
/// exchange mismatched buffers. The build's parameter shapes and bucket
/// layout come last, to catch different builds of the same command.
fn fields(cfg: &TrainConfig, params: &[(String, Var)], data: &str) -> Vec<(&'static str, String)> {
    let shapes: String = params.iter().map(|(n, v)| format!("{n}{:?};", v.dims())).collect();
    vec![
        ("--model", cfg.model.to_string()),
        ("--classes", cfg.classes.to_string()),
        ("--image-size", cfg.image_size.to_string()),
        ("--batch-size/--global-batch", cfg.batch_size.to_string()),
        ("--epochs", cfg.epochs.to_string()),
        ("--steps", format!("{:?}", cfg.steps)),
        ("--lr/--lr-schedule/--warmup-epochs/--scale-lr", format!("{:?}", cfg.lr)),
        ("--momentum/--nesterov/--weight-decay", format!("{:?}", cfg.sgd)),
        ("--grad-dtype", format!("{:?}", cfg.grad_dtype)),
        ("--bucket-mb", cfg.bucket_bytes.to_string()),
        ("--transport", format!("{:?}", cfg.transport)),
        ("--measure-wait", cfg.measure_wait.to_string()),
        ("--overlap", cfg.overlap.to_string()),
        ("--seed", cfg.seed.to_string()),
        ("--data/--synthetic-size", data.to_string()),
        ("--dropout", format!("{:?}", cfg.dropout)),
        ("--verify-sync", format!("{:?}", cfg.verify_sync)),
        ("--resume", cfg.resume.to_string()),
        ("--checkpoint-every", format!("{:?}", cfg.checkpoint_every)),
        ("--val-every", format!("{:?}", cfg.val_every)),
        ("--warmup-steps", cfg.warmup_steps.to_string()),
        ("--max-skips", cfg.max_skips.to_string()),
        ("parameter shapes", shapes),
        ("bucket layout", bucket_layout(params, cfg.bucket_bytes, cfg.grad_dtype)),
    ]
}

/// Collective, the first of a run: every rank compares what it is about to
/// run with rank 0 (a hash per field) and all stop, naming the ranks and the
/// flags that differ. `data` describes this rank's data set (paths may differ
/// between hosts; kind, sizes and channels may not).
pub(super) fn handshake(
    cfg: &TrainConfig,
    params: &[(String, Var)],
    data: &str,
    control: &Control,
) -> anyhow::Result<()> {
    // 52 bits of each field's hash travel exactly in an f64.
    let hash = |text: &str| (crate::rng::hash_str(text) & ((1 << 52) - 1)) as f64;
    let fields = fields(cfg, params, data);
    let mine: Vec<f64> = fields.iter().map(|(_, v)| hash(v)).collect();
    let all = control.all_gather_f64s(&mine)?;
    let n = fields.len();
    let mut differ = vec![];
    for (r, theirs) in all.chunks(n).enumerate().skip(1) {
        let names: Vec<&str> = (0..n).filter(|&i| theirs[i] != all[i]).map(|i| fields[i].0).collect();
        if !names.is_empty() {
            differ.push(format!("rank {r} ({})", names.join(", ")));
        }
    }
    anyhow::ensure!(
        differ.is_empty(),
        "start-up check: {} differ from rank 0; every rank must run the same command and build",
        differ.join("; ")
    );
    Ok(())
}
