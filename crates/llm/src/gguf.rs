//! GGUF files (llama.cpp's format): the HF config their metadata implies,
//! and their tensors renamed and reshaped into the HF layout, so one decoder
//! (and one rotary layout) serves both formats and a GGUF-origin model saves
//! as an ordinary HF checkpoint.
//!
//! llama.cpp's converter changes two things that are undone here, as
//! transformers' own GGUF loader does: Llama-architecture Q and K rows are
//! permuted for interleaved rope, and Gemma norm weights are stored as 1 + w.

use std::{
    collections::HashMap,
    fs::File,
    io::BufReader,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{
    quantized::{gguf_file, GgmlDType, QStorage, QTensor},
    DType, Device, Tensor,
};
use serde_json::{json, Value};

use crate::{
    family::{Family, Sliding},
    weights::Weights,
};

pub struct Gguf {
    pub path: PathBuf,
    pub content: gguf_file::Content,
}

/// Does `path` start with the GGUF magic?
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    path.is_file() && File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"GGUF"
}

impl Gguf {
    pub fn open(path: &Path) -> Result<Self> {
        let mut reader = BufReader::new(File::open(path).with_context(|| format!("cannot open {}", path.display()))?);
        let content = gguf_file::Content::read(&mut reader).map_err(|e| {
            // Its first line, without the backtrace candle may capture; and what a missing-bytes message usually means.
            let text = e.to_string();
            let message = text.lines().next().unwrap_or_default();
            let hint = if message.contains("remaining") || message.contains("fill whole buffer") {
                " (its header is cut short: an interrupted download?)"
            } else {
                ""
            };
            anyhow::anyhow!("{} is not a readable GGUF file{hint}: {message}", path.display())
        })?;
        let gguf = Gguf { path: path.to_path_buf(), content };
        gguf.check_extents()?;
        Ok(gguf)
    }

    /// Refuse a file cut short: every tensor's data must lie inside it
    /// (checked from the header alone, before anything is read; `open` does).
    fn check_extents(&self) -> Result<()> {
        let len = std::fs::metadata(&self.path).with_context(|| format!("cannot open {}", self.path.display()))?.len();
        for (name, info) in &self.content.tensor_infos {
            let bytes = (info.shape.elem_count() / info.ggml_dtype.block_size() * info.ggml_dtype.type_size()) as u64;
            let end = self.content.tensor_data_offset + info.offset + bytes;
            if end > len {
                bail!(
                    "{}: tensor '{name}' ends at byte {end}, but the file has {len}: the file is cut short (an interrupted download?)",
                    self.path.display()
                );
            }
        }
        Ok(())
    }

    pub fn meta(&self, key: &str) -> Option<&gguf_file::Value> {
        self.content.metadata.get(key)
    }

    pub fn meta_str(&self, key: &str) -> Option<&str> {
        self.meta(key).and_then(|v| v.to_string().ok()).map(String::as_str)
    }

    pub fn meta_u32(&self, key: &str) -> Option<u32> {
        self.meta(key).and_then(|v| v.to_u32().or_else(|_| v.to_u64().map(|x| x as u32)).or_else(|_| v.to_i32().map(|x| x as u32)).ok())
    }

    fn meta_f64(&self, key: &str) -> Option<f64> {
        // An f32 as its shortest decimal (1e-6, not 9.99999997e-7): what the
        // HF config that was converted said.
        self.meta(key).and_then(|v| v.to_f32().map(|x| x.to_string().parse().unwrap_or(x as f64)).or_else(|_| v.to_f64()).ok())
    }

    pub fn architecture(&self) -> Result<&str> {
        self.meta_str("general.architecture").ok_or_else(|| anyhow!("{}: no general.architecture", self.path.display()))
    }

