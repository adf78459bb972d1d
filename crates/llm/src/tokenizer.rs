//! Tokenizers: an HF `tokenizer.json`, or one built from GGUF metadata as
//! llama.cpp tokenizes (byte-level BPE with the pre-tokenizer that
//! `tokenizer.ggml.pre` names; SentencePiece-style BPE with byte fallback for
//! `tokenizer.ggml.model = llama`, as in Gemma and Llama-2). A GGUF vocabulary
//! is turned into an HF tokenizer.json, so the same file is what a saved
//! checkpoint ships.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::{gguf::Gguf, ChatTemplate, Family};

/// Strings that end an assistant turn in the chat formats we know.
const END_OF_TURN: [&str; 5] = ["<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>", "<|endoftext|>"];

/// Pre-tokenizer regexes of llama.cpp (llama-vocab.cpp) by `tokenizer.ggml.pre`.
const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str =
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const SUPPORTED_PRE: &str = "default, gpt2, smollm, starcoder, llama-bpe, llama3, qwen2";

fn pre_regexes(pre: &str) -> Result<Vec<&'static str>> {
    Ok(match pre {
        "default" | "gpt2" => vec![GPT2_REGEX],
        // Digits one by one, then GPT-2's split.
        "smollm" | "starcoder" => vec![r"\p{N}", GPT2_REGEX],
        "llama-bpe" | "llama3" => vec![LLAMA3_REGEX],
        "qwen2" => vec![QWEN2_REGEX],
        other => bail!("unsupported GGUF pre-tokenizer '{other}'; supported: {SUPPORTED_PRE}"),
    })
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The tokenizer.json that `inner` was built from, for saving.
    json: Value,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// Does encoding a fresh text start with BOS? (add_bos_token, or GGUF's add_bos_token)
    pub add_bos: bool,
    /// BOS that the post-processor puts before plain text, with no add_bos_token to say.
    text_bos: bool,
    /// Ids that end generation: EOS and the end-of-turn tokens.
    pub stop_ids: Vec<u32>,
    /// The model's Jinja chat template, if it ships one.
    pub chat_template: Option<String>,
}

/// The special token a post-processor puts before a single sequence, if
/// any: TemplateProcessing, alone or inside a Sequence of processors.
fn template_bos(post: &Value) -> Option<String> {
    match post["type"].as_str()? {
        "TemplateProcessing" => post["single"].as_array()?.first()?["SpecialToken"]["id"].as_str().map(str::to_string),
        "Sequence" => post["processors"].as_array()?.iter().find_map(template_bos),
        _ => None,
    }
}

impl Tokenizer {
    /// The tokenizer of a GGUF file or of an HF model folder.
    pub fn load(path: &Path) -> Result<Self> {
        if crate::gguf::is_gguf(path) {
            Self::from_gguf(&Gguf::open(path)?)
        } else {
            Self::from_hf_dir(path)
        }
    }

