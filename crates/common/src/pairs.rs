//! `pairs`: WRPO training examples (x, y_ws, y_wt, y_l).

use arrow::datatypes::{DataType, FieldRef};
use serde::{Deserialize, Serialize};

use crate::dataset::{check_conversation, field, messages_field, utf8, Dataset, Message};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    pub prompt_id: String,
    pub messages: Vec<Message>,
    /// y_ws: best response of the source models.
    pub y_ws: String,
    pub y_ws_model: String,
    pub y_ws_sample_index: u32,
    pub y_ws_reward: f64,
    /// y_wt: best response of the target (Target-SFT).
    pub y_wt: String,
    pub y_wt_model: String,
    pub y_wt_sample_index: u32,
    pub y_wt_reward: f64,
    /// y_l: worst response of the target.
    pub y_l: String,
    pub y_l_model: String,
    pub y_l_sample_index: u32,
    pub y_l_reward: f64,
    /// Summed log pi_ref(y|x) over response tokens, filled by the trainer once
    /// (the reference model is frozen, so they never change).
    pub ref_logp_y_ws: Option<f64>,
    pub ref_logp_y_wt: Option<f64>,
    pub ref_logp_y_l: Option<f64>,
    /// Response tokens each reference log-prob summed (after truncation), so
    /// that training can refuse pairs it would tokenize otherwise. Added in
    /// version 2 (null in older files).
    pub ref_tokens_y_ws: Option<u32>,
    pub ref_tokens_y_wt: Option<u32>,
    pub ref_tokens_y_l: Option<u32>,
}

impl Dataset for Pair {
    const KEY: &'static str = "prompt_id";
    fn key(&self) -> Option<String> {
        Some(self.prompt_id.clone())
    }
    const NAME: &'static str = "pairs";
    /// 2: ref_tokens_* columns.
    const VERSION: u32 = 2;
    fn fields() -> Vec<FieldRef> {
        let mut fields = vec![utf8("prompt_id"), messages_field()];
        for y in ["y_ws", "y_wt", "y_l"] {
            fields.push(utf8(y));
            fields.push(utf8(&format!("{y}_model")));
            fields.push(field(&format!("{y}_sample_index"), DataType::UInt32, false));
            fields.push(field(&format!("{y}_reward"), DataType::Float64, false));
        }
        for y in ["y_ws", "y_wt", "y_l"] {
            fields.push(field(&format!("ref_logp_{y}"), DataType::Float64, true));
        }
        for y in ["y_ws", "y_wt", "y_l"] {
            fields.push(field(&format!("ref_tokens_{y}"), DataType::UInt32, true));
        }
        fields
    }
    fn check(&self) -> Result<(), String> {
        check_conversation(&self.messages)?;
        for (y, reward) in [("y_ws", self.y_ws_reward), ("y_wt", self.y_wt_reward), ("y_l", self.y_l_reward)] {
            if !reward.is_finite() {
                return Err(format!("{y}_reward is {reward}"));
            }
        }
        if self.y_wt_reward < self.y_l_reward {
            return Err(format!("y_wt reward {} is below y_l reward {}", self.y_wt_reward, self.y_l_reward));
        }
        Ok(())
    }
}
