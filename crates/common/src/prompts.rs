//! `prompts`: the conversations to answer, with an optional gold answer.

use arrow::datatypes::FieldRef;
use serde::{Deserialize, Serialize};

use crate::dataset::{check_conversation, messages_field, opt_utf8, utf8, Dataset, Message};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Eval,
    /// Held out from training and from the final comparison: for choosing
    /// settings (never taken by `sft-set` or `pairs`).
    Validation,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prompt {
    /// Stable content hash of `messages` ([`crate::hash::prompt_id`]), or the
    /// source dataset's own id where it has one.
    pub prompt_id: String,
    /// The conversation so far; the last turn is the user's.
    pub messages: Vec<Message>,
    /// A gold answer, where the source dataset has one.
    pub reference: Option<String>,
    pub split: Split,
    /// The file or dataset the prompt came from.
    pub origin: String,
}

impl Dataset for Prompt {
    const KEY: &'static str = "prompt_id";
    fn key(&self) -> Option<String> {
        Some(self.prompt_id.clone())
    }
    const NAME: &'static str = "prompts";
    /// 2: `split` may be `validation`.
    const VERSION: u32 = 2;
    fn fields() -> Vec<FieldRef> {
        vec![utf8("prompt_id"), messages_field(), opt_utf8("reference"), utf8("split"), utf8("origin")]
    }
    fn check(&self) -> Result<(), String> {
        if self.prompt_id.is_empty() {
            return Err("prompt_id is empty".into());
        }
        check_conversation(&self.messages)
    }
}
