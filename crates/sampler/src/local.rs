//! Sampling from a local model with continuous batching: up to `batch_size`
//! sequences decode together, each in its own KV-cache slot; a finished
//! sequence's slot takes the next (prompt, sample_index) at once. The N
//! samples of a prompt share one prefill: a new sample of a prompt still in
//! the batch copies that slot's prompt positions instead of recomputing them.

use std::{collections::VecDeque, path::Path, time::Instant};

use anyhow::{Context, Result};
use wrpo_common::Message;
use wrpo_llm::{gguf::is_gguf, sampling::sample, ChatMessage, ChatTemplate, KvCache, LoadOptions, Model, Rng, Tokenizer};

use crate::backend::{Backend, Finish, Job, Outcome, Quantize, Settings, Sink};

pub struct LocalModel {
    model: Model,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    quantized: bool,
    /// Sequences decoded together (KV-cache slots).
    batch_size: usize,
}

/// A prompt rendered and tokenized once for all its samples.
struct Prepared<'a> {
    prompt_id: &'a str,
    text: String,
    ids: Vec<u32>,
}

/// A sequence being decoded in cache slot = its index in the batch.
struct Row {
    prepared: usize,
    sample_index: u32,
    rng: Rng,
    tokens: Vec<u32>,
    /// New tokens this row may make: --max-new-tokens, or less near the context end.
    limit: usize,
    seconds: f64,
}

impl LocalModel {
    /// A GGUF file keeps its quantized projections; an HF folder is
    /// quantized at load as `quantize` says (inference only either way).
    pub fn load(path: &Path, quantize: Quantize, batch_size: usize) -> Result<Self> {
        let quantized = is_gguf(path) || quantize != Quantize::None;
        let model = Model::load(path, &LoadOptions::quantized(quantize.ggml()))?;
        let tokenizer = Tokenizer::load(path)?;
        let template = tokenizer.chat_template_for(model.config.family)?;
        Ok(LocalModel { model, tokenizer, template, quantized, batch_size: batch_size.max(1) })
    }

    /// What can be checked without loading the weights: the architecture is
    /// supported, a GGUF file is whole, the tokenizer and a chat template are
    /// there. Run for every model before any sampling starts.
    pub fn check(path: &Path) -> Result<()> {
        if is_gguf(path) {
            wrpo_llm::gguf::Gguf::open(path)?;
        }
        let family = wrpo_llm::Config::from_hf_json(&Model::hf_config(path)?).with_context(|| format!("{}", path.display()))?.family;
        Tokenizer::load(path)?.chat_template_for(family)?;
        Ok(())
    }

    fn prepare<'a>(&self, job: &'a Job) -> Result<Prepared<'a>, String> {
        let messages: Vec<ChatMessage> = job.prompt.messages.iter().map(chat_message).collect();
        let text = self.template.render(&messages, true).map_err(|e| format!("the chat template refused the prompt: {e:#}"))?;
        let ids = self.tokenizer.encode_chat(&text).map_err(|e| format!("{e:#}"))?;
        let context = self.model.config.max_position_embeddings;
        if ids.len() >= context {
            return Err(format!("the prompt has {} tokens; the model's context holds {context}", ids.len()));
        }
        Ok(Prepared { prompt_id: &job.prompt.prompt_id, text, ids })
    }

    /// Has `row` ended with its newest token? Stop ids and stop strings end
    /// it as `stop`, its token limit as `length`.
    fn finished(&self, row: &Row, settings: &Settings) -> Result<Option<Finish>> {
        let last = *row.tokens.last().expect("a row has a token");
        if self.tokenizer.stop_ids.contains(&last) {
            return Ok(Some(Finish::Stop));
        }
        if !settings.stop.is_empty() {
            let text = self.tokenizer.decode(&row.tokens)?;
            if settings.stop.iter().any(|s| text.contains(s.as_str())) {
                return Ok(Some(Finish::Stop));
            }
        }
        Ok((row.tokens.len() >= row.limit).then_some(Finish::Length))
    }

    fn emit(&self, prepared: &[Prepared], mut row: Row, finish: Finish, stop: &[String], sink: &mut dyn Sink) -> Result<()> {
        let p = &prepared[row.prepared];
        if finish == Finish::Stop && row.tokens.last().is_some_and(|t| self.tokenizer.stop_ids.contains(t)) {
            row.tokens.pop();
        }
        let mut response = self.tokenizer.decode(&row.tokens)?;
        // A stop string ends the response and is not part of it.
        if let Some(cut) = stop.iter().filter_map(|s| response.find(s.as_str())).min() {
            response.truncate(cut);
        }
        sink.push(
            p.prompt_id,
            row.sample_index,
            Outcome {
                prompt_text: p.text.clone(),
                response,
                prompt_tokens: p.ids.len() as u32,
                response_tokens: row.tokens.len() as u32,
                finish,
                seconds: row.seconds,
            },
        )
    }
}

