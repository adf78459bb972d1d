//! Learning-rate and fusion-coefficient schedules (docs/method.md, "Objective").

use serde::Serialize;

/// The learning rate's shape after warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// Cosine decay to 0 (the recipe's, transformers' `cosine`).
    Cosine,
    /// Linear decay to 0 (transformers' `linear`).
    Linear,
    /// The peak rate to the end.
    Constant,
}

/// What fixes a run's schedule.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Training examples (rows of the pairs or SFT set, or packed blocks).
    pub examples: u64,
    pub micro_batch: u64,
    pub grad_accum: u64,
    pub epochs: f64,
    pub warmup_ratio: f64,
    /// Peak learning rate.
    pub lr: f64,
    pub lr_schedule: LrSchedule,
    pub alpha_max: f64,
    /// Static alpha = alpha_max at every step instead of the linear rise.
    pub static_alpha: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Schedule {
    /// Optimizer steps of the whole run.
    pub total_steps: u64,
    pub warmup_steps: u64,
    pub lr: f64,
    pub lr_schedule: LrSchedule,
    pub alpha_max: f64,
    /// Static alpha = alpha_max at every step instead of the linear rise.
    pub static_alpha: bool,
    /// Micro-batches of an epoch.
    pub batches_per_epoch: u64,
    pub grad_accum: u64,
}

impl Schedule {
    /// Steps counted as the official trainer (transformers' Trainer) counts
    /// them: total = ceil(epochs * max(floor(batches_per_epoch / grad_accum), 1)),
    /// batches_per_epoch = ceil(examples / micro_batch); warmup = ceil(ratio * total).
    pub fn new(s: &Settings) -> Self {
        let (batches_per_epoch, grad_accum) = (s.examples.div_ceil(s.micro_batch.max(1)), s.grad_accum.max(1));
        let steps_per_epoch = if s.examples == 0 { 0 } else { (batches_per_epoch / grad_accum).max(1) };
        let total_steps = (s.epochs * steps_per_epoch as f64).ceil() as u64;
        let warmup_steps = (s.warmup_ratio * total_steps as f64).ceil() as u64;
        Schedule {
            total_steps,
            warmup_steps,
            lr: s.lr,
            lr_schedule: s.lr_schedule,
            alpha_max: s.alpha_max,
            static_alpha: s.static_alpha,
            batches_per_epoch,
            grad_accum,
        }
    }

    /// The global micro-batches (epoch after epoch) whose gradients optimizer
    /// step `step` sums, as the official trainer groups them: grad_accum
    /// consecutive ones, so an epoch's trailing partial group joins the next
    /// epoch's first step, and what is left after the last step is not
    /// trained on; an epoch of at most grad_accum micro-batches is one step.
    pub fn micro_batches(&self, step: u64) -> std::ops::Range<u64> {
        let per_step = self.grad_accum.min(self.batches_per_epoch);
        step * per_step..(step + 1) * per_step
    }

    /// Fusion coefficient at optimizer step `step` (0-based, so `step` steps
    /// are done): alpha_max * step / total_steps, as the official trainer
    /// computes it from its completed steps; it rises from 0 and stays below
    /// alpha_max, which it would reach after the last step.
    pub fn alpha(&self, step: u64) -> f64 {
        if self.static_alpha {
            return self.alpha_max;
        }
        self.alpha_max * step.min(self.total_steps) as f64 / self.total_steps.max(1) as f64
    }

