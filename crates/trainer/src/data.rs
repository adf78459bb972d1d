//! Training examples as token ids, exactly as docs/method.md fixes them:
//! prompt ids = the target's chat template applied to `messages` with the
//! generation prompt, tokenized as the sampler tokenizes it; response ids =
//! the response as the template renders the assistant's turn, tokenized
//! without special tokens, then the one end-of-turn token at which sampling
//! stops. Log-probs are summed over the response ids only.
//!
//! Here: the [`Encoder`], the official trainer's [`Truncation`], SFT rows
//! ([`encode_sft`], [`pack_sft`]) and preference pairs with their reference
//! columns ([`encode_pairs`]) as [`Examples`], the micro-[`Batch`]es the
//! training loop takes from them, and a study's [`subsample`] of pairs.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use wrpo_common::{hash::uniform_draw, pairs::Pair, sft::SftExample, Message};
use wrpo_llm::{ChatMessage, ChatTemplate, Tokenizer};

use crate::loss::{Objective, PerY, Y};

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

#[derive(Clone, Copy, Debug, Serialize)]
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

/// Which tokens SFT trains on, and how conversations are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SftForm {
    /// A conversation per example, loss on its response tokens.
    Response,
    /// A conversation per example, loss on every token after the first.
    AllTokens,
    /// The recipe's: conversations packed into blocks of --max-length tokens,
    /// loss on every token ([`pack_sft`]).
    Packed { cross_document: bool },
}

/// An SFT example as token ids: a conversation (one sequence) or a packed
/// block: one sequence when its documents attend to each other, else a
/// sequence per document piece.
pub struct SftBlock {
    pub prompt_id: String,
    pub seqs: Vec<Sequence>,
}

/// A preference example as token ids, with the pairs file's reference
/// log-probs of (y_ws, y_wt, y_l) when it has them.
pub struct PairExample {
    pub prompt_id: String,
    pub seqs: PerY<Sequence>,
    pub reference: Option<[f64; 3]>,
}

impl PairExample {
    /// The sequence of response `y` (all three are encoded).
    pub fn seq(&self, y: Y) -> &Sequence {
        self.seqs.get(y).expect("encoded")
    }
}

/// A stage's examples, all of one kind.
pub enum Examples {
    Sft(Vec<SftBlock>),
    Pairs(Vec<PairExample>),
}

impl Examples {
    pub fn len(&self) -> usize {
        match self {
            Examples::Sft(e) => e.len(),
            Examples::Pairs(e) => e.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The examples at `indices`.
    pub fn batch(&self, indices: &[usize]) -> Batch<'_> {
        match self {
            Examples::Sft(e) => Batch::Sft(indices.iter().map(|&i| &e[i]).collect()),
            Examples::Pairs(e) => Batch::Pairs(indices.iter().map(|&i| &e[i]).collect()),
        }
    }

    /// Consecutive batches of `size` examples (the last may be smaller).
    pub fn batches(&self, size: usize) -> Vec<Batch<'_>> {
        let starts = (0..self.len()).step_by(size.max(1));
        starts.map(|start| self.batch(&(start..(start + size.max(1)).min(self.len())).collect::<Vec<_>>())).collect()
    }
}

/// A micro-batch.
pub enum Batch<'a> {
    Sft(Vec<&'a SftBlock>),
    Pairs(Vec<&'a PairExample>),
}

impl Batch<'_> {
    /// The examples' prompt ids, for errors.
    pub fn prompt_ids(&self) -> Vec<&str> {
        match self {
            Batch::Sft(b) => b.iter().map(|e| e.prompt_id.as_str()).collect(),
            Batch::Pairs(b) => b.iter().map(|e| e.prompt_id.as_str()).collect(),
        }
    }

    /// What a step's mean divides by: label tokens for SFT (the mean token
    /// loss), examples for preference losses.
    pub fn denominator(&self) -> f64 {
        match self {
            Batch::Sft(b) => b.iter().flat_map(|e| &e.seqs).map(Sequence::response_len).sum::<usize>() as f64,
            Batch::Pairs(b) => b.len() as f64,
        }
    }
}

