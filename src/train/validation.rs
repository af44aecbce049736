//! Validation on the test split: each rank evaluates its shard with rank
//! 0's batch-norm statistics (as DDP does: they differ per rank), and every
//! rank gets the totals.

use std::time::Instant;

use candle_core::{DType, Device};

use super::config::TrainConfig;
use super::fault::{self, FaultKind};
use super::setup::{broadcast_from_rank0, Run};
use crate::comm::WorldInfo;
use crate::data::sampler::shard;
use crate::data::{batch, Dataset};
use crate::model::Network;

/// What a validation pass measured over the whole test split.
#[derive(Clone, Copy, Debug)]
pub(super) struct Validation {
    pub loss: f64,
    pub top1: f64,
    pub top5: f64,
    pub images: usize,
}

/// This rank's sums over its shard of the test split: loss, top-1 hits,
/// top-5 hits (top-k with k = min(5, classes)), and the shard's size.
fn evaluate_shard(
    net: &dyn Network,
    cfg: &TrainConfig,
    ds: &dyn Dataset,
    info: &WorldInfo,
    device: &Device,
) -> anyhow::Result<[f64; 4]> {
    let mine = shard(ds.len(), 0, cfg.seed, info.rank, info.size, false);
    let k = cfg.classes.min(5);
    let (mut loss_sum, mut top1, mut top5) = (0f64, 0u64, 0u64);
    for chunk in mine.chunks(cfg.batch_size.max(1)) {
        let (x, y) = batch(ds, chunk, cfg.image_size, device)?;
        let logits = net.forward_t(&x, false)?;
        loss_sum += f64::from(candle_nn::loss::cross_entropy(&logits, &y)?.to_scalar::<f32>()?) * chunk.len() as f64;
        let logits: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
        let labels: Vec<u32> = y.to_vec1()?;
        for (row, &label) in logits.iter().zip(&labels) {
            let target = row[label as usize];
            // Rank of the true class: how many classes score above it (ties count against it).
            let above =
                row.iter().enumerate().filter(|&(c, &v)| v > target || (v == target && c < label as usize)).count();
            top1 += u64::from(above == 0);
            top5 += u64::from(above < k);
        }
    }
    Ok([loss_sum, top1 as f64, top5 as f64, mine.len() as f64])
}

impl Run<'_> {
    /// Collective: validates with rank 0's batch-norm statistics after step
    /// `step`; None for data without a test split, and for a test split
    /// smaller than the ranks (every shard empty: said on rank 0).
    pub fn validate(&mut self, step: usize) -> anyhow::Result<Option<Validation>> {
        let Some(test) = self.test_data.clone() else { return Ok(None) };
        let (comm, store) = (self.comm, &self.checkpoint.store);
        self.watchdog.watch(step, "the broadcast of rank 0's batch-norm statistics", || {
            broadcast_from_rank0(store, comm, true)
        })?;
        if fault::hits(self.cfg.fault, FaultKind::ValHang, self.info.rank, step) {
            fault::hang_in_validation(self.info.rank, step);
        }
        let mine = evaluate_shard(self.net.as_ref(), self.cfg, test.as_ref(), &self.info, self.device)?;
        let sums = self.watchdog.watch(step, "the validation's totals", || comm.control().all_gather_f64s(&mine))?;
        let total = |i: usize| sums.chunks(4).map(|c| c[i]).sum::<f64>();
        let images = total(3) as usize;
        if images == 0 {
            if self.info.rank == 0 {
                eprintln!(
                    "validation skipped: the test split's {} image(s) leave no whole share for each of {} ranks",
                    test.len(),
                    self.info.size
                );
            }
            return Ok(None);
        }
        let seen = images as f64;
        Ok(Some(Validation { loss: total(0) / seen, top1: total(1) / seen, top5: total(2) / seen, images }))
    }

    /// Collective: after the last step of an epoch that `--val-every`
    /// names (not the run's last: `finish` validates then), validates and
    /// keeps its time out of the throughput.
    pub fn validate_at_epoch_end(&mut self, step: usize) -> anyhow::Result<()> {
        let epochs_done = (step + 1) / self.steps_per_epoch;
        let epoch_end = (step + 1).is_multiple_of(self.steps_per_epoch) && step + 1 < self.total_steps;
        if epoch_end && self.cfg.val_every.is_some_and(|k| k > 0 && epochs_done.is_multiple_of(k)) {
            let started = Instant::now();
            if let Some(v) = self.validate(step + 1)? {
                self.tally.val_history.push((epochs_done, v.top1));
            }
            self.tally.mid_val_s += started.elapsed().as_secs_f64();
        }
        Ok(())
    }
}
