//! One step: this rank's batch, forward and backward, the barrier, the
//! exchange (or, with `--overlap`, backward and the exchange together:
//! `overlap.rs`), the update (or the skip every rank makes together), timed
//! by phase into the step's record.

use std::time::Instant;

use candle_core::backprop::GradStore;

use super::fault::{self, FaultKind};
use super::setup::Run;
use crate::data::to_tensors;
use crate::exchange::ExchangeReport;
use crate::record::steps::StepRecord;

/// When each phase of a step ended; the record's times are the gaps.
struct StepClock {
    started: Instant,
    /// The batch is on the device (data: waiting for the loader thread).
    data_ready: Instant,
    /// Forward and backward are done (compute).
    computed: Instant,
    /// Every rank reached the barrier (wait: how far ahead of the slowest).
    all_arrived: Instant,
    /// The mean gradients are back (comm: what the step waited for).
    exchanged: Instant,
    /// The optimizer has run (compute too).
    updated: Instant,
    /// The whole exchange, the part overlapped with backward included.
    exchange_s: f64,
}

/// How a step's gradients were computed and exchanged.
pub(super) struct Exchanged {
    /// The mean gradients (not to be applied when the report says skipped).
    pub grads: GradStore,
    pub report: ExchangeReport,
    /// Backward ended; every rank was at the exchange (the barrier's end,
    /// or `computed` without one).
    pub computed: Instant,
    pub all_arrived: Instant,
    pub exchange_s: Option<f64>,
}

impl StepClock {
    fn record(&self, template: StepRecord) -> StepRecord {
        StepRecord {
            data_s: (self.data_ready - self.started).as_secs_f64(),
            compute_s: (self.computed - self.data_ready).as_secs_f64() + (self.updated - self.exchanged).as_secs_f64(),
            wait_s: (self.all_arrived - self.computed).as_secs_f64(),
            comm_s: (self.exchanged - self.all_arrived).as_secs_f64(),
            exchange_s: self.exchange_s,
            ..template
        }
    }
}

impl Run<'_> {
    /// Collective: runs step `step` (0-based) and records it; true when the
    /// step was skipped for a non-finite gradient.
    pub fn step(&mut self, step: usize) -> anyhow::Result<bool> {
        let (cfg, rank) = (self.cfg, self.info.rank);
        let started = Instant::now();
        let host = self.loader.next()?;
        fault::strike_process(cfg.fault, rank, step + 1)?;
        let data_ready = Instant::now();
        let sent_before = self.comm.sent_between_hosts();
        let done = if cfg.overlap { self.overlapped(host, step)? } else { self.in_turn(host, step)? };
        let between_hosts_bytes = self.comm.sent_between_hosts() - sent_before;
        let exchanged = Instant::now();
        let Exchanged { grads, report, computed, all_arrived, exchange_s } = done;
        let exchange_s = exchange_s.unwrap_or((exchanged - all_arrived).as_secs_f64());
        let lr = cfg.lr.at((step + 1) as f64 / self.steps_per_epoch as f64);
        self.update_or_skip(&report, &grads, lr, step)?;
        let clock =
            StepClock { started, data_ready, computed, all_arrived, exchanged, updated: Instant::now(), exchange_s };
        let template = StepRecord {
            step: step + 1,
            rank,
            epoch: step / self.steps_per_epoch,
            loss: self.last_loss,
            lr,
            data_s: 0.0,
            compute_s: 0.0,
            wait_s: 0.0,
            comm_s: 0.0,
            exchange_s: 0.0,
            samples: cfg.batch_size,
            skipped: report.skipped(),
            between_hosts_bytes,
        };
        self.tally.records.push(clock.record(template));
        Ok(report.skipped())
    }

    /// Forward and backward, the barrier, then the exchange.
    fn in_turn(&mut self, host: crate::data::loader::HostBatch, step: usize) -> anyhow::Result<Exchanged> {
        let mut grads = self.forward_backward(host, step)?;
        let computed = Instant::now();
        // Without the barrier the wait for the slowest rank falls into the exchange.
        let all_arrived = if self.cfg.measure_wait {
            self.watchdog.enter(step + 1, "the barrier before the gradient exchange");
            self.comm.control().barrier()?;
            Instant::now()
        } else {
            self.watchdog.enter(step + 1, "the gradient exchange");
            computed
        };
        let report = self.exchange.exchange(&mut grads, self.comm)?;
        self.watchdog.leave();
        Ok(Exchanged { grads, report, computed, all_arrived, exchange_s: None })
    }

    /// The loss of this rank's batch (kept as `last_loss`) and its gradients.
    fn forward_backward(&mut self, host: crate::data::loader::HostBatch, step: usize) -> anyhow::Result<GradStore> {
        let (cfg, rank) = (self.cfg, self.info.rank);
        let (x, y) = to_tensors(host.pixels, host.labels, self.channels, cfg.image_size, self.device)?;
        let nan = fault::hits(cfg.fault, FaultKind::Nan, rank, step + 1);
        let net = &self.net;
        let (loss, mut grads) = crate::host::threads::on_compute_threads(self.device, || -> candle_core::Result<_> {
            let mut loss = candle_nn::loss::cross_entropy(&net.forward_t(&x, true)?, &y)?;
            if nan {
                loss = (loss * f64::NAN)?;
            }
            let grads = crate::ops::param_grads::backward(&loss)?;
            Ok((loss, grads))
        })?;
        if fault::hits(cfg.fault, FaultKind::Overflow, rank, step + 1) {
            let var = self.params[0].1.as_tensor();
            grads.insert(var, var.ones_like()?.affine(1e9, 0.0)?);
        }
        self.last_loss = loss.to_scalar::<f32>()?;
        Ok(grads)
    }

    /// Applies the mean gradients, or, when the exchange found a non-finite
    /// value, counts the skip (every rank does the same) and stops the run on
    /// a NaN loss or too many skips in a row.
    fn update_or_skip(
        &mut self,
        report: &ExchangeReport,
        grads: &GradStore,
        lr: f64,
        step: usize,
    ) -> anyhow::Result<()> {
        if !report.skipped() {
            self.tally.consecutive_skips = 0;
            self.sgd.step(grads, lr)?;
            return Ok(());
        }
        self.tally.skipped += 1;
        self.tally.consecutive_skips += 1;
        // Every rank skips together, so every rank can afford this check.
        let losses = self.comm.control().all_gather_f64(f64::from(self.last_loss))?;
        let nan: Vec<usize> = (0..losses.len()).filter(|&r| !losses[r].is_finite()).collect();
        anyhow::ensure!(
            nan.is_empty(),
            "step {}: the loss became {} on rank(s) {nan:?}; stopping (the weights were not updated)",
            step + 1,
            losses[nan[0]]
        );
        anyhow::ensure!(
            self.tally.consecutive_skips <= self.cfg.max_skips,
            "step {}: {} steps in a row had a non-finite gradient after the exchange (--max-skips {}); stopping. \
             A smaller --lr, or --grad-dtype bf16/f32, avoids half-precision overflow",
            step + 1,
            self.tally.consecutive_skips,
            self.cfg.max_skips
        );
        Ok(())
    }
}
