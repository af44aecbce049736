//! The run in its phases: set up, then each step followed by the checks
//! after it and the validation at an epoch's end, then finish.

use candle_core::Device;

use super::config::TrainConfig;
use super::setup;
use crate::comm::Comm;
use crate::record::summary::TrainSummary;

/// Trains; `on_step(step, total, loss, skipped)` sees every step (rank 0 prints from it).
pub fn run(
    cfg: &TrainConfig,
    comm: &Comm,
    device: &Device,
    mut on_step: impl FnMut(usize, usize, f32, bool),
) -> anyhow::Result<TrainSummary> {
    let mut run = setup::Run::prepare(cfg, comm, device)?;
    for step in run.first_step..run.total_steps {
        let skipped = run.step(step)?;
        run.after_step(step)?;
        on_step(step, run.total_steps, run.last_loss, skipped);
        run.validate_at_epoch_end(step)?;
    }
    run.finish()
}