/// Sequences as the model's (prompt, response) token ids.
pub fn split<'a>(seqs: &[&'a Sequence]) -> Vec<(&'a [u32], &'a [u32])> {
    seqs.iter().map(|s| s.ids.split_at(s.prompt_len)).collect()
}

/// An SFT example's prompt and response ids, untruncated.
fn sft_ids(enc: &Encoder, r: &SftExample) -> Result<(Vec<u32>, Vec<u32>)> {
    let ctx = || format!("SFT example {}", r.prompt_id);
    Ok((enc.prompt_ids(&r.messages).with_context(ctx)?, enc.response_ids(&r.messages, &r.response).with_context(ctx)?))
}

/// Encode SFT examples in `form`, counting the truncated ones (packing
/// truncates none: a conversation runs on into the next block).
pub fn encode_sft(enc: &Encoder, rows: &[SftExample], form: SftForm) -> Result<(Vec<SftBlock>, usize)> {
    if let SftForm::Packed { cross_document } = form {
        return Ok((pack_sft(enc, rows, enc.truncation.max_length, cross_document)?, 0));
    }
    let mut truncated = 0;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let (prompt, response) = sft_ids(enc, r)?;
        let mut seq = enc.truncation.sequences(&prompt, &[&response]).remove(0);
        truncated += usize::from(seq.truncated);
        if form == SftForm::AllTokens {
            // Every token after the first is a label.
            seq.prompt_len = 1;
        }
        out.push(SftBlock { prompt_id: r.prompt_id.clone(), seqs: vec![seq] });
    }
    Ok((out, truncated))
}

/// The recipe's packed SFT: every conversation's ids (prompt, then the
/// response through its end-of-turn token), one after another in dataset
/// order, cut into blocks of `block` tokens (a conversation may run on into
/// the next block; the last block may be shorter). Every token after the
/// first of a block is a label. With `cross_document` a block is one
/// sequence, as plain concatenation trains it (documents attend to the ones
/// before them in the block); without, each document's piece is a sequence
/// of its own, positions from 0, and its first token is no label.
pub fn pack_sft(enc: &Encoder, rows: &[SftExample], block: usize, cross_document: bool) -> Result<Vec<SftBlock>> {
    if block < 2 {
        bail!("a packed block needs at least 2 tokens, got {block}");
    }
    let mut stream: Vec<(u32, usize)> = Vec::new();
    for (doc, r) in rows.iter().enumerate() {
        let (prompt, response) = sft_ids(enc, r)?;
        stream.extend(prompt.into_iter().chain(response).map(|id| (id, doc)));
    }
    let sequence = |ids: Vec<u32>| Sequence { ids, prompt_len: 1, truncated: false };
    let mut out = Vec::new();
    for (k, chunk) in stream.chunks(block).enumerate() {
        let seqs = if cross_document {
            vec![sequence(chunk.iter().map(|t| t.0).collect())]
        } else {
            chunk.chunk_by(|a, b| a.1 == b.1).map(|piece| sequence(piece.iter().map(|t| t.0).collect())).collect()
        };
        // A one-token piece predicts nothing.
        let seqs: Vec<Sequence> = seqs.into_iter().filter(|s| s.ids.len() >= 2).collect();
        if !seqs.is_empty() {
            out.push(SftBlock { prompt_id: format!("block-{k}"), seqs });
        }
    }
    Ok(out)
}

