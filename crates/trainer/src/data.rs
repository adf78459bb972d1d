//! Training examples as token ids, exactly as docs/method.md fixes them:
//! prompt ids = the target's chat template applied to `messages` with the
//! generation prompt, tokenized as the sampler tokenizes it; response ids =
//! the response as the template renders the assistant's turn, tokenized
//! without special tokens, then the one end-of-turn token at which sampling
//! stops. Log-probs are summed over the response ids only.

use anyhow::{anyhow, bail, Result};
use wrpo_common::Message;
use wrpo_llm::{ChatMessage, ChatTemplate, Tokenizer};

/// End-of-turn tokens of the chat formats we know, in order of preference.
const END_OF_TURN: [&str; 4] = ["<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>"];

/// Turns conversations and responses into ids for one target model.
pub struct Encoder {
    tokenizer: Tokenizer,
    template: ChatTemplate,
    /// The token that ends every response.
    pub end_of_turn: u32,
    pub truncation: Truncation,
}

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Truncation {
    /// Prompt + response tokens at most; the response is cut.
    pub max_length: usize,
    /// Prompt tokens at most; the prompt keeps its end.
    pub max_prompt_length: usize,
}

/// One sequence: prompt then response; labels are the response positions.
#[derive(Clone, Debug, PartialEq)]
pub struct Sequence {
    pub ids: Vec<u32>,
    pub prompt_len: usize,
    /// Was the prompt or the response cut?
    pub truncated: bool,
}

impl Sequence {
    pub fn response_len(&self) -> usize {
        self.ids.len() - self.prompt_len
    }
}

fn turns(messages: &[Message]) -> Vec<ChatMessage<'_>> {
    messages.iter().map(|m| ChatMessage { role: m.role.as_str(), content: &m.content }).collect()
}

impl Encoder {
    pub fn new(tokenizer: Tokenizer, template: ChatTemplate, truncation: Truncation) -> Result<Self> {
        // The end-of-turn token the template writes after an assistant turn, else EOS.
        let end_of_turn = END_OF_TURN
            .iter()
            .filter(|t| template.source.contains(**t))
            .find_map(|t| tokenizer.token_to_id(t))
            .or(tokenizer.eos_id)
            .ok_or_else(|| anyhow!("the tokenizer has neither an end-of-turn token ({}) nor EOS", END_OF_TURN.join(", ")))?;
        if truncation.max_prompt_length >= truncation.max_length {
            bail!("--max-prompt-length ({}) must be below --max-length ({})", truncation.max_prompt_length, truncation.max_length);
        }
        Ok(Encoder { tokenizer, template, end_of_turn, truncation })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// SHA-256 of what turns text into ids here: the tokenizer, the chat
    /// template and the end-of-turn token.
    pub fn fingerprint(&self) -> String {
        let tokenizer = self.tokenizer.to_json().to_string();
        wrpo_common::hash::sha256_of(&[tokenizer.as_bytes(), self.template.source.as_bytes(), &self.end_of_turn.to_le_bytes()])
    }

    pub fn prompt_ids(&self, messages: &[Message]) -> Result<Vec<u32>> {
        self.tokenizer.encode_chat(&self.template.render(&turns(messages), true)?)
    }

    /// The response's ids as the template renders it after `messages`: the
    /// text between the generation prompt and the end-of-turn token of the
    /// rendered conversation (Llama-3's and Gemma's templates trim it, for
    /// example), tokenized without special tokens, then the end-of-turn token.
    /// Prompt ids followed by these are the conversation's ids up to and
    /// including that token. A template that renders the reply elsewhere
    /// than after the generation prompt gets the text as it is.
    pub fn response_ids(&self, messages: &[Message], response: &str) -> Result<Vec<u32>> {
        if response.trim().is_empty() {
            bail!("the response is empty");
        }
        let mut conversation = turns(messages);
        let prompt = self.template.render(&conversation, true)?;
        conversation.push(ChatMessage { role: "assistant", content: response });
        let full = self.template.render(&conversation, false)?;
        let eot = self.tokenizer.id_to_token(self.end_of_turn).unwrap_or_default();
        let text = full.strip_prefix(prompt.as_str()).and_then(|tail| tail.rfind(eot.as_str()).map(|end| &tail[..end])).unwrap_or(response);
        let mut ids = self.tokenizer.encode(text, false)?;
        ids.push(self.end_of_turn);
        Ok(ids)
    }

    /// Prompt and response joined, truncated: the prompt keeps its last
    /// max_prompt_length tokens, then the response is cut to max_length.
    /// Since max_prompt_length < max_length, a response keeps at least one token.
    pub fn sequence(&self, prompt: &[u32], response: &[u32]) -> Sequence {
        let t = self.truncation;
        let p = &prompt[prompt.len().saturating_sub(t.max_prompt_length)..];
        let keep = response.len().min(t.max_length - p.len());
        let truncated = p.len() < prompt.len() || keep < response.len();
        Sequence { ids: [p, &response[..keep]].concat(), prompt_len: p.len(), truncated }
    }
}
