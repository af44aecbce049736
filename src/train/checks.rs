//! What follows a step: the checks every rank makes with the others (that
//! all hold the same parameters, `--verify-sync`), the faults injected
//! there, and rank 0's checkpoint.

use std::time::Instant;

use candle_core::{DType, Var};

use super::checkpoint;
use super::fault::{self, FaultKind};
use super::setup::Run;
use crate::host::device;

/// FNV-1a over the bits of every trainable parameter, in name order.
fn parameter_hash(params: &[(String, Var)]) -> anyhow::Result<u64> {
    let mut h = crate::rng::Fnv1a::default();
    for (_, var) in params {
        let values: Vec<f32> = var.as_tensor().to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        for v in values {
            h.add(u64::from(v.to_bits()));
        }
    }
    Ok(h.finish())
}

impl Run<'_> {
    /// Collective (with `--verify-sync`): after step `step`'s update, the
    /// GPU memory peak, the parameter check, and rank 0's checkpoint.
    pub fn after_step(&mut self, step: usize) -> anyhow::Result<()> {
        let (cfg, rank) = (self.cfg, self.info.rank);
        self.tally.gpu_peak_mib = self.tally.gpu_peak_mib.max(device::gpu_memory_in_use_mib(self.device));
        if fault::hits(cfg.fault, FaultKind::Desync, rank, step + 1) {
            let (_, var) = &self.params[0];
            var.set(&(var.as_tensor() + 1e-3)?)?;
        }
        if cfg.verify_sync.is_some_and(|k| k > 0 && (step + 1).is_multiple_of(k)) {
            self.verify_sync(step)?;
        }
        if rank == 0 && cfg.checkpoint_every.is_some_and(|k| k > 0 && (step + 1).is_multiple_of(k)) {
            let crash = fault::hits(cfg.fault, FaultKind::CkptKill, 0, step + 1);
            let slow = fault::hits(cfg.fault, FaultKind::CkptSlow, 0, step + 1);
            self.write_checkpoint(step + 1, crash, slow)?;
        }
        if step == self.first_step {
            self.tally.after_first = Instant::now();
            self.tally.checkpoint_s_first = self.tally.checkpoint_s;
        }
        Ok(())
    }

    /// Collective: every rank's parameter hash against rank 0's.
    fn verify_sync(&mut self, step: usize) -> anyhow::Result<()> {
        self.watchdog.enter(step + 1, "the --verify-sync check");
        let hashes = self.comm.control().all_gather_u64(parameter_hash(&self.params)?)?;
        self.watchdog.leave();
        let differ: Vec<usize> = (1..hashes.len()).filter(|&r| hashes[r] != hashes[0]).collect();
        anyhow::ensure!(
            differ.is_empty(),
            "--verify-sync: after step {} rank(s) {differ:?} hold parameters that differ from rank 0's; the ranks are out of lock-step",
            step + 1
        );
        Ok(())
    }

    /// Rank 0 writes the run's checkpoint after `steps` steps, timed.
    /// `crash_before_rename` and `slow` are the ckpt-kill and ckpt-slow test aids.
    pub fn write_checkpoint(&mut self, steps: usize, crash_before_rename: bool, slow: bool) -> anyhow::Result<()> {
        let started = Instant::now();
        let path = checkpoint::run_path(self.cfg.checkpoint_dir.as_deref())?;
        // The other ranks wait for this one at the next collective: the watchdog excuses it.
        self.watchdog.writing_checkpoint(true);
        if slow {
            eprintln!("rank 0: fault injection: writing the step-{steps} checkpoint 3 s slower");
            std::thread::sleep(std::time::Duration::from_secs(3));
        }
        let written = checkpoint::write_run(&path, &self.checkpoint, &self.sgd, steps, crash_before_rename);
        self.watchdog.writing_checkpoint(false);
        written?;
        self.tally.checkpoint_s += started.elapsed().as_secs_f64();
        Ok(())
    }
}
