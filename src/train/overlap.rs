//! A step with the exchange overlapped with backward (`--overlap`): forward
//! and backward run stage by stage (`staged.rs`) on a compute thread, which
//! hands each stage's gradients over as soon as they are final, while this
//! thread, the only one that calls MPI, sums each bucket once its
//! gradients are all there (`GradExchange::exchange_streamed`). On a GPU the
//! host only queues work, so one thread does both: as each stage's backward
//! is queued, its complete buckets are packed and their sums queued on
//! NCCL's stream (`GradExchange::exchange_overlapped_on_device`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::fault::{self, FaultKind};
use super::setup::Run;
use super::staged;
use super::step::Exchanged;
use crate::data::loader::HostBatch;
use crate::data::to_tensors;
use crate::exchange::{stage_grads, StageGrads, StageHook};
use crate::model::Network;

/// The compute thread's stack: candle's backward walks the graph recursively.
const COMPUTE_STACK_BYTES: usize = 16 << 20;

/// The loss of logits against labels `y` (made NaN by the `nan` fault).
fn loss_of(y: &Tensor, nan: bool) -> impl Fn(&Tensor) -> candle_core::Result<Tensor> + '_ {
    move |logits| {
        let loss = candle_nn::loss::cross_entropy(logits, y)?;
        if nan {
            loss * f64::NAN
        } else {
            Ok(loss)
        }
    }
}

/// One step's forward and backward, as the compute thread runs it.
struct Backward<'a> {
    net: &'a dyn Network,
    x: Tensor,
    y: Tensor,
    /// Test aids: the loss made NaN; this parameter's gradient (exchange
    /// order) made to overflow f16.
    nan: bool,
    overflow: Option<usize>,
    /// The parameters in exchange order, and the stage that finishes each.
    vars: Vec<Var>,
    stage_of: Vec<Option<usize>>,
}

impl Backward<'_> {
    /// Runs forward and backward, sending each stage's gradients as they
    /// are final; sets `gone` when the exchange stopped listening. Returns the loss.
    fn run(self, tx: Sender<StageGrads>, gone: &AtomicBool) -> anyhow::Result<f32> {
        let hand_over = |stage: usize, store: GradStore| {
            let grads = self.stage_grads(stage, &store)?;
            tx.send(StageGrads { stage, grads, at: Instant::now() }).map_err(|_| {
                gone.store(true, Ordering::Release);
                candle_core::Error::Msg("the gradient exchange stopped".into())
            })
        };
        let loss = staged::forward_backward(self.net, &self.x, true, loss_of(&self.y, self.nan), hand_over)?;
        Ok(loss.to_scalar::<f32>()?)
    }

    /// The gradients of stage `stage`'s parameters, by exchange index; an
    /// error for a gradient the plan put in another stage.
    fn stage_grads(&self, stage: usize, store: &GradStore) -> candle_core::Result<Vec<(usize, Tensor)>> {
        let mut grads = stage_grads(&self.vars, &self.stage_of, stage, store)?;
        if let Some(i) = self.overflow.filter(|&i| self.stage_of[i].unwrap_or(0) == stage) {
            grads.retain(|(j, _)| *j != i);
            grads.push((i, self.vars[i].as_tensor().ones_like()?.affine(1e9, 0.0)?));
        }
        Ok(grads)
    }
}

