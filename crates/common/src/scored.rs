//! `scored`: samples with the reward a reward model gave them. A row with
//! finish_reason 'skipped' is one the reward's server refused (a prompt too
//! long for it, a judge's verdict unreadable): its reward is NaN.

use arrow::datatypes::{DataType, FieldRef};
use serde::{Deserialize, Serialize};

use crate::{
    dataset::{field, utf8, Dataset},
    samples::FinishReason,
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoredSample {
    pub prompt_id: String,
    pub model: String,
    pub sample_index: u32,
    pub response: String,
    pub response_tokens: u32,
    pub finish_reason: FinishReason,
    pub reward: f64,
    pub reward_model: String,
}

impl Dataset for ScoredSample {
    const KEY: &'static str = "(prompt_id, model, sample_index)";
    fn key(&self) -> Option<String> {
        Some(format!("({}, {}, {})", self.prompt_id, self.model, self.sample_index))
    }
    const NAME: &'static str = "scored";
    const VERSION: u32 = 1;
    fn fields() -> Vec<FieldRef> {
        vec![
            utf8("prompt_id"),
            utf8("model"),
            field("sample_index", DataType::UInt32, false),
            utf8("response"),
            field("response_tokens", DataType::UInt32, false),
            utf8("finish_reason"),
            field("reward", DataType::Float64, false),
            utf8("reward_model"),
        ]
    }
    fn check(&self) -> Result<(), String> {
        // A skipped row is an item the reward's server refused: no reward, NaN.
        match self.finish_reason {
            FinishReason::Skipped if !self.reward.is_nan() => return Err(format!("reward is {} on a skipped row; it must be NaN", self.reward)),
            FinishReason::Skipped => {}
            _ if !self.reward.is_finite() => return Err(format!("reward is {}; rewards must be finite numbers", self.reward)),
            _ => {}
        }
        Ok(())
    }
}
