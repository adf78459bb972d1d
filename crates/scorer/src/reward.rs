//! Reward functions: reward models on the [user, assistant] conversation
//! (sequence-classification heads and ArmoRM's gated multi-objective head,
//! over the decoder of `wrpo-llm`), similarity to a reference answer in a
//! sentence-transformers embedding space, and verifiers against the
//! reference. The same measured by servers are in `served.rs`; which
//! reward `--reward` names, and loading it, in `spec.rs`.

use std::{cell::RefCell, collections::HashMap, ops::Range, path::Path};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use serde_json::Value;
use wrpo_common::Message;
use wrpo_llm::{ChatMessage, ChatTemplate, Family, KvCache, LoadOptions, Model, Tokenizer};

/// A reward, or why it could not be had (a server refused the item): a skipped row.
pub type Scored = Result<f64, String>;

/// A batch's outcomes as far as they got: one per item, None for an item a
/// fatal error left unscored, and that error.
pub type Partial = (Vec<Option<Scored>>, Option<anyhow::Error>);

/// Every outcome of a [`Partial`], or its fatal error.
pub fn all_or_error((scored, fatal): Partial) -> Result<Vec<Scored>> {
    match fatal {
        Some(e) => Err(e),
        None => Ok(scored.into_iter().map(|s| s.expect("an item without outcome and no fatal error")).collect()),
    }
}

/// One response to score.
pub struct Item<'a> {
    pub messages: &'a [Message],
    pub response: &'a str,
    pub reference: Option<&'a str>,
}

impl<'a> Item<'a> {
    /// The reference answer a similarity needs.
    pub fn reference(&self) -> Result<&'a str> {
        self.reference.ok_or_else(|| anyhow!("similarity needs a reference answer"))
    }
}

pub trait Reward {
    /// The `reward_model` column: what scored the rows.
    fn name(&self) -> String;
    /// Can this prompt's reference be scored against? (None for rewards that need none.)
    fn checkable(&self, reference: Option<&str>) -> bool {
        reference.is_some()
    }
    /// Tokens one item costs in a batch (0 for verifiers): batches are made of
    /// items of similar cost, up to a budget of padded tokens.
    fn cost(&self, item: &Item) -> Result<usize>;
    /// True when an item costs its own tokens (no padding) and samples of one
    /// prompt, batched together, compute the prompt once: work is then
    /// ordered by prompt rather than by length.
    fn shares_prompts(&self) -> bool {
        false
    }
    /// Rewards of `items`; an item refused is an error. (Implement this or
    /// `score_or_refuse`.)
    fn score(&self, items: &[Item]) -> Result<Vec<f64>> {
        self.score_or_refuse(items)?.into_iter().map(|s| s.map_err(|why| anyhow!(why))).collect()
    }
    /// Rewards of `items`, each one or why it was refused; local rewards refuse nothing.
    fn score_or_refuse(&self, items: &[Item]) -> Result<Vec<Scored>> {
        Ok(self.score(items)?.into_iter().map(Ok).collect())
    }
    /// As `score_or_refuse`, but a fatal error keeps the outcomes of the
    /// items finished before it, which the caller commits: what a judge or
    /// a server already graded is never asked (and paid for) again. A local
    /// reward finishes a batch whole or not at all.
    fn score_partial(&self, items: &[Item]) -> Partial {
        match self.score_or_refuse(items) {
            Ok(scored) => (scored.into_iter().map(Some).collect(), None),
            Err(e) => (items.iter().map(|_| None).collect(), Some(e)),
        }
    }
}

fn folder_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// Right-padded ids (B, T) and their attention mask.
fn pad(rows: &[Vec<u32>], device: &Device) -> Result<(Tensor, Tensor)> {
    let t = rows.iter().map(Vec::len).max().unwrap_or(1);
    let mut ids = vec![0u32; rows.len() * t];
    let mut mask = vec![0u32; rows.len() * t];
    for (r, row) in rows.iter().enumerate() {
        ids[r * t..r * t + row.len()].copy_from_slice(row);
        mask[r * t..r * t + row.len()].iter_mut().for_each(|m| *m = 1);
    }
    Ok((Tensor::from_vec(ids, (rows.len(), t), device)?, Tensor::from_vec(mask, (rows.len(), t), device)?))
}