/// Encode pairs for `objective`; reference log-probs are required unless it is reference-free.
pub fn encode_pairs(enc: &Encoder, rows: &[Pair], objective: Option<&Objective>, file: &Path) -> Result<(Vec<PairExample>, usize)> {
    let needs_ref = objective.is_some_and(Objective::needs_reference);
    let mut truncated = 0;
    let mut out = Vec::with_capacity(rows.len());
    for (i, p) in rows.iter().enumerate() {
        let row = format!("{}: row {i} (prompt {})", file.display(), p.prompt_id);
        let prompt = enc.prompt_ids(&p.messages).with_context(|| format!("{row}: prompt"))?;
        let ids = |y: &str, text: &str| enc.response_ids(&p.messages, text).with_context(|| format!("{row}: {y}"));
        let responses = [ids("y_ws", &p.y_ws)?, ids("y_wt", &p.y_wt)?, ids("y_l", &p.y_l)?];
        let [y_ws, y_wt, y_l]: [Sequence; 3] =
            enc.truncation.sequences(&prompt, &responses.each_ref().map(Vec::as_slice)).try_into().expect("three responses");
        let mut example = PairExample { prompt_id: p.prompt_id.clone(), seqs: PerY { y_ws: Some(y_ws), y_wt: Some(y_wt), y_l }, reference: None };
        truncated += usize::from(Y::ALL.iter().any(|&y| example.seq(y).truncated));
        example.reference = recorded_reference(p, &example, needs_ref, &row)?;
        out.push(example);
    }
    Ok((out, truncated))
}

/// The pair's reference log-probs of (y_ws, y_wt, y_l), when its columns
/// hold them all finite. Where the objective `needs_ref`, a row without
/// them is refused, and so is one whose recorded token counts
/// (`ref_tokens_*`) are not this run's `example`'s. `row` names the row.
fn recorded_reference(p: &Pair, example: &PairExample, needs_ref: bool, row: &str) -> Result<Option<[f64; 3]>> {
    if needs_ref {
        for (y, column, recorded) in
            [(Y::Ws, "ref_tokens_y_ws", p.ref_tokens_y_ws), (Y::Wt, "ref_tokens_y_wt", p.ref_tokens_y_wt), (Y::L, "ref_tokens_y_l", p.ref_tokens_y_l)]
        {
            let tokens = example.seq(y).response_len();
            if recorded.is_some_and(|n| n as usize != tokens) {
                bail!(
                    "{row}: {column}: column '{column}' says the reference log-prob summed {} tokens, this run's tokenization and truncation give {tokens}; {RERUN_REF}",
                    recorded.unwrap_or_default()
                );
            }
        }
    }
    match (p.ref_logp_y_ws, p.ref_logp_y_wt, p.ref_logp_y_l) {
        (Some(a), Some(b), Some(c)) if [a, b, c].iter().all(|v| v.is_finite()) => Ok(Some([a, b, c])),
        (a, b, c) if needs_ref => {
            let column = [("ref_logp_y_ws", a), ("ref_logp_y_wt", b), ("ref_logp_y_l", c)]
                .into_iter()
                .find(|(_, v)| !v.is_some_and(f64::is_finite))
                .unwrap()
                .0;
            bail!("{row}: column '{column}' is empty or not finite; run `wrpo-train ref-logps` first");
        }
        _ => Ok(None),
    }
}

/// What a mismatch between a pairs file's reference log-probs and this run
/// asks for (here, and in [`crate::reference`]).
pub(crate) const RERUN_REF: &str = "run `wrpo-train ref-logps` again with this run's --model, --max-length and --max-prompt-length";

/// The n pairs a study's runs share when they train on a subsample (an
/// ablation): those with the smallest draws keyed by prompt id alone, so
/// every run and training seed gets the same ones whatever the file's order
/// (which is by prompt id, grouping families); kept in the file's order.
pub fn subsample(rows: Vec<Pair>, n: usize) -> Vec<Pair> {
    let mut draws: Vec<(f64, usize)> = rows.iter().enumerate().map(|(i, p)| (uniform_draw(0, "subsample", &p.prompt_id), i)).collect();
    draws.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut keep = vec![false; rows.len()];
    for &(_, i) in draws.iter().take(n) {
        keep[i] = true;
    }
    rows.into_iter().zip(keep).filter_map(|(p, k)| k.then_some(p)).collect()
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
