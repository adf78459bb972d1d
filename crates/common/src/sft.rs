//! `sft`: the SFT set, (x, y_ws) for the SFT part of the prompts; or
//! (x, reference answer) for training a stronger source (`reference-set`).

use arrow::datatypes::{DataType, FieldRef};
use serde::{Deserialize, Serialize};

use crate::dataset::{check_conversation, field, messages_field, utf8, Dataset, Message};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SftExample {
    pub prompt_id: String,
    pub messages: Vec<Message>,
    /// y_ws: the highest-reward response over all source models and samples
    /// (or the prompt's reference answer, source_model 'reference').
    pub response: String,
    pub source_model: String,
    pub source_sample_index: u32,
    /// The response's reward; null for a reference answer, which no reward model judged.
    pub reward: Option<f64>,
}

impl Dataset for SftExample {
    const KEY: &'static str = "prompt_id";
    fn key(&self) -> Option<String> {
        Some(self.prompt_id.clone())
    }
    const NAME: &'static str = "sft";
    /// 2: `reward` may be null (a reference answer).
    const VERSION: u32 = 2;
    fn fields() -> Vec<FieldRef> {
        vec![
            utf8("prompt_id"),
            messages_field(),
            utf8("response"),
            utf8("source_model"),
            field("source_sample_index", DataType::UInt32, false),
            field("reward", DataType::Float64, true),
        ]
    }
    fn check(&self) -> Result<(), String> {
        check_conversation(&self.messages)?;
        if let Some(r) = self.reward.filter(|r| !r.is_finite()) {
            return Err(format!("reward is {r}"));
        }
        Ok(())
    }
}