/// The reward-model architectures that load: each family's
/// sequence-classification class, and ArmoRM's gated head.
fn supported_reward_models() -> String {
    format!("{}, {ARMORM} (ArmoRM)", wrpo_llm::supported(|f| f.reward_model))
}

/// ArmoRM's architecture: a Llama with a gated multi-objective head.
const ARMORM: &str = "LlamaForRewardModelWithGating";

/// A decoder with a reward head, scoring the conversation rendered by its own chat template.
pub struct RewardModel {
    name: String,
    model: Model,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    head: Head,
}

enum Head {
    /// `score.weight` (1, hidden) at the last token.
    Linear(Tensor),
    /// ArmoRM: per-objective rewards at the last token, mixed by a gating
    /// network read at the start of the last assistant header.
    Gated(Box<Gating>),
}

struct Gating {
    regression: Tensor,
    transform: Tensor,
    layers: Vec<(Tensor, Tensor)>,
    logit_scale: f64,
    temperature: f64,
    pattern: Vec<u32>,
}

/// The ids ArmoRM's published code searches for: Llama-3's
/// `<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n`.
const ARMORM_PATTERN: [u32; 5] = [128009, 128006, 78191, 128007, 271];

impl RewardModel {
    pub fn load(path: &Path, dtype: DType) -> Result<Self> {
        let config = read_json(&path.join("config.json"))?;
        let arch = config["architectures"][0].as_str().unwrap_or("").to_string();
        let gated = arch == ARMORM;
        let seq_cls = Family::from_reward_model(&arch).is_some();
        if !gated && !seq_cls {
            bail!("{}: architecture '{arch}' is not a supported reward model; supported: {}", path.display(), supported_reward_models());
        }
        let labels = config["id2label"].as_object().map_or(config["num_labels"].as_u64().unwrap_or(1), |m| m.len() as u64);
        if seq_cls && labels != 1 {
            bail!("{}: the head has {labels} labels; a reward model has one", path.display());
        }
        let model = Model::load(path, &LoadOptions::frozen(dtype))?;
        let tokenizer = Tokenizer::load(path)?;
        let template = tokenizer.chat_template_for(model.config.family)?;
        let hidden = model.config.hidden_size;
        let head = if gated {
            let k = config["num_objectives"].as_u64().unwrap_or(19) as usize;
            let n_hidden = config["gating_n_hidden"].as_u64().unwrap_or(3) as usize;
            let dim = config["gating_hidden_dim"].as_u64().unwrap_or(1024) as usize;
            let mut layers = Vec::new();
            for i in 0..=n_hidden {
                let (out, inp) = (if i == n_hidden { k } else { dim }, if i == 0 { hidden } else { dim });
                layers.push((
                    model.tensor(&format!("gating.layers.{i}.weight"), &[out, inp])?,
                    model.tensor(&format!("gating.layers.{i}.bias"), &[out])?,
                ));
            }
            let pattern = match config["gating_token_pattern"].as_array() {
                Some(ids) => ids
                    .iter()
                    .map(|v| v.as_u64().map(|v| v as u32).ok_or_else(|| anyhow!("gating_token_pattern holds a non-id")))
                    .collect::<Result<_>>()?,
                None => ARMORM_PATTERN.to_vec(),
            };
            Head::Gated(Box::new(Gating {
                regression: model.tensor("regression_layer.weight", &[k, hidden])?,
                transform: model.tensor("reward_transform_matrix", &[k, k])?,
                layers,
                logit_scale: model.tensor("gating.logit_scale", &[1])?.to_dtype(DType::F64)?.to_vec1::<f64>()?[0],
                temperature: config["gating_temperature"].as_f64().unwrap_or(10.0),
                pattern,
            }))
        } else {
            Head::Linear(model.tensor("score.weight", &[1, hidden])?)
        };
        Ok(RewardModel { name: format!("rm:{}", folder_name(path)), model, tokenizer, template, head })
    }