    /// The family of this file's architecture.
    pub fn family(&self) -> Result<&'static Family> {
        Family::from_gguf(self.architecture()?).map_err(|e| anyhow!("{}: {e}", self.path.display()))
    }

    /// The HF config.json that describes this model.
    pub fn hf_config(&self) -> Result<Value> {
        let arch = self.architecture()?;
        let family = self.family()?;
        let key = |k: &str| format!("{arch}.{k}");
        let need = |k: &str| self.meta_u32(&key(k)).ok_or_else(|| anyhow!("{}: metadata '{}' is missing", self.path.display(), key(k)));
        if self.content.tensor_infos.contains_key("rope_freqs.weight") || self.content.tensor_infos.contains_key("rope_factors_long.weight") {
            bail!("{}: per-frequency rope factors (Llama-3.1 / Phi-3 long rope GGUF) are not supported yet", self.path.display());
        }
        let heads = need("attention.head_count")?;
        let hidden = need("embedding_length")?;
        let head_dim = self.meta_u32(&key("attention.key_length")).unwrap_or(hidden / heads);
        let vocab = self
            .content
            .tensor_infos
            .get("token_embd.weight")
            .map(|t| t.shape.dims()[0])
            .ok_or_else(|| anyhow!("{}: tensor 'token_embd.weight' is missing", self.path.display()))?;
        let gemma = family.gemma_layout;
        let mut c = json!({
            "model_type": family.model_type,
            "architectures": [family.causal_lm],
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": need("feed_forward_length")?,
            "num_hidden_layers": need("block_count")?,
            "num_attention_heads": heads,
            "num_key_value_heads": self.meta_u32(&key("attention.head_count_kv")).unwrap_or(heads),
            "head_dim": head_dim,
            "rms_norm_eps": self.meta_f64(&key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-6),
            "max_position_embeddings": self.meta_u32(&key("context_length")).unwrap_or(4096),
            "rope_theta": self.meta_f64(&key("rope.freq_base")).unwrap_or(10_000.0),
            "tie_word_embeddings": !self.content.tensor_infos.contains_key("output.weight"),
            "hidden_act": if gemma { "gelu_pytorch_tanh" } else { "silu" },
            "torch_dtype": "float32",
        });
        let o = c.as_object_mut().unwrap();
        for (hf, gguf) in [
            ("bos_token_id", "tokenizer.ggml.bos_token_id"),
            ("eos_token_id", "tokenizer.ggml.eos_token_id"),
            ("pad_token_id", "tokenizer.ggml.padding_token_id"),
        ] {
            if let Some(id) = self.meta_u32(gguf) {
                o.insert(hf.into(), id.into());
            }
        }
        if let Some(dims) = self.meta_u32(&key("rope.dimension_count")).filter(|&d| d != head_dim) {
            o.insert("partial_rotary_factor".into(), (dims as f64 / head_dim as f64).into());
        }
        match self.meta_str(&key("rope.scaling.type")) {
            None | Some("none") => {}
            Some("linear") => {
                let factor = self.meta_f64(&key("rope.scaling.factor")).unwrap_or(1.0);
                o.insert("rope_scaling".into(), json!({"rope_type": "linear", "factor": factor}));
            }
            // Passed on so that the config refuses it by name, never ignored (yarn, ...).
            Some(other) => {
                o.insert("rope_scaling".into(), json!({"rope_type": other}));
            }
        }
        if let Some(w) = self.meta_u32(&key("attention.sliding_window")) {
            o.insert("sliding_window".into(), w.into());
        }
        if gemma {
            let layers = need("block_count")?;
            let scalar = gemma_query_scalar(family, layers, hidden, heads, head_dim, self.meta_f64(&key("attention.scale")));
            o.insert("query_pre_attn_scalar".into(), scalar.into());
            o.insert("hidden_activation".into(), "gelu_pytorch_tanh".into());
        }
        for (hf, gguf) in [("attn_logit_softcapping", "attn_logit_softcapping"), ("final_logit_softcapping", "final_logit_softcapping")] {
            if let Some(v) = self.meta_f64(&key(gguf)) {
                o.insert(hf.into(), v.into());
            }
        }
        if family.local_rope {
            // llama.cpp's fixed local rope base for Gemma-3.
            o.insert("rope_local_base_freq".into(), 10_000.0.into());
        }
        if family.sliding == Sliding::Pattern {
            // llama.cpp's 5 local : 1 global pattern unless the file states
            // one (a period, or one flag per layer).
            let pattern = self.meta(&key("attention.sliding_window_pattern"));
            match pattern.and_then(|p| p.to_vec().ok()) {
                Some(flags) => {
                    let types: Vec<&str> =
                        flags.iter().map(|f| if f.to_bool().unwrap_or(false) { "sliding_attention" } else { "full_attention" }).collect();
                    o.insert("layer_types".into(), types.into());
                }
                None => {
                    let period = self.meta_u32(&key("attention.sliding_window_pattern")).unwrap_or(6);
                    o.insert("sliding_window_pattern".into(), period.into());
                }
            }
        }
        if family.sliding == Sliding::FromMaxWindowLayers {
            o.insert("use_sliding_window".into(), false.into());
        }
        Ok(c)
    }

    /// `f(layout, GGUF name, HF name, tensor as stored)` for every tensor, in
    /// name order, one read at a time (so a loader holds only what it keeps):
    /// what both loaders start from.
    fn each_tensor(&self, device: &Device, mut f: impl FnMut(&Stored, &str, String, QTensor) -> Result<()>) -> Result<()> {
        let family = self.family()?;
        let config = self.hf_config()?;
        let heads = config["num_attention_heads"].as_u64().unwrap_or(1) as usize;
        let kv_heads = config["num_key_value_heads"].as_u64().unwrap_or(1) as usize;
        let stored = Stored { family, heads, kv_heads };
        let mut reader = BufReader::new(File::open(&self.path).with_context(|| format!("cannot open {}", self.path.display()))?);
        let mut names: Vec<_> = self.content.tensor_infos.keys().cloned().collect();
        names.sort();
        for name in names {
            let hf = hf_name(&name, family).ok_or_else(|| anyhow!("{}: unexpected tensor '{name}'", self.path.display()))?;
            let q =
                self.content.tensor(&mut reader, &name, device).with_context(|| format!("{}: cannot read tensor '{name}'", self.path.display()))?;
            f(&stored, &name, hf, q)?;
        }
        Ok(())
    }

    /// Every tensor, dequantized to `dtype` under its HF name and layout.
    pub fn weights(&self, dtype: DType, device: &Device) -> Result<Weights> {
        let mut dense = HashMap::new();
        self.each_tensor(device, |stored, name, hf, q| {
            dense.insert(hf, stored.dense(name, q.dequantize(device)?)?.to_dtype(dtype)?);
            Ok(())
        })?;
        Weights::from_tensors(dense, self.path.display().to_string())
    }

    /// Weights for fast inference: the 2-D projections stay quantized, in
    /// our kernel's Q8_0 and Q4_1; other block types (the k-quants, Q5_0,
    /// Q5_1) are re-encoded as Q8_0, which holds their 4 to 6 bits closely
    /// (candle's generic quantized matmul streams the whole weight once per
    /// batch row). Norms and the embedding table are dequantized; the table
    /// is also kept quantized as a tied LM head.
    pub fn quantized_weights(&self, device: &Device) -> Result<Weights> {
        let (mut dense, mut quantized) = (HashMap::new(), HashMap::new());
        self.each_tensor(device, |stored, name, hf, mut q| {
            if q.shape().rank() != 2 || name == "token_embd.weight" {
                dense.insert(hf.clone(), stored.dense(name, q.dequantize(device)?)?);
                if name != "token_embd.weight" {
                    return Ok(());
                }
            }
            if stored.family.gguf_permuted_qk && name.ends_with("attn_q.weight") {
                q = unpermute_quantized_rows(&q, stored.heads, device)?;
            } else if stored.family.gguf_permuted_qk && name.ends_with("attn_k.weight") {
                q = unpermute_quantized_rows(&q, stored.kv_heads, device)?;
            }
            if !matches!(q.dtype(), GgmlDType::Q8_0 | GgmlDType::Q4_1) && q.shape().dims2()?.1 % GgmlDType::Q8_0.block_size() == 0 {
                q = QTensor::quantize(&q.dequantize(device)?, GgmlDType::Q8_0)?;
            }
            quantized.insert(hf, q);
            Ok(())
        })?;
        let mut weights = Weights::from_tensors(dense, self.path.display().to_string())?;
        weights.set_quantized(quantized)?;
        Ok(weights)
    }
}

