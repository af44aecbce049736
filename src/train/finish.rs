//! The end of a run: rank 0's last checkpoint, the final validation, every
//! rank's records gathered, and the summary they reduce to.

use candle_core::{DType, Var};

use super::setup::Run;
use crate::host::device;
use crate::host::memory::peak_rss_mib;
use crate::record::steps::{self, step_stats};
use crate::record::summary::TrainSummary;

/// L2 norm of all the parameters, accumulated in f64.
fn param_l2(params: &[(String, Var)]) -> anyhow::Result<f64> {
    let mut sum = 0f64;
    for (_, var) in params {
        let values: Vec<f32> = var.as_tensor().to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        sum += values.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>();
    }
    Ok(sum.sqrt())
}

impl Run<'_> {
    /// Collective: finishes the run and returns what it measured.
    pub fn finish(mut self) -> anyhow::Result<TrainSummary> {
        let (cfg, info) = (self.cfg, self.info.clone());
        let run_steps = self.total_steps.saturating_sub(self.first_step);
        if info.rank == 0 && cfg.checkpoint_dir.is_some() && run_steps > 0 {
            self.write_checkpoint(self.total_steps, false, false)?;
        }
        let t = &self.tally;
        let seconds = t.after_first.elapsed().as_secs_f64() - t.mid_val_s - (t.checkpoint_s - t.checkpoint_s_first);
        let validation = self.validate(self.total_steps)?;
        if let Some(v) = validation {
            self.tally.val_history.push((self.total_steps / self.steps_per_epoch, v.top1));
        }
        let (control, last) = (self.comm.control(), self.total_steps);
        let mine = &self.tally.records;
        let records = self.watchdog.watch(last, "gathering the step records", || steps::gather(mine, control))?;
        let times = step_stats(&records, info.size, cfg.warmup_steps);
        let global_batch = cfg.batch_size * info.size;
        let images_per_s = global_batch as f64 / times.step_s_median.max(1e-12);
        let memory = "gathering the memory figures";
        let peak_rss_mib = self.watchdog.watch(last, memory, || control.all_gather_f64(peak_rss_mib()))?;
        let gpu_peak = self.tally.gpu_peak_mib;
        let gpu_mem_peak_mib = match self.device.is_cuda() {
            true => Some(self.watchdog.watch(last, memory, || control.all_gather_f64(gpu_peak))?),
            false => None,
        };
        // -1 marks a GPU without memory pools: the figure is kept where every rank has it.
        let tensor_peak = device::gpu_tensor_peak_mib(self.device);
        let gpu_tensor_peak_mib = match self.device.is_cuda() {
            true => Some(self.watchdog.watch(last, memory, || control.all_gather_f64(tensor_peak.unwrap_or(-1.0)))?)
                .filter(|peaks| peaks.iter().all(|&p| p >= 0.0)),
            false => None,
        };
        let summary = TrainSummary {
            model: cfg.model,
            device: if self.device.is_cuda() { "cuda" } else { "cpu" },
            world_size: info.size,
            batch_per_rank: cfg.batch_size,
            global_batch,
            image_size: cfg.image_size,
            grad_dtype: cfg.grad_dtype,
            overlap: cfg.overlap,
            steps: self.total_steps,
            resumed_from_step: self.first_step,
            images: run_steps * global_batch,
            seconds,
            times,
            images_per_s,
            s_per_5120_images: 5120.0 / images_per_s,
            checkpoint_s: self.tally.checkpoint_s,
            peak_rss_mib,
            gpu_mem_peak_mib,
            gpu_tensor_peak_mib,
            skipped_steps: self.tally.skipped,
            final_loss: self.last_loss,
            param_l2: param_l2(&self.params)?,
            val_loss: validation.map(|v| v.loss),
            val_top1: validation.map(|v| v.top1),
            val_top5: validation.map(|v| v.top5),
            val_images: validation.map_or(0, |v| v.images),
            val_history: std::mem::take(&mut self.tally.val_history),
            records,
        };
        // Every rank is here: the shared windows are freed together.
        self.exchange.release()?;
        self.watchdog.release()?;
        Ok(summary)
    }
}