    /// Token ids of the conversation (prompt + response as the assistant
    /// turn), keeping the end when it overflows the context.
    pub fn conversation_ids(&self, item: &Item) -> Result<Vec<u32>> {
        let mut turns: Vec<ChatMessage> = item.messages.iter().map(|m| ChatMessage { role: m.role.as_str(), content: &m.content }).collect();
        turns.push(ChatMessage { role: "assistant", content: item.response });
        let text = self.template.render(&turns, false)?;
        let ids = self.tokenizer.encode_chat(&text)?;
        let context = self.model.config.max_position_embeddings;
        Ok(if ids.len() > context { ids[ids.len() - context..].to_vec() } else { ids })
    }

    /// Rewards of token sequences on the inference path: no padding and no
    /// LM head. The rows of a group (samples of one prompt) share the tokens
    /// of its prompt, which run once; then the rows run together, packed.
    pub fn score_ids(&self, rows: &[Vec<u32>], groups: &[Range<usize>]) -> Result<Vec<f64>> {
        let longest = rows.iter().map(Vec::len).max().unwrap_or(1);
        // Slot 0 holds the shared prefix, slots 1.. its copies, one per row of a pass.
        let widest = groups.iter().map(|g| g.len()).max().unwrap_or(1).min(ROWS_PER_PASS);
        let mut cache = KvCache::new(&self.model, widest + 1, longest)?;
        let (mut at_last, mut at_gate) = (Vec::with_capacity(rows.len()), Vec::new());
        for group in groups {
            let group = &rows[group.clone()];
            // The shared prefix, leaving every row at least its last token to run.
            let shared = match group {
                [_] => 0,
                _ => group.iter().map(|r| common_prefix(&group[0], r).min(r.len() - 1)).min().unwrap_or(0),
            };
            cache.clear(0);
            let prefix = if shared > 0 { Some(self.model.prefill_hidden(&mut cache, &[(0, &group[0][..shared])])?) } else { None };
            for pass in group.chunks(ROWS_PER_PASS) {
                for slot in 1..=pass.len() {
                    cache.copy_slot(0, slot)?;
                }
                let parts: Vec<(usize, &[u32])> = pass.iter().enumerate().map(|(i, r)| (i + 1, &r[shared..])).collect();
                let hidden = self.model.prefill_hidden(&mut cache, &parts)?;
                let mut start = 0;
                for row in pass {
                    let rest = hidden.narrow(0, start, row.len() - shared)?;
                    start += row.len() - shared;
                    at_last.push(rest.get(rest.dim(0)? - 1)?);
                    if let Head::Gated(g) = &self.head {
                        let at = row.windows(g.pattern.len()).rposition(|w| w == g.pattern.as_slice()).ok_or_else(|| {
                            anyhow!("the gating token pattern {:?} (the start of the assistant turn) is not in the conversation", g.pattern)
                        })?;
                        at_gate.push(match &prefix {
                            Some(p) if at < shared => p.get(at)?,
                            _ => rest.get(at - shared)?,
                        });
                    }
                }
            }
        }
        let at_last = Tensor::stack(&at_last, 0)?;
        let rewards = match &self.head {
            Head::Linear(w) => at_last.matmul(&w.t()?)?.squeeze(1)?,
            Head::Gated(g) => {
                let mut x = Tensor::stack(&at_gate, 0)?;
                for (i, (w, b)) in g.layers.iter().enumerate() {
                    x = x.matmul(&w.t()?)?.broadcast_add(b)?;
                    if i + 1 < g.layers.len() {
                        x = x.relu()?;
                    }
                }
                let gate = (candle_nn::ops::softmax(&(x / g.temperature)?, D::Minus1)? * g.logit_scale)?;
                let objectives = at_last.matmul(&g.regression.t()?)?.matmul(&g.transform)?;
                (gate * objectives)?.sum(1)?
            }
        };
        Ok(rewards.to_dtype(DType::F64)?.to_vec1::<f64>()?)
    }
}

