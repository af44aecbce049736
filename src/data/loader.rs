//! Batches made ahead of the model in a background thread: the thread reads
//! this rank's shard step by step and keeps up to `DEPTH` batches ready; the
//! trainer records how long it waits for one (the data time).

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::sampler::shard;
use super::{stack, Dataset};

/// Batches held ready ahead of the model.
const DEPTH: usize = 2;

/// One batch on the host: pixels (N, C, size, size) and labels.
pub struct HostBatch {
    pub pixels: Vec<f32>,
    pub labels: Vec<u32>,
}

/// Which batches to make.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub first_step: usize,
    pub last_step: usize,
    pub steps_per_epoch: usize,
    pub batch: usize,
    pub size: usize,
    pub seed: u64,
    pub rank: usize,
    pub world: usize,
}

pub struct Loader {
    rx: Receiver<anyhow::Result<HostBatch>>,
    thread: Option<JoinHandle<()>>,
}

impl Loader {
    pub fn spawn(ds: Arc<dyn Dataset>, plan: Plan) -> Self {
        let (tx, rx) = sync_channel(DEPTH);
        let thread = std::thread::Builder::new()
            .name("candle-mpi-loader".into())
            .spawn(move || {
                let mut order = vec![];
                let mut epoch = usize::MAX;
                for step in plan.first_step..plan.last_step {
                    if step / plan.steps_per_epoch != epoch {
                        epoch = step / plan.steps_per_epoch;
                        order = shard(ds.len(), epoch as u64, plan.seed, plan.rank, plan.world, true);
                    }
                    let at = (step % plan.steps_per_epoch) * plan.batch;
                    let batch = stack(ds.as_ref(), &order[at..at + plan.batch], plan.size, Some(epoch as u64))
                        .map(|(pixels, labels)| HostBatch { pixels, labels })
                        .map_err(|e| e.context(format!("the batch of step {}", step + 1)));
                    let failed = batch.is_err();
                    if tx.send(batch).is_err() || failed {
                        return; // the trainer stopped early, or will stop on this error
                    }
                }
            })
            .expect("spawn the data loader thread");
        Self { rx, thread: Some(thread) }
    }

    /// The next batch, waiting for the thread if it is behind.
    pub fn next(&self) -> anyhow::Result<HostBatch> {
        self.rx.recv().map_err(|_| {
            anyhow::anyhow!("the data loader thread stopped before the last step (did it panic? see above)")
        })?
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Unblock the thread (its next send fails), then wait for it.
        let (_, dead) = sync_channel(0);
        self.rx = dead;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Synthetic;

    #[test]
    fn loader_yields_the_sampler_order_and_stops_early_cleanly() {
        let ds: Arc<dyn Dataset> = Arc::new(Synthetic { len: 40, classes: 5, seed: 3 });
        let plan =
            Plan { first_step: 3, last_step: 9, steps_per_epoch: 5, batch: 4, size: 2, seed: 3, rank: 1, world: 2 };
        let loader = Loader::spawn(ds.clone(), plan);
        for step in 3..9 {
            let b = loader.next().unwrap();
            let order = shard(40, (step / 5) as u64, 3, 1, 2, true);
            let want: Vec<u32> = order[(step % 5) * 4..(step % 5) * 4 + 4]
                .iter()
                .map(|&i| ds.sample(i, 2, &mut [0.0; 12]).unwrap())
                .collect();
            assert_eq!(b.labels, want, "step {step}");
            assert_eq!(b.pixels.len(), 4 * 12);
        }
        assert!(loader.next().is_err(), "no batch past the last step");
        // Dropped while the thread still has work: must not hang.
        drop(Loader::spawn(ds, Plan { last_step: 1000, ..plan }));
    }
}
