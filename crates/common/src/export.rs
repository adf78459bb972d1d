//! Pairs in the shapes of the GPU trainers: the official WRPO recipe's
//! training data and TRL's conversational preference data. Written by
//! `wrpo-score export`, for users whose target outgrows one machine.

use arrow::datatypes::FieldRef;
use serde::{Deserialize, Serialize};

use crate::{
    dataset::{conversation_field, utf8, Dataset},
    pairs::Pair,
    Message, Role,
};

/// The official WRPO recipe's row: the prompt's turns, `chosen` = [y_ws,
/// y_wt] and `rejected` = [y_l], each response an assistant message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WrpoExample {
    pub prompt_id: String,
    pub prompt: Vec<Message>,
    pub chosen: Vec<Message>,
    pub rejected: Vec<Message>,
}

/// TRL's conversational preference row (DPOTrainer and its relatives):
/// `prompt` turns, one assistant message each in `chosen` and `rejected`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrlExample {
    pub prompt: Vec<Message>,
    pub chosen: Vec<Message>,
    pub rejected: Vec<Message>,
}

fn assistant(text: &str) -> Message {
    Message::new(Role::Assistant, text)
}

impl WrpoExample {
    pub fn from_pair(p: &Pair) -> Self {
        WrpoExample {
            prompt_id: p.prompt_id.clone(),
            prompt: p.messages.clone(),
            chosen: vec![assistant(&p.y_ws), assistant(&p.y_wt)],
            rejected: vec![assistant(&p.y_l)],
        }
    }
}

impl TrlExample {
    /// `chosen_source`: y_ws is the chosen response, else y_wt.
    pub fn from_pair(p: &Pair, chosen_source: bool) -> Self {
        TrlExample {
            prompt: p.messages.clone(),
            chosen: vec![assistant(if chosen_source { &p.y_ws } else { &p.y_wt })],
            rejected: vec![assistant(&p.y_l)],
        }
    }
}

impl Dataset for WrpoExample {
    const NAME: &'static str = "export_wrpo";
    const VERSION: u32 = 1;
    fn fields() -> Vec<FieldRef> {
        vec![utf8("prompt_id"), conversation_field("prompt"), conversation_field("chosen"), conversation_field("rejected")]
    }
}

impl Dataset for TrlExample {
    const NAME: &'static str = "export_trl";
    const VERSION: u32 = 1;
    fn fields() -> Vec<FieldRef> {
        vec![conversation_field("prompt"), conversation_field("chosen"), conversation_field("rejected")]
    }
}