/// What a GGUF tensor's stored layout depends on.
struct Stored {
    family: &'static Family,
    heads: usize,
    kv_heads: usize,
}

impl Stored {
    /// A dequantized tensor in HF's layout: llama.cpp permutes Llama's q and k
    /// rows for its rope, and stores Gemma's norms as 1 + w.
    fn dense(&self, name: &str, t: Tensor) -> Result<Tensor> {
        Ok(if self.family.gguf_permuted_qk && name.ends_with("attn_q.weight") {
            unpermute_rope_rows(&t, self.heads)?
        } else if self.family.gguf_permuted_qk && name.ends_with("attn_k.weight") {
            unpermute_rope_rows(&t, self.kv_heads)?
        } else if self.family.gemma_layout && name.ends_with("norm.weight") {
            (t - 1.0)?
        } else {
            t
        })
    }
}

/// unpermute_rope_rows on quantized data: rows are quantized independently,
/// so moving whole rows of blocks is exact.
fn unpermute_quantized_rows(q: &QTensor, heads: usize, device: &Device) -> Result<QTensor> {
    let (rows, cols) = q.shape().dims2()?;
    let data = q.data()?;
    let row_bytes = data.len() / rows;
    let half = rows / heads / 2;
    let mut out = Vec::with_capacity(data.len());
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                let src = h * 2 * half + i * 2 + j;
                out.extend_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    Ok(QTensor::new(QStorage::from_data(out.into(), device, q.dtype())?, (rows, cols))?)
}