impl Run<'_> {
    /// Collective: forward, backward and the exchange of step `step`
    /// (0-based) together; the loss is kept as `last_loss`.
    pub(super) fn overlapped(&mut self, host: HostBatch, step: usize) -> anyhow::Result<Exchanged> {
        if self.exchange.is_on_device() {
            return self.overlapped_on_device(host, step);
        }
        let (cfg, rank) = (self.cfg, self.info.rank);
        let (x, y) = to_tensors(host.pixels, host.labels, self.channels, cfg.image_size, self.device)?;
        let vars = self.exchange.vars().to_vec();
        // The overflow fault's parameter: the first by name, as without overlap.
        let first = self.params[0].1.as_tensor().id();
        let overflow = fault::hits(cfg.fault, FaultKind::Overflow, rank, step + 1)
            .then(|| vars.iter().position(|v| v.as_tensor().id() == first))
            .flatten();
        let backward = Backward {
            net: self.net.as_ref(),
            x,
            y,
            nan: fault::hits(cfg.fault, FaultKind::Nan, rank, step + 1),
            overflow,
            stage_of: self.exchange.stage_of().to_vec(),
            vars,
        };
        let (exchange, watchdog, comm) = (&mut self.exchange, &mut self.watchdog, self.comm);
        // Set when the exchange stopped first: its error is then the one to tell.
        let gone = AtomicBool::new(false);
        // The sender lives on the compute thread: when it ends, the exchange hears of it.
        let (tx, rx) = mpsc::channel::<StageGrads>();
        let (loss, exchanged) = std::thread::scope(|s| {
            let compute = std::thread::Builder::new()
                .name("candle-mpi-compute".into())
                .stack_size(COMPUTE_STACK_BYTES)
                .spawn_scoped(s, || backward.run(tx, &gone))
                .map_err(|e| anyhow::anyhow!("cannot start the compute thread: {e}"))?;
            let exchanged = exchange.exchange_streamed(comm, rx, &mut |entering| {
                if entering {
                    watchdog.enter(step + 1, "the gradient exchange (overlapped with backward)")
                } else {
                    watchdog.leave()
                }
            });
            let loss = compute.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the compute thread panicked")));
            anyhow::Ok((loss, exchanged))
        })?;
        let (means, streamed) = match (loss, exchanged) {
            (_, Err(e)) if gone.load(Ordering::Acquire) => return Err(e),
            (Err(e), _) | (Ok(_), Err(e)) => return Err(e),
            (Ok(loss), Ok(done)) => {
                self.last_loss = loss;
                done
            }
        };
        let r = streamed.report;
        Ok(Exchanged {
            grads: means,
            report: r,
            computed: streamed.backward_end,
            all_arrived: streamed.backward_end,
            exchange_s: Some(r.pack_s + r.comm_s + r.unpack_s),
        })
    }

    /// Collective, on a GPU: forward, backward and the exchange of step
    /// `step` on this thread, the sums queued on NCCL's stream as stages finish.
    fn overlapped_on_device(&mut self, host: HostBatch, step: usize) -> anyhow::Result<Exchanged> {
        let (cfg, rank) = (self.cfg, self.info.rank);
        let (x, y) = to_tensors(host.pixels, host.labels, self.channels, cfg.image_size, self.device)?;
        let nan = fault::hits(cfg.fault, FaultKind::Nan, rank, step + 1);
        let overflow = fault::hits(cfg.fault, FaultKind::Overflow, rank, step + 1).then(|| self.params[0].1.clone());
        let (exchange, watchdog, comm, net) = (&mut self.exchange, &mut self.watchdog, self.comm, self.net.as_ref());
        let mut backward_end = Instant::now();
        let mut backward = |hook: &mut StageHook<'_>| {
            let mut overflowed = false;
            let hand_over = |stage: usize, mut store: GradStore| {
                if let Some(var) = &overflow {
                    if !overflowed && (store.get(var.as_tensor()).is_some() || stage == 0) {
                        store.insert(var.as_tensor(), var.as_tensor().ones_like()?.affine(1e9, 0.0)?);
                        overflowed = true;
                    }
                }
                hook(stage, store)
            };
            let loss = staged::forward_backward(net, &x, true, loss_of(&y, nan), hand_over)?;
            // Reading the loss waits for backward's kernels; the sums may still run.
            let loss = loss.to_scalar::<f32>()?;
            backward_end = Instant::now();
            watchdog.enter(step + 1, "the gradient exchange (overlapped with backward, on the GPU)");
            anyhow::Ok(loss)
        };
        let result = exchange.exchange_overlapped_on_device(comm, &mut backward);
        self.watchdog.leave();
        let (loss, grads, report) = result?;
        self.last_loss = loss;
        Ok(Exchanged { grads, report, computed: backward_end, all_arrived: backward_end, exchange_s: None })
    }
}