    /// From an HF model folder: tokenizer.json, with tokenizer_config.json
    /// (BOS/EOS, add_bos_token, chat template), chat_template.jinja and
    /// generation_config.json (extra EOS ids) when present.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let json: Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
        let read_json = |name: &str| -> Result<Value> {
            let p = dir.join(name);
            if !p.exists() {
                return Ok(Value::Null);
            }
            let t = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
            serde_json::from_str(&t).with_context(|| format!("{} is not valid JSON", p.display()))
        };
        let config = read_json("tokenizer_config.json")?;
        let generation = read_json("generation_config.json")?;
        let model_config = read_json("config.json")?;
        let token_text = |v: &Value| v.as_str().or(v["content"].as_str()).map(str::to_string);
        let mut chat_template = match &config["chat_template"] {
            Value::String(s) => Some(s.clone()),
            // A list of named templates: take "default".
            Value::Array(list) => list.iter().find(|t| t["name"] == "default").and_then(|t| t["template"].as_str()).map(str::to_string),
            _ => None,
        };
        let jinja = dir.join("chat_template.jinja");
        if jinja.exists() {
            chat_template = Some(std::fs::read_to_string(&jinja).with_context(|| format!("cannot read {}", jinja.display()))?);
        }
        let mut tok = Self::from_json(json, chat_template).with_context(|| format!("in {}", path.display()))?;
        let id_of = |t: Option<String>| t.and_then(|t| tok.inner.token_to_id(&t));
        tok.bos_id = id_of(token_text(&config["bos_token"])).or(model_config["bos_token_id"].as_u64().map(|v| v as u32));
        tok.eos_id = id_of(token_text(&config["eos_token"])).or(model_config["eos_token_id"].as_u64().map(|v| v as u32));
        tok.add_bos = config["add_bos_token"].as_bool().unwrap_or(false);
        // Unless the config says, plain text gets BOS as the post-processor
        // puts it (Llama-3's TemplateProcessing writes <|begin_of_text|>).
        let by_post_processor = template_bos(&tok.json["post_processor"]).filter(|_| config["add_bos_token"].is_null());
        tok.text_bos = by_post_processor.is_some();
        if tok.bos_id.is_none() {
            tok.bos_id = id_of(by_post_processor);
        }
        for source in [&generation["eos_token_id"], &model_config["eos_token_id"]] {
            match source {
                Value::Number(n) => tok.stop_ids.extend(n.as_u64().map(|v| v as u32)),
                Value::Array(a) => tok.stop_ids.extend(a.iter().filter_map(|v| v.as_u64().map(|v| v as u32))),
                _ => {}
            }
        }
        tok.finish_stop_ids();
        Ok(tok)
    }

    /// Build the tokenizer that a GGUF file's tokenizer.ggml.* metadata describes.
    pub fn from_gguf(gguf: &Gguf) -> Result<Self> {
        let path = gguf.path.display().to_string();
        let strings = |key: &str| -> Result<Vec<String>> {
            let values = gguf.meta(key).ok_or_else(|| anyhow!("{path}: metadata '{key}' is missing"))?.to_vec()?;
            values.iter().map(|v| Ok(v.to_string()?.clone())).collect::<candle_core::Result<_>>().map_err(Into::into)
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let types: Vec<i32> = match gguf.meta("tokenizer.ggml.token_type") {
            Some(v) => v.to_vec()?.iter().map(|t| t.to_i32().unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        let model = gguf.meta_str("tokenizer.ggml.model").unwrap_or("gpt2");
        let add_space_prefix = gguf.meta("tokenizer.ggml.add_space_prefix").and_then(|v| v.to_bool().ok());
        let (json_model, normalizer, pre_tokenizer, decoder) = match model {
            "gpt2" => {
                let merges = strings("tokenizer.ggml.merges")?;
                let merges: Vec<Value> = merges
                    .iter()
                    .map(|m| m.split_once(' ').map(|(a, b)| json!([a, b])).ok_or_else(|| anyhow!("{path}: merge '{m}' is not two tokens")))
                    .collect::<Result<_>>()?;
                let pre = gguf.meta_str("tokenizer.ggml.pre").unwrap_or("default");
                let mut steps: Vec<Value> = pre_regexes(pre)
                    .with_context(|| path.clone())?
                    .into_iter()
                    .map(|r| json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false}))
                    .collect();
                steps.push(json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}));
                let model = bpe_json(&tokens, merges, false, None);
                let decoder = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false});
                (model, Value::Null, json!({"type": "Sequence", "pretokenizers": steps}), decoder)
            }
            "llama" => {
                let scores: Vec<f32> = match gguf.meta("tokenizer.ggml.scores") {
                    Some(v) => v.to_vec()?.iter().map(|s| s.to_f32().unwrap_or(0.0)).collect(),
                    None => bail!("{path}: a SentencePiece vocabulary needs tokenizer.ggml.scores"),
                };
                let unk = gguf.meta_u32("tokenizer.ggml.unknown_token_id").and_then(|i| tokens.get(i as usize)).cloned();
                let model = bpe_json(&tokens, sentencepiece_merges(&tokens, &scores, &types), true, unk);
                let mut normalizers = vec![];
                let mut decoders = vec![
                    json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
                    json!({"type": "ByteFallback"}),
                    json!({"type": "Fuse"}),
                ];
                if add_space_prefix.unwrap_or(true) {
                    normalizers.push(json!({"type": "Prepend", "prepend": "▁"}));
                    decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
                }
                normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
                (model, json!({"type": "Sequence", "normalizers": normalizers}), Value::Null, json!({"type": "Sequence", "decoders": decoders}))
            }
            other => bail!("{path}: unsupported tokenizer model '{other}'; supported: gpt2 (byte-level BPE), llama (SentencePiece BPE)"),
        };
        // Control (3) and user-defined (4) tokens are matched whole in the
        // text before the model sees it, as llama.cpp does.
        let added: Vec<Value> = types
            .iter()
            .enumerate()
            .filter(|(_, &t)| t == 3 || t == 4)
            .map(|(id, &t)| {
                json!({"id": id, "content": tokens[id], "single_word": false, "lstrip": false, "rstrip": false,
                       "normalized": false, "special": t == 3})
            })
            .collect();
        let json = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": normalizer, "pre_tokenizer": pre_tokenizer, "post_processor": null,
            "decoder": decoder, "model": json_model,
        });
        let mut tok = Self::from_json(json, gguf.meta_str("tokenizer.chat_template").map(str::to_string)).with_context(|| path.clone())?;
        tok.bos_id = gguf.meta_u32("tokenizer.ggml.bos_token_id");
        tok.eos_id = gguf.meta_u32("tokenizer.ggml.eos_token_id");
        tok.add_bos = gguf.meta("tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok()).unwrap_or(model == "llama");
        tok.stop_ids.extend(gguf.meta_u32("tokenizer.ggml.eot_token_id"));
        tok.finish_stop_ids();
        Ok(tok)
    }

    fn from_json(json: Value, chat_template: Option<String>) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(serde_json::to_vec(&json)?).map_err(|e| anyhow!("cannot build the tokenizer: {e}"))?;
        Ok(Tokenizer { inner, json, bos_id: None, eos_id: None, add_bos: false, text_bos: false, stop_ids: vec![], chat_template })
    }

    fn finish_stop_ids(&mut self) {
        self.stop_ids.extend(self.eos_id);
        self.stop_ids.extend(END_OF_TURN.iter().filter_map(|t| self.inner.token_to_id(t)));
        self.stop_ids.sort_unstable();
        self.stop_ids.dedup();
    }

    /// Token ids of `text`. Special tokens written in the text (as a
    /// rendered chat template writes them) become their ids; BOS is added
    /// in front when `add_bos` and the tokenizer asks for it.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        self.encode_with(text, add_bos && (self.add_bos || self.text_bos))
    }

    fn encode_with(&self, text: &str, bos: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, false).map_err(|e| anyhow!("cannot tokenize: {e}"))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if bos {
            ids.extend(self.bos_id);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Token ids of a prompt rendered by a chat template. Templates that
    /// write BOS themselves get no second one; transformers'
    /// apply_chat_template(tokenize=True) and llama.cpp agree on this.
    pub fn encode_chat(&self, rendered: &str) -> Result<Vec<u32>> {
        // Not the post-processor's BOS: apply_chat_template tokenizes without special tokens.
        self.encode_with(rendered, self.chat_bos(rendered).is_some())
    }

    /// The BOS text `encode_chat` puts before `rendered`, if it adds one.
    fn chat_bos(&self, rendered: &str) -> Option<String> {
        let bos = self.bos_id.and_then(|id| self.id_to_token(id))?;
        (self.add_bos && !rendered.starts_with(&bos)).then_some(bos)
    }

    /// `rendered` as text that a server, told not to add special tokens,
    /// tokenizes to `encode_chat(rendered)`: with the BOS it adds written out.
    pub fn chat_text(&self, rendered: &str) -> String {
        self.chat_bos(rendered).unwrap_or_default() + rendered
    }

    /// Text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| anyhow!("cannot decode: {e}"))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The model's chat template, or the built-in one of its family, with
    /// this tokenizer's BOS and EOS text.
    pub fn chat_template_for(&self, family: &Family) -> Result<ChatTemplate> {
        let text = |id: Option<u32>| id.and_then(|i| self.id_to_token(i)).unwrap_or_default();
        ChatTemplate::for_model(self.chat_template.as_deref(), family, &text(self.bos_id), &text(self.eos_id))
    }

    /// The HF tokenizer.json of this tokenizer.
    pub fn to_json(&self) -> &Value {
        &self.json
    }
}