/// Gemma's query_pre_attn_scalar, which GGUF files do not store: from
/// `attention.scale` (1 / sqrt(scalar), rounded: transformers' config takes
/// an integer) where a file has it, else as llama.cpp sets it, by model size:
/// hidden / heads for the 27B models (`Family::gguf_wide_query_layers`), the
/// key length for the others.
fn gemma_query_scalar(family: &Family, layers: u32, hidden: u32, heads: u32, head_dim: u32, scale: Option<f64>) -> u32 {
    match scale {
        Some(s) if s > 0.0 => s.powi(-2).round() as u32,
        _ if family.gguf_wide_query_layers == Some(layers) => hidden / heads,
        _ => head_dim,
    }
}

/// The HF name of a GGUF tensor, or None for a name we do not know.
fn hf_name(name: &str, family: &Family) -> Option<String> {
    let top = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(t) = top {
        return Some(t.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (part, suffix) = rest.rsplit_once('.')?;
    let gemma = family.gemma_layout;
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_qkv" => "self_attn.qkv_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" if family.fused_projections => "mlp.gate_up_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "ffn_norm" if gemma => "pre_feedforward_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "post_attention_norm" => "post_attention_layernorm",
        "post_ffw_norm" => "post_feedforward_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// Undo llama.cpp's Q/K row permutation: within each head it stores the rows
/// pairwise interleaved (for rope on adjacent pairs); HF keeps the two halves
/// apart (rotate_half).
fn unpermute_rope_rows(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let half = rows / heads / 2;
    Ok(w.reshape((heads, half, 2, cols))?.transpose(1, 2)?.contiguous()?.reshape((rows, cols))?)
}

#[cfg(test)]
mod tests {
    use super::gemma_query_scalar;
    use crate::Family;

    #[test]
    fn gemma_query_scale_follows_llama_cpp_or_the_files_own() {
        let (gemma2, gemma3) = (Family::from_gguf("gemma2").unwrap(), Family::from_gguf("gemma3").unwrap());
        // Gemma-3-270M (18 layers, 640 / 4 heads, key length 256) and 1B: the key length.
        assert_eq!(gemma_query_scalar(gemma3, 18, 640, 4, 256, None), 256);
        assert_eq!(gemma_query_scalar(gemma3, 26, 1152, 4, 256, None), 256);
        // The 27B models: hidden / heads, not the key length.
        assert_eq!(gemma_query_scalar(gemma3, 62, 5376, 32, 128, None), 168);
        assert_eq!(gemma_query_scalar(gemma2, 46, 4608, 32, 128, None), 144);
        assert_eq!(gemma_query_scalar(gemma2, 42, 3584, 16, 256, None), 256);
        // A file that states its scale.
        assert_eq!(gemma_query_scalar(gemma3, 62, 5376, 32, 128, Some(1.0 / 12.0)), 144);
    }
}
