//! The start-up check: before any gradient travels, every rank runs what
//! rank 0 runs.

use candle_core::Var;

use super::config::TrainConfig;
use crate::comm::Control;
use crate::exchange::bucket_layout;

/// Collective: before any gradient travels, every rank compares what it is
/// about to run with rank 0 (a hash per field) and all stop, naming the ranks
/// and fields that differ: ranks that disagree on the network, the bucket
/// layout or the flags would otherwise exchange mismatched buffers.
pub(super) fn handshake(cfg: &TrainConfig, params: &[(String, Var)], control: &Control) -> anyhow::Result<()> {
    // 52 bits of each field's hash travel exactly in an f64.
    let hash = |text: String| (crate::rng::hash_str(&text) & ((1 << 52) - 1)) as f64;
    let shapes: String = params.iter().map(|(n, v)| format!("{n}{:?};", v.dims())).collect();
    let fields: [(&str, String); 6] = [
        ("network", format!("{} {} classes {} px", cfg.model, cfg.classes, cfg.image_size)),
        ("parameter shapes", shapes),
        ("gradient dtype", format!("{:?}", cfg.grad_dtype)),
        ("bucket layout", bucket_layout(params, cfg.bucket_bytes, cfg.grad_dtype)),
        ("batch and steps", format!("{} {:?} {}", cfg.batch_size, cfg.steps, cfg.epochs)),
        ("optimizer and seed", format!("{:?} {:?} {}", cfg.lr, cfg.sgd, cfg.seed)),
    ];
    let mine: Vec<f64> = fields.iter().map(|(_, v)| hash(v.clone())).collect();
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