fn bpe_json(tokens: &[String], merges: Vec<Value>, byte_fallback: bool, unk: Option<String>) -> Value {
    let vocab: serde_json::Map<String, Value> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i.into())).collect();
    json!({"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null, "end_of_word_suffix": null,
           "fuse_unk": byte_fallback, "byte_fallback": byte_fallback, "ignore_merges": false, "vocab": vocab, "merges": merges})
}

/// BPE merges equivalent to a SentencePiece BPE vocabulary: every split of a
/// piece into two pieces is a merge, ranked by the merged piece's score
/// (higher first), ties in vocabulary order, as transformers' converter does.
fn sentencepiece_merges(tokens: &[String], scores: &[f32], types: &[i32]) -> Vec<Value> {
    let index: std::collections::HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let mut merges: Vec<(f32, usize, usize, usize)> = vec![];
    for (id, piece) in tokens.iter().enumerate() {
        // Only ordinary pieces take part in merging.
        if types.get(id).is_some_and(|&t| t != 1) {
            continue;
        }
        for (cut, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(cut);
            if let (Some(&li), Some(&ri)) = (index.get(l), index.get(r)) {
                merges.push((scores.get(id).copied().unwrap_or(0.0), id, li, ri));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)).then(a.3.cmp(&b.3)));
    merges.into_iter().map(|(_, _, l, r)| json!([tokens[l], tokens[r]])).collect()
}