    /// Learning rate at optimizer step `step`: linear warmup over
    /// `warmup_steps`, then the decay of `lr_schedule` (to 0 at
    /// `total_steps`), as transformers' schedules of those names.
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * step as f64 / self.warmup_steps.max(1) as f64;
        }
        let decay = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = (step - self.warmup_steps) as f64 / decay as f64;
        match self.lr_schedule {
            LrSchedule::Cosine => self.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()).max(0.0),
            LrSchedule::Linear => self.lr * (1.0 - progress).max(0.0),
            LrSchedule::Constant => self.lr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cosine schedule of peak 1 and alpha_max 0.1, without warm-up.
    fn settings(examples: u64, micro_batch: u64, grad_accum: u64, epochs: f64) -> Settings {
        Settings {
            examples,
            micro_batch,
            grad_accum,
            epochs,
            warmup_ratio: 0.0,
            lr: 1.0,
            lr_schedule: LrSchedule::Cosine,
            alpha_max: 0.1,
            static_alpha: false,
        }
    }

    #[test]
    fn steps_follow_the_official_trainers_count() {
        // 1000 examples, micro batch 4, 32 accumulation steps: floor(250 / 32) = 7 per epoch.
        let s = Schedule::new(&Settings { warmup_ratio: 0.1, ..settings(1000, 4, 32, 1.0) });
        assert_eq!((s.total_steps, s.warmup_steps), (7, 1));
        assert_eq!(Schedule::new(&Settings { warmup_ratio: 0.1, ..settings(1000, 4, 32, 2.0) }).total_steps, 14);
        // Fewer micro-batches than grad_accum: one step per epoch, over all of them.
        let small = Schedule::new(&settings(5, 2, 8, 2.0));
        assert_eq!((small.total_steps, small.micro_batches(0), small.micro_batches(1)), (2, 0..3, 3..6));
        // 5 micro-batches, grad_accum 2, 2 epochs: 4 steps of 2; the first
        // epoch's fifth joins step 2, and the second epoch's last is left out.
        let s = Schedule::new(&settings(10, 2, 2, 2.0));
        assert_eq!(s.total_steps, 4);
        assert_eq!((0..4).map(|t| s.micro_batches(t)).collect::<Vec<_>>(), vec![0..2, 2..4, 4..6, 6..8]);
        assert_eq!(Schedule::new(&settings(0, 2, 2, 1.0)).total_steps, 0);
    }

    /// alpha_max * t / T at every step t of runs of 1, 3 and 300 steps.
    #[test]
    fn alpha_is_the_official_formula_on_every_step() {
        for (examples, micro, accum, want_steps) in [(4, 4, 1, 1), (12, 2, 2, 3), (600, 1, 2, 300)] {
            let s = Schedule::new(&settings(examples, micro, accum, 1.0));
            assert_eq!(s.total_steps, want_steps);
            for t in 0..s.total_steps {
                assert_eq!(s.alpha(t), 0.1 * t as f64 / want_steps as f64, "step {t} of {want_steps}");
            }
            assert!(s.alpha(s.total_steps - 1) < 0.1);
            assert_eq!(Schedule { static_alpha: true, ..s }.alpha(0), 0.1);
        }
    }

    #[test]
    fn lr_warms_up_then_follows_a_cosine_to_zero() {
        let s = Schedule::new(&Settings { warmup_ratio: 0.1, ..settings(100, 1, 1, 1.0) });
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(5) - 0.5).abs() < 1e-12);
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
        assert!((s.lr(55) - 0.5).abs() < 1e-12);
        assert!(s.lr(100).abs() < 1e-12);
        assert!((10..99).all(|t| s.lr(t + 1) <= s.lr(t)));
    }

    #[test]
    fn linear_and_constant_schedules_share_the_warm_up() {
        let with = |lr_schedule| Schedule::new(&Settings { warmup_ratio: 0.1, lr_schedule, ..settings(100, 1, 1, 1.0) });
        let (linear, constant) = (with(LrSchedule::Linear), with(LrSchedule::Constant));
        for s in [&linear, &constant] {
            assert!((s.lr(5) - 0.5).abs() < 1e-12 && (s.lr(10) - 1.0).abs() < 1e-12);
        }
        assert!((linear.lr(55) - 0.5).abs() < 1e-12 && linear.lr(100).abs() < 1e-12);
        assert!((10..=100).all(|t| constant.lr(t) == 1.0));
    }
}