/// Rows a reward model runs in one pass at most (each holds a cache slot).
const ROWS_PER_PASS: usize = 8;

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl Reward for RewardModel {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn checkable(&self, _: Option<&str>) -> bool {
        true
    }
    fn cost(&self, item: &Item) -> Result<usize> {
        Ok(self.conversation_ids(item)?.len())
    }
    fn shares_prompts(&self) -> bool {
        true
    }
    fn score(&self, items: &[Item]) -> Result<Vec<f64>> {
        let rows = items.iter().map(|i| self.conversation_ids(i)).collect::<Result<Vec<_>>>()?;
        // Consecutive items with the same messages: samples of one prompt.
        let mut groups: Vec<Range<usize>> = vec![];
        for i in 0..items.len() {
            match groups.last_mut() {
                Some(g) if items[g.start].messages == items[i].messages => g.end = i + 1,
                _ => groups.push(i..i + 1),
            }
        }
        self.score_ids(&rows, &groups)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Pooling {
    Mean,
    Cls,
    Max,
    MeanSqrtLen,
}

/// sentence-transformers' names of the pooling modes, old (one bool key each) and current.
const POOLING_MODES: [(&str, &str, Option<Pooling>); 6] = [
    ("pooling_mode_cls_token", "cls", Some(Pooling::Cls)),
    ("pooling_mode_mean_tokens", "mean", Some(Pooling::Mean)),
    ("pooling_mode_max_tokens", "max", Some(Pooling::Max)),
    ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens", Some(Pooling::MeanSqrtLen)),
    ("pooling_mode_weightedmean_tokens", "weightedmean", None),
    ("pooling_mode_lasttoken", "lasttoken", None),
];

impl Pooling {
    /// The mode of a Pooling module's config.json, in either format: the
    /// current one (sentence-transformers 6: `"pooling_mode": "mean"`) or
    /// the older one bool key per mode (`"pooling_mode_mean_tokens": true`).
    fn from_config(c: &serde_json::Value) -> Result<Self> {
        let supported = || POOLING_MODES.iter().filter(|m| m.2.is_some()).map(|m| m.1).collect::<Vec<_>>().join(", ");
        if let Some(mode) = c.get("pooling_mode") {
            let Some(name) = mode.as_str() else {
                bail!("'pooling_mode' is {mode}: one mode is supported (a list concatenates several embeddings, which is not implemented)");
            };
            return match POOLING_MODES.iter().find(|m| m.1 == name) {
                Some((_, _, Some(p))) => Ok(*p),
                _ => bail!("'pooling_mode' is \"{name}\", which is not implemented (supported: {})", supported()),
            };
        }
        let on: Vec<_> = POOLING_MODES.iter().filter(|m| c[m.0].as_bool() == Some(true)).collect();
        match on.as_slice() {
            [(_, _, Some(p))] => Ok(*p),
            [(key, _, None)] => bail!("'{key}' is on, a pooling mode that is not implemented (supported: {})", supported()),
            _ => bail!(
                "exactly one pooling mode must be on: 'pooling_mode' (sentence-transformers 6) or one of {}",
                POOLING_MODES.iter().map(|m| format!("'{}'", m.0)).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

/// A sentence-transformers model: a BERT (candle-transformers), its pooling
/// and optional normalisation, as its modules.json lays them out.
pub struct Similarity {
    name: String,
    bert: candle_transformers::models::bert::BertModel,
    tokenizer: tokenizers::Tokenizer,
    pooling: Pooling,
    normalize: bool,
    /// Embeddings of references already seen: the N samples of a prompt share one.
    references: RefCell<HashMap<String, Vec<f32>>>,
}

impl Similarity {
    pub fn load(path: &Path, dtype: DType) -> Result<Self> {
        let shown = path.display();
        let modules = read_json(&path.join("modules.json")).with_context(|| format!("{shown} is not a sentence-transformers folder"))?;
        let modules = modules.as_array().ok_or_else(|| anyhow!("{shown}/modules.json is not a list"))?;
        let module = |kind: &str| modules.iter().find(|m| m["type"].as_str().is_some_and(|t| t.ends_with(kind)));
        let pooling_dir = module("Pooling").and_then(|m| m["path"].as_str()).ok_or_else(|| anyhow!("{shown}/modules.json has no Pooling module"))?;
        let pooling_file = path.join(pooling_dir).join("config.json");
        let pooling = Pooling::from_config(&read_json(&pooling_file)?).with_context(|| pooling_file.display().to_string())?;
        let config: candle_transformers::models::bert::Config =
            serde_json::from_value(read_json(&path.join("config.json"))?).with_context(|| format!("{shown}/config.json is not a BERT config"))?;
        let weights = path.join("model.safetensors");
        // SAFETY: mapped read-only; the file must not change while loaded.
        let vb = unsafe { candle_nn::VarBuilder::from_mmaped_safetensors(&[&weights], dtype, &Device::Cpu) }
            .with_context(|| format!("cannot read {}", weights.display()))?;
        let bert = candle_transformers::models::bert::BertModel::load(vb, &config).with_context(|| format!("cannot build the BERT in {shown}"))?;
        let mut tokenizer = tokenizers::Tokenizer::from_file(path.join("tokenizer.json")).map_err(|e| anyhow!("{shown}/tokenizer.json: {e}"))?;
        let max_length = match read_json(&path.join("sentence_bert_config.json")) {
            Ok(c) => c["max_seq_length"].as_u64().map_or(config.max_position_embeddings, |v| v as usize),
            Err(_) => config.max_position_embeddings,
        };
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams { max_length, ..Default::default() }))
            .map_err(|e| anyhow!("{e}"))?
            .with_padding(None);
        Ok(Similarity {
            name: format!("similarity:{}", folder_name(path)),
            bert,
            tokenizer,
            pooling,
            normalize: module("Normalize").is_some(),
            references: RefCell::default(),
        })
    }

    fn ids(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.tokenizer.encode_fast(text, true).map_err(|e| anyhow!("cannot tokenize: {e}"))?.get_ids().to_vec())
    }

    /// Sentence embeddings, as SentenceTransformer.encode computes them.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let rows = texts.iter().map(|t| self.ids(t)).collect::<Result<Vec<_>>>()?;
        let device = &self.bert.device;
        let (ids, mask) = pad(&rows, device)?;
        let hidden = self.bert.forward(&ids, &ids.zeros_like()?, Some(&mask))?.to_dtype(DType::F32)?;
        let maskf = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let lens = maskf.sum(1)?; // (B, 1)
        let pooled = match self.pooling {
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean => hidden.broadcast_mul(&maskf)?.sum(1)?.broadcast_div(&lens)?,
            Pooling::MeanSqrtLen => hidden.broadcast_mul(&maskf)?.sum(1)?.broadcast_div(&lens.sqrt()?)?,
            // Padding set to -1e9 so it never wins, as sentence-transformers does.
            Pooling::Max => hidden.broadcast_add(&((maskf - 1.0)? * 1e9)?)?.max(1)?,
        };
        let pooled = if self.normalize {
            let norm = pooled.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
            pooled.broadcast_div(&norm)?
        } else {
            pooled
        };
        Ok(pooled.to_vec2::<f32>()?)
    }
}

pub(crate) fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt().max(1e-12);
    dot / (norm(a) * norm(b))
}

impl Reward for Similarity {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn cost(&self, item: &Item) -> Result<usize> {
        Ok(self.ids(item.response)?.len())
    }
    fn score(&self, items: &[Item]) -> Result<Vec<f64>> {
        let mut missing: Vec<&str> = Vec::new();
        for item in items {
            let r = item.reference()?;
            if !self.references.borrow().contains_key(r) && !missing.contains(&r) {
                missing.push(r);
            }
        }
        if !missing.is_empty() {
            let embedded = self.embed(&missing)?;
            self.references.borrow_mut().extend(missing.iter().map(|s| s.to_string()).zip(embedded));
        }
        let responses = self.embed(&items.iter().map(|i| i.response).collect::<Vec<_>>())?;
        let refs = self.references.borrow();
        items.iter().zip(&responses).map(|(item, e)| Ok(cosine(e, &refs[item.reference()?]))).collect()
    }
}

/// Lower case, whitespace collapsed, surrounding punctuation and quotes removed.
pub fn normalise(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let joined = words.join(" ").to_lowercase();
    joined.trim_matches(|c: char| c.is_ascii_punctuation() || c.is_whitespace()).to_string()
}

pub struct Exact;

impl Reward for Exact {
    fn name(&self) -> String {
        "exact".into()
    }
    fn cost(&self, _: &Item) -> Result<usize> {
        Ok(0)
    }
    fn score(&self, items: &[Item]) -> Result<Vec<f64>> {
        items.iter().map(|i| Ok(f64::from(normalise(i.response) == normalise(i.reference.unwrap_or_default())))).collect()
    }
}

/// The last number written in `text` (digits with an optional sign, decimal
/// point and thousands commas; "1/2" counts as 2), if any.
pub fn last_number(text: &str) -> Option<f64> {
    let chars: Vec<char> = text.chars().collect();
    let mut last = None;
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_digit() {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_digit() || (matches!(chars[i], ',' | '.') && chars.get(i + 1).is_some_and(|c| c.is_ascii_digit())))
            {
                i += 1;
            }
            let negative = start > 0 && chars[start - 1] == '-' && (start == 1 || !chars[start - 2].is_alphanumeric());
            let digits: String = chars[start..i].iter().filter(|&&c| c != ',').collect();
            if let Ok(v) = digits.parse::<f64>() {
                last = Some(if negative { -v } else { v });
            }
        } else {
            i += 1;
        }
    }
    last
}

