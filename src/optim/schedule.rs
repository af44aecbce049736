//! How the learning rate changes over a run: constant, step or cosine, with
//! a linear warm-up.

use serde::Serialize;

/// How the learning rate changes over training.
#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// The base rate throughout
    Const,
    /// Times 0.1 every 30 epochs (ResNet's ImageNet recipe)
    Step,
    /// Half a cosine from the base rate to 0 over the run
    Cosine,
}

/// The learning rate at any point of a run.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct LrPlan {
    pub base: f64,
    pub schedule: LrSchedule,
    /// Linear ramp from 0 to `base` over these epochs (Goyal et al., 2017).
    pub warmup_epochs: f64,
    pub total_epochs: f64,
    pub step_every_epochs: f64,
    pub step_gamma: f64,
}

impl LrPlan {
    pub fn new(base: f64, schedule: LrSchedule, warmup_epochs: f64, total_epochs: f64) -> Self {
        Self { base, schedule, warmup_epochs, total_epochs, step_every_epochs: 30.0, step_gamma: 0.1 }
    }

    /// The rate for the step that ends at `epoch` (fractional: step / steps per epoch).
    pub fn at(&self, epoch: f64) -> f64 {
        let scheduled = match self.schedule {
            LrSchedule::Const => self.base,
            LrSchedule::Step => self.base * self.step_gamma.powf((epoch / self.step_every_epochs).floor()),
            LrSchedule::Cosine => {
                let t = (epoch / self.total_epochs.max(f64::MIN_POSITIVE)).clamp(0.0, 1.0);
                self.base * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        };
        if epoch < self.warmup_epochs {
            scheduled * (epoch / self.warmup_epochs)
        } else {
            scheduled
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_and_warmup() {
        let c = LrPlan::new(0.1, LrSchedule::Const, 0.0, 90.0);
        assert_eq!(c.at(50.0), 0.1);
        let s = LrPlan::new(0.1, LrSchedule::Step, 0.0, 90.0);
        assert!(
            (s.at(29.9) - 0.1).abs() < 1e-15 && (s.at(30.0) - 0.01).abs() < 1e-15 && (s.at(65.0) - 0.001).abs() < 1e-15
        );
        let k = LrPlan::new(0.1, LrSchedule::Cosine, 0.0, 10.0);
        assert!((k.at(0.0) - 0.1).abs() < 1e-15 && (k.at(5.0) - 0.05).abs() < 1e-12 && k.at(10.0).abs() < 1e-15);
        let w = LrPlan::new(0.4, LrSchedule::Const, 5.0, 90.0);
        assert!((w.at(1.0) - 0.08).abs() < 1e-15 && (w.at(5.0) - 0.4).abs() < 1e-15);
    }
}
