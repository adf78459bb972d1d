//! `eval_report`: one row per model of `wrpo-score report`, the held-out
//! comparison of the trained models with a baseline.

use arrow::datatypes::{DataType, FieldRef};
use serde::{Deserialize, Serialize};

use crate::dataset::{field, Dataset};

/// One model's row of the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelReport {
    pub model: String,
    pub prompts: u32,
    pub samples: u32,
    pub reward_mean: f64,
    pub reward_low: f64,
    pub reward_high: f64,
    /// Against the baseline; null for the baseline itself.
    pub win_rate: Option<f64>,
    pub win_low: Option<f64>,
    pub win_high: Option<f64>,
    /// Numeric answers equal to the reference's number, over the prompts that have one.
    pub verifier_accuracy: Option<f64>,
    pub verifier_prompts: u32,
    pub rouge_l: f64,
}

impl Dataset for ModelReport {
    const NAME: &'static str = "eval_report";
    const VERSION: u32 = 1;
    fn fields() -> Vec<FieldRef> {
        vec![
            field("model", DataType::Utf8, false),
            field("prompts", DataType::UInt32, false),
            field("samples", DataType::UInt32, false),
            field("reward_mean", DataType::Float64, false),
            field("reward_low", DataType::Float64, false),
            field("reward_high", DataType::Float64, false),
            field("win_rate", DataType::Float64, true),
            field("win_low", DataType::Float64, true),
            field("win_high", DataType::Float64, true),
            field("verifier_accuracy", DataType::Float64, true),
            field("verifier_prompts", DataType::UInt32, false),
            field("rouge_l", DataType::Float64, false),
        ]
    }
}
