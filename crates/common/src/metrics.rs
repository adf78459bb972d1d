//! `metrics`: one row per optimizer step (and per evaluation) of a training
//! run, with the reward and log-prob metrics of the reference trainer.

use arrow::datatypes::{DataType, FieldRef};
use serde::{Deserialize, Serialize};

use crate::dataset::{field, utf8, Dataset};

/// Rewards are beta-scaled implicit rewards, beta * (log pi_theta - log pi_ref);
/// "chosen" is the alpha-weighted mix of y_ws and y_wt. Preference metrics are
/// null for SFT steps.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// `sft`, `wrpo`, `dpo`, ... and `eval` rows carry `eval_` prefixed stages.
    pub stage: String,
    pub step: u64,
    pub epoch: f64,
    pub loss: f64,
    pub lr: f64,
    pub alpha: Option<f64>,
    pub grad_norm: Option<f64>,
    pub tokens_per_second: f64,
    pub rewards_chosen: Option<f64>,
    pub rewards_source_chosen: Option<f64>,
    pub rewards_target_chosen: Option<f64>,
    pub rewards_rejected: Option<f64>,
    pub rewards_accuracies: Option<f64>,
    pub rewards_source_accuracies: Option<f64>,
    pub rewards_pivot_accuracies: Option<f64>,
    pub rewards_margins: Option<f64>,
    pub logps_chosen: Option<f64>,
    pub logps_source_chosen: Option<f64>,
    pub logps_target_chosen: Option<f64>,
    pub logps_rejected: Option<f64>,
}

/// The reward and log-prob columns, null for SFT steps.
const PREFERENCE: [&str; 12] = [
    "rewards_chosen",
    "rewards_source_chosen",
    "rewards_target_chosen",
    "rewards_rejected",
    "rewards_accuracies",
    "rewards_source_accuracies",
    "rewards_pivot_accuracies",
    "rewards_margins",
    "logps_chosen",
    "logps_source_chosen",
    "logps_target_chosen",
    "logps_rejected",
];

impl Dataset for StepMetrics {
    const NAME: &'static str = "metrics";
    const VERSION: u32 = 1;
    fn fields() -> Vec<FieldRef> {
        let f64_field = |name: &str, nullable: bool| field(name, DataType::Float64, nullable);
        let mut fields = vec![utf8("stage"), field("step", DataType::UInt64, false)];
        fields.extend(["epoch", "loss", "lr"].map(|n| f64_field(n, false)));
        fields.extend(["alpha", "grad_norm"].map(|n| f64_field(n, true)));
        fields.push(f64_field("tokens_per_second", false));
        fields.extend(PREFERENCE.map(|n| f64_field(n, true)));
        fields
    }
    fn check(&self) -> Result<(), String> {
        if self.stage.is_empty() {
            return Err("stage is empty".into());
        }
        Ok(())
    }
}
