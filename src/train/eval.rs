//! `candle-mpi eval`: a network's loss, top-1 and top-5 over the validation
//! split of a data set, with weights from a file (`--init-from`), on one
//! rank or N (each its shard, the totals gathered).

use std::path::PathBuf;

use candle_core::DType;

use super::setup::broadcast_from_rank0;
use super::validation::{evaluate_shard, totals, Reading};
use super::weights;
use crate::data::{source, DataSpec, Split};
use crate::host::device::DeviceKind;
use crate::host::start_rank;
use crate::model::params::ParamStore;
use crate::model::{ModelConfig, ModelKind};

/// What `eval` is asked to measure.
pub struct EvalConfig {
    pub model: ModelKind,
    pub init_from: PathBuf,
    pub data: DataSpec,
    pub image_size: usize,
    pub classes: usize,
    pub batch_size: usize,
}

/// Collective: evaluates and prints the figures on rank 0.
pub fn eval(cfg: &EvalConfig) -> anyhow::Result<()> {
    anyhow::ensure!(cfg.batch_size >= 1, "--batch-size {}: need at least 1 image", cfg.batch_size);
    let test = source::open(&cfg.data, Split::Test, cfg.classes, 0, 0)?.ok_or_else(|| {
        anyhow::anyhow!(
            "--data {}: has no validation split (use mnist:, cifar10: or a folder with train/ and val/)",
            cfg.data
        )
    })?;
    let model_cfg = ModelConfig { in_channels: test.channels(), ..ModelConfig::new(cfg.classes, cfg.image_size) };
    let rank = start_rank(DeviceKind::Cpu, false)?;
    let (info, control) = (rank.comm.info().clone(), rank.comm.control());
    let store = ParamStore::new(0);
    let net = cfg.model.build(&model_cfg, store.var_builder(DType::F32, &rank.device))?;
    let source = format!("--init-from {}", cfg.init_from.display());
    let read = if info.rank == 0 {
        weights::read(&cfg.init_from, "--init-from").and_then(|t| weights::apply(&t, &store, &source))
    } else {
        Ok(())
    };
    control.agree(&source, read)?;
    broadcast_from_rank0(&store, &rank.comm, false)?;
    let reading = Reading { image_size: cfg.image_size, classes: cfg.classes, batch: cfg.batch_size };
    let mine = rank.or_abort(evaluate_shard(net.as_ref(), test.as_ref(), reading, &info, &rank.device))?;
    let sums = control.all_gather_f64s(&mine)?;
    if info.rank == 0 {
        match totals(&sums) {
            Some(v) => println!(
                "{} on {} validation images of {}: top-1 {:.2}%, top-5 {:.2}%, loss {:.4}",
                cfg.model,
                v.images,
                cfg.data,
                v.top1 * 100.0,
                v.top5 * 100.0,
                v.loss
            ),
            None => println!(
                "no validation: the split's {} image(s) leave no whole share for each of {} ranks",
                test.len(),
                info.size
            ),
        }
    }
    Ok(())
}
