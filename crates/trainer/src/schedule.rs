//! Learning-rate and fusion-coefficient schedules (docs/method.md, "Objective").

use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Schedule {
    /// Optimizer steps of the whole run.
    pub total_steps: u64,
    pub warmup_steps: u64,
    pub lr: f64,
    pub alpha_max: f64,
    /// Static alpha = alpha_max at every step instead of the linear rise.
    pub static_alpha: bool,
}

impl Schedule {
    /// total steps = ceil(epochs * batches_per_epoch / grad_accum), with
    /// batches_per_epoch = ceil(examples / micro_batch); warmup = ceil(ratio * total).
    pub fn new(
        examples: u64,
        micro_batch: u64,
        grad_accum: u64,
        epochs: f64,
        warmup_ratio: f64,
        lr: f64,
        alpha_max: f64,
        static_alpha: bool,
    ) -> Self {
        let batches_per_epoch = examples.div_ceil(micro_batch.max(1));
        let total_steps = ((epochs * batches_per_epoch as f64) / grad_accum.max(1) as f64).ceil() as u64;
        let warmup_steps = (warmup_ratio * total_steps as f64).ceil() as u64;
        Schedule { total_steps, warmup_steps, lr, alpha_max, static_alpha }
    }

    /// Fusion coefficient at optimizer step `step` (0-based): 0 at the first
    /// step, rising linearly to alpha_max at the last (a one-step run uses 0).
    pub fn alpha(&self, step: u64) -> f64 {
        if self.static_alpha {
            return self.alpha_max;
        }
        let last = self.total_steps.saturating_sub(1);
        if last == 0 {
            return 0.0;
        }
        self.alpha_max * step.min(last) as f64 / last as f64
    }

    /// Learning rate at optimizer step `step`: linear warmup over
    /// `warmup_steps`, then cosine decay to 0 at `total_steps`, as the
    /// transformers `cosine` schedule the recipe uses.
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * step as f64 / self.warmup_steps.max(1) as f64;
        }
        let decay = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = (step - self.warmup_steps) as f64 / decay as f64;
        self.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_follow_the_recipe_formula() {
        // 1000 examples, micro batch 4, 32 accumulation steps: ceil(250 / 32) = 8.
        let s = Schedule::new(1000, 4, 32, 1.0, 0.1, 3e-7, 0.1, false);
        assert_eq!((s.total_steps, s.warmup_steps), (8, 1));
        assert_eq!(Schedule::new(1000, 4, 32, 2.0, 0.1, 3e-7, 0.1, false).total_steps, 16);
    }

    #[test]
    fn alpha_rises_linearly_from_zero_to_alpha_max() {
        let s = Schedule::new(11, 1, 1, 1.0, 0.0, 1.0, 0.1, false);
        assert_eq!(s.alpha(0), 0.0);
        assert!((s.alpha(5) - 0.05).abs() < 1e-15);
        assert!((s.alpha(10) - 0.1).abs() < 1e-15);
        assert!((s.alpha(99) - 0.1).abs() < 1e-15);
        let fixed = Schedule { static_alpha: true, ..s };
        assert_eq!(fixed.alpha(0), 0.1);
    }

    #[test]
    fn lr_warms_up_then_follows_a_cosine_to_zero() {
        let s = Schedule::new(100, 1, 1, 1.0, 0.1, 1.0, 0.1, false);
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(5) - 0.5).abs() < 1e-12);
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
        assert!((s.lr(55) - 0.5).abs() < 1e-12);
        assert!(s.lr(100).abs() < 1e-12);
        assert!((10..99).all(|t| s.lr(t + 1) <= s.lr(t)));
    }
}
