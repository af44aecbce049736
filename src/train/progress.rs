//! What rank 0 shows while a run trains (a bar on a terminal, a line every
//! `--log-every` steps in logs and pipes) and the summary lines at the end;
//! other ranks say only what went wrong.

use indicatif::{ProgressBar, ProgressStyle};

use crate::comm::WorldInfo;
use crate::record::human::duration;
use crate::record::summary::TrainSummary;

pub(super) struct Progress {
    lead: bool,
    rank: usize,
    log_every: usize,
    on_terminal: bool,
    images_per_step: f64,
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn new(info: &WorldInfo, log_every: usize, batch_per_rank: usize) -> Self {
        Self {
            lead: info.rank == 0,
            rank: info.rank,
            log_every: log_every.max(1),
            on_terminal: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            images_per_step: (batch_per_rank * info.size) as f64,
            bar: None,
        }
    }

    /// Step `step` (0-based) of `total` is done.
    pub fn step(&mut self, step: usize, total: usize, loss: f32, skipped: bool) {
        if self.lead && self.on_terminal {
            let b = self.bar.get_or_insert_with(|| {
                let b = ProgressBar::new(total as u64);
                b.set_style(
                    ProgressStyle::with_template("{bar:40} {pos}/{len} steps  eta {eta}  {msg}")
                        .expect("valid progress template"),
                );
                b.set_position(step as u64);
                b
            });
            b.set_position(step as u64 + 1);
            let rate = (step + 1) as f64 * self.images_per_step / b.elapsed().as_secs_f64().max(1e-9);
            b.set_message(format!("loss {loss:.4}  {rate:.0} images/s"));
        } else if self.lead && ((step + 1).is_multiple_of(self.log_every) || step + 1 == total) {
            println!(
                "step {:>6}/{total}  loss {loss:.4}{}",
                step + 1,
                if skipped { "  (skipped: non-finite gradient)" } else { "" }
            );
        }
        if self.lead && skipped {
            eprintln!("step {} skipped: non-finite gradient after the exchange (weights not updated)", step + 1);
        }
        if skipped && !self.lead {
            eprintln!("rank {}: step {} skipped: non-finite gradient after the exchange", self.rank, step + 1);
        }
    }

    /// Clears the bar.
    pub fn finish(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}

/// The lines rank 0 prints at the end: validations, the step time and its
/// parts, memory.
pub(super) fn print_summary(s: &TrainSummary) {
    for (epoch, acc) in s.val_history.iter().take(s.val_history.len().saturating_sub(1)) {
        println!("validation after epoch {epoch}: top-1 {:.1}%", acc * 100.0);
    }
    let t = &s.times;
    let busy = (t.compute_s + t.wait_s + t.comm_s + t.data_s).max(1e-12);
    let val = match (s.val_top1, s.val_top5, s.val_loss) {
        (Some(top1), Some(top5), Some(loss)) => {
            format!(
                ", validation top-1 {:.1}% top-5 {:.1}% loss {loss:.4} on {} images",
                top1 * 100.0,
                top5 * 100.0,
                s.val_images
            )
        }
        _ => String::new(),
    };
    if s.resumed_from_step > 0 {
        println!("resumed from step {}", s.resumed_from_step);
    }
    println!(
        "done: {} steps in {:.1} s, {:.1} images/s at the median step of {} (compute {:.0}%, wait {:.0}%, comm {:.0}%, data {:.0}%), {} skipped, final loss {:.4}{val}",
        s.steps - s.resumed_from_step,
        s.seconds + t.first_step_s,
        s.images_per_s,
        duration(t.step_s_median),
        100.0 * t.compute_s / busy,
        100.0 * t.wait_s / busy,
        100.0 * t.comm_s / busy,
        100.0 * t.data_s / busy,
        s.skipped_steps,
        s.final_loss
    );
    let peak = s.peak_rss_mib.iter().fold(0.0f64, |a, b| a.max(*b));
    println!("peak resident memory: {peak:.0} MiB on the largest of {} rank(s)", s.peak_rss_mib.len());
}
