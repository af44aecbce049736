//! Validation on the test split: each rank evaluates its shard with rank
//! 0's batch-norm statistics (as DDP does: they differ per rank), and every
//! rank gets the totals.

use std::time::Instant;

use candle_core::{DType, Device};

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

/// How a split is read: the input side, the classes (top-k is top-5 or
/// fewer), the images of a batch.
#[derive(Clone, Copy, Debug)]
pub(super) struct Reading {
    pub image_size: usize,
    pub classes: usize,
    pub batch: usize,
}

/// This rank's sums over its shard of a split (in order, unshuffled): loss,
/// top-1 hits, top-5 hits (top-k with k = min(5, classes)), the shard's size.
pub(super) fn evaluate_shard(
    net: &dyn Network,
    ds: &dyn Dataset,
    reading: Reading,
    info: &WorldInfo,
    device: &Device,
) -> anyhow::Result<[f64; 4]> {
    let mine = shard(ds.len(), 0, 0, info.rank, info.size, false);
    let k = reading.classes.min(5);
    let (mut loss_sum, mut top1, mut top5) = (0f64, 0u64, 0u64);
    for chunk in mine.chunks(reading.batch.max(1)) {
        let (x, y) = batch(ds, chunk, reading.image_size, device)?;
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

/// Every rank's sums (as `evaluate_shard` makes them, gathered in rank
/// order) as one validation; None when every shard was empty.
pub(super) fn totals(sums: &[f64]) -> Option<Validation> {
    let total = |i: usize| sums.chunks(4).map(|c| c[i]).sum::<f64>();
    let images = total(3) as usize;
    let seen = images as f64;
    (images > 0).then(|| Validation { loss: total(0) / seen, top1: total(1) / seen, top5: total(2) / seen, images })
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
        let cfg = self.cfg;
        let reading = Reading { image_size: cfg.image_size, classes: cfg.classes, batch: cfg.batch_size };
        let mine = evaluate_shard(self.net.as_ref(), test.as_ref(), reading, &self.info, self.device)?;
        let sums = self.watchdog.watch(step, "the validation's totals", || comm.control().all_gather_f64s(&mine))?;
        let validation = totals(&sums);
        if validation.is_none() && self.info.rank == 0 {
            eprintln!(
                "validation skipped: the test split's {} image(s) leave no whole share for each of {} ranks",
                test.len(),
                self.info.size
            );
        }
        Ok(validation)
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