impl Backend for LocalModel {
    fn describe(&self) -> String {
        let c = &self.model.config;
        format!(
            "{}, {} layers, hidden {}, vocab {}, context {}, {}; on {}",
            c.family.model_type,
            c.num_layers,
            c.hidden_size,
            c.vocab_size,
            c.max_position_embeddings,
            if self.quantized { "quantized weights" } else { "f32 weights" },
            wrpo_llm::cpu_summary()
        )
    }

    fn generate(&self, jobs: &[Job], settings: &Settings, alias: &str, sink: &mut dyn Sink) -> Result<()> {
        let mut prepared = Vec::new();
        let mut queue = VecDeque::new();
        for job in jobs {
            match self.prepare(job) {
                Ok(p) => {
                    queue.extend(job.sample_indices.iter().map(|&s| (prepared.len(), s)));
                    prepared.push(p);
                }
                Err(why) => {
                    for &s in &job.sample_indices {
                        let skipped = Outcome {
                            prompt_text: String::new(),
                            response: String::new(),
                            prompt_tokens: 0,
                            response_tokens: 0,
                            finish: Finish::Skipped(why.clone()),
                            seconds: 0.0,
                        };
                        sink.push(&job.prompt.prompt_id, s, skipped)?;
                    }
                }
            }
        }
        if queue.is_empty() {
            return Ok(());
        }
        let context = self.model.config.max_position_embeddings;
        let capacity = prepared.iter().map(|p| (p.ids.len() + settings.max_new_tokens).min(context)).max().unwrap_or(1);
        let mut cache = KvCache::new(&self.model, self.batch_size.clamp(1, queue.len()), capacity)?;
        let mut batch: Vec<Row> = Vec::new();
        // The next-token logits after a prompt, kept while its samples are queued.
        let mut prompt_logits: Option<(usize, Vec<f32>)> = None;

        while !sink.interrupted() && (!queue.is_empty() || !batch.is_empty()) {
            // Refill free slots.
            while batch.len() < cache.slots() && !sink.interrupted() {
                let Some((p, sample_index)) = queue.pop_front() else { break };
                let slot = batch.len();
                let started = Instant::now();
                let prompt_len = prepared[p].ids.len();
                let sharer = batch.iter().position(|r| r.prepared == p);
                let logits = match (&prompt_logits, sharer) {
                    (Some((q, logits)), Some(src)) if *q == p => {
                        cache.copy_slot(src, slot)?;
                        cache.truncate(slot, prompt_len);
                        logits.clone()
                    }
                    _ => {
                        cache.clear(slot);
                        let logits = self.model.prefill(&mut cache, slot, &prepared[p].ids)?.to_vec1::<f32>()?;
                        prompt_logits = Some((p, logits.clone()));
                        logits
                    }
                };
                let mut row = Row {
                    prepared: p,
                    sample_index,
                    rng: Rng::new(settings.sample_seed(prepared[p].prompt_id, alias, sample_index)),
                    tokens: Vec::new(),
                    limit: settings.max_new_tokens.min(capacity - prompt_len),
                    seconds: 0.0,
                };
                row.tokens.push(sample(&logits, &settings.sampling, &mut row.rng));
                row.seconds += started.elapsed().as_secs_f64();
                match self.finished(&row, settings)? {
                    Some(finish) => self.emit(&prepared, row, finish, &settings.stop, sink)?,
                    None => batch.push(row),
                }
            }
            if batch.is_empty() {
                continue;
            }
            // One decoding step for the whole batch.
            let started = Instant::now();
            let last: Vec<u32> = batch.iter().map(|r| *r.tokens.last().expect("a row has a token")).collect();
            let logits = self.model.decode(&mut cache, &last)?.to_vec2::<f32>()?;
            // Rows draw in parallel: each has its own generator, so the
            // tokens do not depend on which thread draws them.
            let mut draws: Vec<(&mut Row, &[f32])> = batch.iter_mut().zip(&logits).map(|(r, l)| (r, l.as_slice())).collect();
            wrpo_llm::for_each_mut(&mut draws, &|(row, logits)| {
                let token = sample(logits, &settings.sampling, &mut row.rng);
                row.tokens.push(token);
            });
            let share = started.elapsed().as_secs_f64() / batch.len() as f64;
            let mut done = Vec::new();
            for (i, row) in batch.iter_mut().enumerate() {
                row.seconds += share;
                if let Some(finish) = self.finished(row, settings)? {
                    done.push((i, finish));
                }
            }
            // Highest index first, so that the rows moved into freed slots are live ones.
            for (i, finish) in done.into_iter().rev() {
                let last = batch.len() - 1;
                if i != last {
                    cache.copy_slot(last, i)?;
                }
                let row = batch.swap_remove(i);
                self.emit(&prepared, row, finish, &settings.stop, sink)?;
            }
        }
        Ok(())
    }
}

fn chat_message(m: &Message) -> ChatMessage<'_> {
    ChatMessage { role: m.role.as_str(), content: &m.content }
}