pub struct Numeric {
    pub tolerance: f64,
}

impl Reward for Numeric {
    fn name(&self) -> String {
        format!("numeric:{}", self.tolerance)
    }
    fn checkable(&self, reference: Option<&str>) -> bool {
        reference.and_then(last_number).is_some()
    }
    fn cost(&self, _: &Item) -> Result<usize> {
        Ok(0)
    }
    fn score(&self, items: &[Item]) -> Result<Vec<f64>> {
        items
            .iter()
            .map(|i| {
                let want = last_number(i.reference.unwrap_or_default())
                    .ok_or_else(|| anyhow!("the reference '{}' holds no number", i.reference.unwrap_or_default()))?;
                let close = last_number(i.response).is_some_and(|got| (got - want).abs() <= self.tolerance * want.abs().max(1.0));
                Ok(f64::from(close))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifiers_compare_with_the_reference() {
        let item = |response, reference| Item { messages: &[], response, reference: Some(reference) };
        let exact = Exact.score(&[item("  Paris. ", "paris"), item("Lyon", "Paris")]).unwrap();
        assert_eq!(exact, [1.0, 0.0]);
        let numeric = Numeric { tolerance: 1e-6 };
        let got = numeric
            .score(&[
                item("2 + 2 = 4", "4"),
                item("It is 1,234.5 km", "1234.5"),
                item("-3 degrees", "-3"),
                item("about 5", "4"),
                item("no idea", "4"),
            ])
            .unwrap();
        assert_eq!(got, [1.0, 1.0, 1.0, 0.0, 0.0]);
        assert_eq!(last_number("x-2 and COVID-19"), Some(19.0));
        assert!(numeric.score(&[item("4", "four")]).unwrap_err().to_string().contains("holds no number"));
    }
}
