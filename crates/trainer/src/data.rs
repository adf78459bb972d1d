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
    /// Prompt + longest response tokens at most (see `sequences`).
    pub max_length: usize,
    /// Prompt tokens kept (its end) when an example is too long.
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
}

impl Truncation {
    /// An example's prompt joined to each of its responses, truncated by the
    /// official trainer's rule (its `tokenize_row`): when the prompt plus the
    /// longest response exceeds max_length, the prompt keeps its last
    /// max_prompt_length tokens; if that is still too long, every response is
    /// cut to max_length - max_prompt_length. So one example's responses share
    /// one prompt, and a response always keeps a token.
    pub fn sequences(&self, prompt: &[u32], responses: &[&[u32]]) -> Vec<Sequence> {
        let longest = responses.iter().map(|r| r.len()).max().unwrap_or(0);
        let (mut p, mut keep) = (prompt, usize::MAX);
        if p.len() + longest > self.max_length {
            p = &prompt[prompt.len().saturating_sub(self.max_prompt_length)..];
            if p.len() + longest > self.max_length {
                keep = self.max_length - self.max_prompt_length;
            }
        }
        let cut = p.len() < prompt.len();
        responses
            .iter()
            .map(|r| {
                let k = r.len().min(keep);
                Sequence { ids: [p, &r[..k]].concat(), prompt_len: p.len(), truncated: cut || k < r.len() }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (prompt length, each response's length) of an example's sequences.
    fn shape(t: &Truncation, prompt: usize, responses: &[usize]) -> (usize, Vec<usize>) {
        let ids = |n: usize| (0..n as u32).collect::<Vec<u32>>();
        let responses: Vec<Vec<u32>> = responses.iter().map(|&n| ids(n)).collect();
        let seqs = t.sequences(&ids(prompt), &responses.iter().map(Vec::as_slice).collect::<Vec<_>>());
        assert!(seqs.iter().all(|s| s.prompt_len == seqs[0].prompt_len));
        (seqs[0].prompt_len, seqs.iter().map(Sequence::response_len).collect())
    }

    #[test]
    fn truncation_is_the_official_trainers() {
        let t = Truncation { max_length: 10, max_prompt_length: 6 };
        // Fits: nothing is cut, although the prompt is longer than max_prompt_length.
        assert_eq!(shape(&t, 7, &[3, 2, 1]), (7, vec![3, 2, 1]));
        // The longest response decides for the whole example: the prompt is cut to 6, the responses fit then.
        assert_eq!(shape(&t, 8, &[4, 1, 2]), (6, vec![4, 1, 2]));
        // Still too long: every response is cut to max_length - max_prompt_length = 4, not to 10 - 6 of its own.
        assert_eq!(shape(&t, 8, &[9, 3, 5]), (6, vec![4, 3, 4]));
        // A short prompt is kept whole, and the responses are still cut to 4 (the official rule, not 10 - 3).
        assert_eq!(shape(&t, 3, &[9, 1, 8]), (3, vec![4, 1, 4]));
        let seqs = t.sequences(&[7, 8, 9], &[&[1, 2, 3, 4, 5, 6, 7, 8, 9], &[1]]);
        assert_eq!(seqs[0].ids, vec![7, 8, 9, 1, 2, 3, 4]);
        assert!(seqs[0].truncated && !seqs[1].truncated);
    }
}
