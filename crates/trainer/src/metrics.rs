//! A step's metrics row (wrpo_common's `StepMetrics`): sums over the
//! step's (or an evaluation's) examples as its micro-batches run, then their
//! means, under TRL's names: the loss, and for preference objectives the
//! implicit rewards and log-probs of the chosen and rejected responses.

use anyhow::Result;
use candle_core::{DType, Tensor};
use wrpo_common::metrics::StepMetrics;

use crate::loss::{Inputs, Objective, Output};

/// Sums of a step's (or an evaluation's) metrics over its examples.
#[derive(Default)]
pub struct Sums {
    examples: f64,
    loss: f64,
    tokens: usize,
    /// Null for SFT rows.
    preference: Option<PreferenceSums>,
}

/// Sums over preference examples of what the metrics report, by TRL's names.
#[derive(Default)]
struct PreferenceSums {
    /// The objective's chosen reward, y_ws and y_wt weighted by [`Objective::chosen_weight`].
    rewards_chosen: f64,
    rewards_source_chosen: f64,
    rewards_target_chosen: f64,
    rewards_rejected: f64,
    accuracies: f64,
    source_accuracies: f64,
    pivot_accuracies: f64,
    logps_chosen: f64,
    logps_source_chosen: f64,
    logps_target_chosen: f64,
    logps_rejected: f64,
    /// Whether the objective reads y_ws, and y_wt.
    has_source: bool,
    has_target: bool,
}

impl Sums {
    /// A micro-batch's summed loss over its `examples` (label tokens for
    /// SFT), and the `tokens` its forward ran on.
    pub fn add(&mut self, loss: f64, examples: f64, tokens: usize) {
        self.loss += loss;
        self.examples += examples;
        self.tokens += tokens;
    }

    /// Tokens the forwards ran on.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// The mean loss: per example for preference losses, per label token for SFT.
    pub fn mean_loss(&self) -> f64 {
        self.loss / self.examples.max(1.0)
    }

    /// A preference micro-batch's rewards and log-probs: `x` what its
    /// forward gave `objective`, `out` the loss's output at `alpha`.
    pub fn add_preference(&mut self, objective: &Objective, alpha: f64, x: &Inputs, out: &Output) -> Result<()> {
        let vals = |t: &Tensor| -> Result<Vec<f64>> { Ok(t.detach().to_dtype(DType::F64)?.to_vec1::<f64>()?) };
        let opt = |t: &Option<Tensor>| t.as_ref().map(vals).transpose();
        let (r_ws, r_wt, r_l) = (opt(&out.rewards.y_ws)?, opt(&out.rewards.y_wt)?, vals(&out.rewards.y_l)?);
        let (p_ws, p_wt, p_l) = (opt(&x.policy.y_ws)?, opt(&x.policy.y_wt)?, vals(&x.policy.y_l)?);
        // The chosen reward as the loss weighs it.
        let w = objective.chosen_weight(alpha);
        let s = self.preference.get_or_insert_with(PreferenceSums::default);
        s.has_source = r_ws.is_some();
        s.has_target = r_wt.is_some();
        // logps/chosen as the official trainer reports it: the plain mean of y_ws and y_wt.
        let w_logps = if p_ws.is_some() && p_wt.is_some() { 0.5 } else { w };
        let at = |v: &Option<Vec<f64>>, i: usize| v.as_ref().map_or(0.0, |v| v[i]);
        let beats = |v: &Option<Vec<f64>>, i: usize| v.as_ref().map_or(0.0, |v| f64::from(v[i] > r_l[i]));
        for i in 0..r_l.len() {
            let mix = |w: f64, a: &Option<Vec<f64>>, b: &Option<Vec<f64>>| {
                a.as_ref().map_or(0.0, |a| w * a[i]) + b.as_ref().map_or(0.0, |b| (1.0 - w) * b[i])
            };
            let chosen = mix(w, &r_ws, &r_wt);
            s.rewards_chosen += chosen;
            s.rewards_source_chosen += at(&r_ws, i);
            s.rewards_target_chosen += at(&r_wt, i);
            s.rewards_rejected += r_l[i];
            s.accuracies += f64::from(chosen > r_l[i]);
            s.source_accuracies += beats(&r_ws, i);
            s.pivot_accuracies += beats(&r_wt, i);
            s.logps_chosen += mix(w_logps, &p_ws, &p_wt);
            s.logps_source_chosen += at(&p_ws, i);
            s.logps_target_chosen += at(&p_wt, i);
            s.logps_rejected += p_l[i];
        }
        Ok(())
    }

    /// The metrics row of a training step or, without a gradient norm, an evaluation.
    pub fn row(&self, stage: &str, step: u64, epoch: f64, lr: f64, alpha: Option<f64>, grad_norm: Option<f64>, secs: f64) -> StepMetrics {
        let n = self.examples.max(1.0);
        let p = self.preference.as_ref();
        let mean = |f: fn(&PreferenceSums) -> f64| p.map(|p| f(p) / n);
        let source = |f: fn(&PreferenceSums) -> f64| p.filter(|p| p.has_source).map(|p| f(p) / n);
        let target = |f: fn(&PreferenceSums) -> f64| p.filter(|p| p.has_target).map(|p| f(p) / n);
        StepMetrics {
            stage: stage.to_string(),
            step,
            epoch,
            loss: self.mean_loss(),
            lr,
            alpha,
            grad_norm,
            tokens_per_second: self.tokens as f64 / secs.max(1e-9),
            rewards_chosen: mean(|p| p.rewards_chosen),
            rewards_source_chosen: source(|p| p.rewards_source_chosen),
            rewards_target_chosen: target(|p| p.rewards_target_chosen),
            rewards_rejected: mean(|p| p.rewards_rejected),
            rewards_accuracies: mean(|p| p.accuracies),
            rewards_source_accuracies: source(|p| p.source_accuracies),
            rewards_pivot_accuracies: target(|p| p.pivot_accuracies),
            rewards_margins: mean(|p| p.rewards_chosen - p.rewards_rejected),
            logps_chosen: mean(|p| p.logps_chosen),
            logps_source_chosen: source(|p| p.logps_source_chosen),
            logps_target_chosen: target(|p| p.logps_target_chosen),
            logps_rejected: mean(|p| p.logps_rejected),
        }
    }
}
