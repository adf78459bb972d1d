//! `sft`: the SFT set, (x, y_ws) for the SFT part of the prompts.

use arrow::datatypes::{DataType, FieldRef};
use serde::{Deserialize, Serialize};

use crate::dataset::{check_conversation, field, messages_field, utf8, Dataset, Message};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SftExample {
    pub prompt_id: String,
    pub messages: Vec<Message>,
    /// y_ws: the highest-reward response over all source models and samples.
    pub response: String,
    pub source_model: String,
    pub source_sample_index: u32,
    pub reward: f64,
}

impl Dataset for SftExample {
    const KEY: &'static str = "prompt_id";
    fn key(&self) -> Option<String> {
        Some(self.prompt_id.clone())
    }
    const NAME: &'static str = "sft";
    const VERSION: u32 = 1;
    fn fields() -> Vec<FieldRef> {
        vec![
            utf8("prompt_id"),
            messages_field(),
            utf8("response"),
            utf8("source_model"),
            field("source_sample_index", DataType::UInt32, false),
            field("reward", DataType::Float64, false),
        ]
    }
    fn check(&self) -> Result<(), String> {
        check_conversation(&self.messages)?;
        if !self.reward.is_finite() {
            return Err(format!("reward is {}", self.reward));
        }
        Ok(())
    }
}
