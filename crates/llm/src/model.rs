//! One config-driven decoder for every supported family, built only from
//! differentiable candle ops (generic softmax / log_softmax, RMSNorm written
//! out, rotate_half rope): candle's fused kernels have no backward pass and
//! would silently drop gradients.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::ops::{log_softmax, softmax};

use crate::{
    config::{Activation, Config},
    rope::{RopeTables, RotaryEmbedding},
    weights::{LinearWeight, Weights},
};

struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor>,
}

impl Linear {
    fn new(w: &Weights, prefix: &str, out_dim: usize, in_dim: usize, bias: bool) -> Result<Self> {
        Ok(Linear {
            weight: w.linear(&format!("{prefix}.weight"), &[out_dim, in_dim])?,
            bias: if bias { Some(w.get(&format!("{prefix}.bias"), &[out_dim])?) } else { None },
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // One 2-D matmul over all rows instead of a batched one.
        let (rows, in_dim) = (x.elem_count() / x.dim(D::Minus1)?, x.dim(D::Minus1)?);
        let x2 = x.reshape((rows, in_dim))?;
        let y = match &self.weight {
            LinearWeight::Dense(w) => x2.matmul(&w.t()?)?,
            LinearWeight::Q8(q) => q.forward(&x2)?,
            LinearWeight::Quantized(q) => q.forward(&x2)?,
        };
        let mut shape = x.dims().to_vec();
        *shape.last_mut().unwrap() = y.dim(1)?;
        let y = y.reshape(shape)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// RMSNorm over the last dimension: x / sqrt(mean(x^2) + eps) * (offset + w),
/// offset 1 for Gemma (its weights are stored as w - 1), 0 elsewhere.
struct RmsNorm {
    weight: Tensor,
    eps: f64,
    offset: f64,
}

impl RmsNorm {
    fn new(w: &Weights, name: &str, dim: usize, cfg: &Config) -> Result<Self> {
        Ok(RmsNorm {
            weight: w.get(&format!("{name}.weight"), &[dim])?,
            eps: cfg.rms_norm_eps,
            offset: if cfg.family.is_gemma() { 1.0 } else { 0.0 },
        })
    }

    /// `fused`: candle's kernel, which has no backward pass (inference only).
    fn forward(&self, x: &Tensor, fused: bool) -> candle_core::Result<Tensor> {
        if fused {
            let scale = if self.offset == 0.0 { self.weight.clone() } else { (&self.weight + self.offset)? };
            return candle_nn::ops::rms_norm(&x.contiguous()?, &scale, self.eps as f32);
        }
        let mean_sq = x.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = x.broadcast_div(&(mean_sq + self.eps)?.sqrt()?)?;
        normed.broadcast_mul(&(&self.weight + self.offset)?)
    }
}

enum QkvProj {
    Split { q: Linear, k: Linear, v: Linear },
    /// Phi-3: one projection, rows q then k then v.
    Fused(Linear),
}

struct Attention {
    qkv: QkvProj,
    o: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    scale: f64,
    softcap: Option<f64>,
}

impl Attention {
    fn new(w: &Weights, p: &str, cfg: &Config) -> Result<Self> {
        let (h, nq, nkv) = (cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim);
        let qkv = if cfg.family == crate::Family::Phi3 {
            QkvProj::Fused(Linear::new(w, &format!("{p}.qkv_proj"), nq + 2 * nkv, h, cfg.qkv_bias)?)
        } else {
            QkvProj::Split {
                q: Linear::new(w, &format!("{p}.q_proj"), nq, h, cfg.qkv_bias)?,
                k: Linear::new(w, &format!("{p}.k_proj"), nkv, h, cfg.qkv_bias)?,
                v: Linear::new(w, &format!("{p}.v_proj"), nkv, h, cfg.qkv_bias)?,
            }
        };
        let qk_norm = |n: &str| -> Result<Option<RmsNorm>> {
            cfg.family.has_qk_norm().then(|| RmsNorm::new(w, &format!("{p}.{n}"), cfg.head_dim, cfg)).transpose()
        };
        Ok(Attention {
            qkv,
            o: Linear::new(w, &format!("{p}.o_proj"), h, nq, cfg.o_bias)?,
            q_norm: qk_norm("q_norm")?,
            k_norm: qk_norm("k_norm")?,
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            scale: cfg.attention_scale,
            softcap: cfg.attn_logit_softcapping,
        })
    }

    /// x (B, T, hidden); mask (B, 1, T, S) additive, S = T without a cache,
    /// else the cached length after this step. With a cache (inference) the
    /// fused kernels run; without one, only differentiable ops.
    fn forward(&self, x: &Tensor, rope: (&RotaryEmbedding, &RopeTables), mask: &Tensor, kv: Option<LayerKv>) -> candle_core::Result<Tensor> {
        let fused = kv.is_some();
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let (q, k, v) = match &self.qkv {
            QkvProj::Split { q, k, v } => (q.forward(x)?, k.forward(x)?, v.forward(x)?),
            QkvProj::Fused(qkv) => {
                let y = qkv.forward(x)?;
                (y.narrow(2, 0, nh * hd)?, y.narrow(2, nh * hd, nkv * hd)?, y.narrow(2, (nh + nkv) * hd, nkv * hd)?)
            }
        };
        let heads = |x: Tensor, n: usize| x.reshape((b, t, n, hd))?.transpose(1, 2);
        let (mut q, mut k, v) = (heads(q, nh)?, heads(k, nkv)?, heads(v, nkv)?.contiguous()?);
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward(&q, fused)?;
            k = kn.forward(&k, fused)?;
        }
        let q = rope.0.apply(&q, rope.1)?;
        let k = rope.0.apply(&k, rope.1)?.contiguous()?;
        let (k, v) = match kv {
            None => (k, v),
            Some(kv) => kv.append(&k, &v)?,
        };
        let s = k.dim(2)?;

        // Grouped-query attention without copying k/v: query head h uses kv
        // head h / groups, so view q as (B, kv_heads, groups * T, hd).
        let groups = nh / nkv;
        let q = q.contiguous()?.reshape((b, nkv, groups * t, hd))?;
        let mut scores = (q.matmul(&k.t()?)? * self.scale)?;
        if let Some(cap) = self.softcap {
            scores = ((scores / cap)?.tanh()? * cap)?;
        }
        let scores = scores.reshape((b, nh, t, s))?.broadcast_add(mask)?;
        let probs = if fused { candle_nn::ops::softmax_last_dim(&scores)? } else { softmax(&scores, D::Minus1)? };
        let probs = probs.reshape((b, nkv, groups * t, s))?;
        let out = probs.matmul(&v)?.reshape((b, nh, t, hd))?.transpose(1, 2)?.reshape((b, t, nh * hd))?;
        self.o.forward(&out)
    }
}

enum GateUpProj {
    Split { gate: Linear, up: Linear },
    /// Phi-3: one projection, gate rows then up rows.
    Fused(Linear),
}

struct Mlp {
    gate_up: GateUpProj,
    down: Linear,
    activation: Activation,
}

impl Mlp {
    fn new(w: &Weights, p: &str, cfg: &Config) -> Result<Self> {
        let (h, i, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        let gate_up = if cfg.family == crate::Family::Phi3 {
            GateUpProj::Fused(Linear::new(w, &format!("{p}.gate_up_proj"), 2 * i, h, bias)?)
        } else {
            GateUpProj::Split {
                gate: Linear::new(w, &format!("{p}.gate_proj"), i, h, bias)?,
                up: Linear::new(w, &format!("{p}.up_proj"), i, h, bias)?,
            }
        };
        Ok(Mlp { gate_up, down: Linear::new(w, &format!("{p}.down_proj"), h, i, bias)?, activation: cfg.activation })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (gate, up) = match &self.gate_up {
            GateUpProj::Split { gate, up } => (gate.forward(x)?, up.forward(x)?),
            GateUpProj::Fused(gate_up) => {
                let y = gate_up.forward(x)?;
                let i = y.dim(D::Minus1)? / 2;
                (y.narrow(D::Minus1, 0, i)?, y.narrow(D::Minus1, i, i)?)
            }
        };
        let gate = match self.activation {
            Activation::Silu => gate.silu()?,
            Activation::GeluTanh => gate.gelu()?,
            Activation::Gelu => gate.gelu_erf()?,
        };
        self.down.forward(&(gate * up)?)
    }
}

/// One decoder layer. Llama-style: x + attn(norm(x)), then x + mlp(norm(x)).
/// Gemma adds a norm on each branch's output (`attn_out_norm`, `mlp_out_norm`).
struct Block {
    input_norm: RmsNorm,
    attn: Attention,
    attn_out_norm: Option<RmsNorm>,
    mlp_norm: RmsNorm,
    mlp: Mlp,
    mlp_out_norm: Option<RmsNorm>,
    sliding: bool,
}

impl Block {
    fn new(w: &Weights, i: usize, cfg: &Config) -> Result<Self> {
        let p = format!("model.layers.{i}");
        let norm = |n: &str| RmsNorm::new(w, &format!("{p}.{n}"), cfg.hidden_size, cfg);
        let gemma = cfg.family.is_gemma();
        Ok(Block {
            input_norm: norm("input_layernorm")?,
            attn: Attention::new(w, &format!("{p}.self_attn"), cfg)?,
            attn_out_norm: if gemma { Some(norm("post_attention_layernorm")?) } else { None },
            mlp_norm: norm(if gemma { "pre_feedforward_layernorm" } else { "post_attention_layernorm" })?,
            mlp: Mlp::new(w, &format!("{p}.mlp"), cfg)?,
            mlp_out_norm: if gemma { Some(norm("post_feedforward_layernorm")?) } else { None },
            sliding: cfg.sliding_layers[i],
        })
    }

    fn forward(&self, x: &Tensor, rope: (&RotaryEmbedding, &RopeTables), mask: &Tensor, kv: Option<LayerKv>) -> candle_core::Result<Tensor> {
        let fused = kv.is_some();
        let mut h = self.attn.forward(&self.input_norm.forward(x, fused)?, rope, mask, kv)?;
        if let Some(n) = &self.attn_out_norm {
            h = n.forward(&h, fused)?;
        }
        let x = (x + h)?;
        let mut h = self.mlp.forward(&self.mlp_norm.forward(&x, fused)?)?;
        if let Some(n) = &self.mlp_out_norm {
            h = n.forward(&h, fused)?;
        }
        x + h
    }
}

pub struct Model {
    pub config: Config,
    /// The HF config.json this model was built from (or that its GGUF
    /// metadata implies): what a saved checkpoint writes.
    pub hf_config: serde_json::Value,
    pub weights: Weights,
    embed: Tensor,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear,
    rope_global: RotaryEmbedding,
    rope_local: RotaryEmbedding,
    dtype: DType,
    device: Device,
}

impl Model {
    /// Load an HF model folder (config.json + safetensors) or a GGUF file,
    /// with every weight as `dtype`.
    pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let (hf_config, weights) = if crate::gguf::is_gguf(path) {
            let gguf = crate::gguf::Gguf::open(path)?;
            (gguf.hf_config()?, gguf.weights(dtype, device)?)
        } else if path.is_dir() {
            let file = path.join("config.json");
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let json = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", file.display()))?;
            (json, Weights::from_hf_dir(path, dtype, device)?)
        } else {
            bail!("{} is neither an HF model folder nor a GGUF file", path.display());
        };
        Self::new(hf_config, weights, dtype, device).with_context(|| format!("cannot build the model in {}", path.display()))
    }

    /// Load a GGUF file for inference, its projections kept quantized.
    pub fn load_quantized(path: &Path, device: &Device) -> Result<Self> {
        let gguf = crate::gguf::Gguf::open(path)?;
        let weights = gguf.quantized_weights(device)?;
        Self::new(gguf.hf_config()?, weights, DType::F32, device).with_context(|| format!("cannot build the model in {}", path.display()))
    }

    pub fn new(hf_config: serde_json::Value, weights: Weights, dtype: DType, device: &Device) -> Result<Self> {
        let config = Config::from_hf_json(&hf_config)?;
        let cfg = &config;
        let embed = weights.get("model.embed_tokens.weight", &[cfg.vocab_size, cfg.hidden_size])?;
        let head = if cfg.tie_word_embeddings { "model.embed_tokens" } else { "lm_head" };
        let lm_head = Linear::new(&weights, head, cfg.vocab_size, cfg.hidden_size, false)?;
        let layers = (0..cfg.num_layers).map(|i| Block::new(&weights, i, cfg)).collect::<Result<_>>()?;
        Ok(Model {
            norm: RmsNorm::new(&weights, "model.norm", cfg.hidden_size, cfg)?,
            rope_global: RotaryEmbedding::new(&cfg.rope_global, cfg.head_dim, device)?,
            rope_local: RotaryEmbedding::new(&cfg.rope_local, cfg.head_dim, device)?,
            embed,
            layers,
            lm_head,
            dtype,
            device: device.clone(),
            config,
            hf_config,
            weights,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Final-normed hidden states (B, T, hidden) of `input_ids` (B, T) u32.
    /// `attention_mask` (B, T) marks real tokens with 1 and padding with 0;
    /// positions count from 0 in every row (right padding).
    pub fn hidden_states(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let keep = attention_mask.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        self.run(input_ids, &vec![0; keep.len()], Some(&keep), None)
    }

    /// The decoder over `ids` (B, T), whose row r starts at position
    /// `offsets[r]`. With a cache, row r's keys and values are appended to
    /// `cache` row `first_row + r`, whose first `offsets[r]` positions are
    /// already filled; without one, `keep` marks the real tokens.
    fn run(&self, ids: &Tensor, offsets: &[usize], keep: Option<&[Vec<u32>]>, cache: Option<(&KvCache, usize)>) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let positions: Vec<u32> = offsets.iter().flat_map(|&o| (o..o + t).map(|p| p as u32)).collect();
        let positions = Tensor::from_vec(positions, (b, t), &self.device)?;
        let mut x = self.embed.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, self.config.hidden_size))?;
        if self.config.family.is_gemma() {
            // Gemma scales embeddings by sqrt(hidden_size), rounded to the compute dtype.
            let normalizer = Tensor::new((self.config.hidden_size as f32).sqrt(), &self.device)?.to_dtype(self.dtype)?;
            x = x.broadcast_mul(&normalizer)?;
        }
        let keys = match cache {
            Some(_) => offsets.iter().max().copied().unwrap_or(0) + t,
            None => t,
        };
        let full_mask = self.mask(offsets, t, keys, keep, None)?;
        let sliding_mask = match self.config.sliding_window {
            Some(w) if self.config.sliding_layers.iter().any(|&s| s) => Some(self.mask(offsets, t, keys, keep, Some(w))?),
            _ => None,
        };
        let fused = cache.is_some();
        let tables_g = self.rope_global.tables(&positions, self.dtype, fused)?;
        let tables_l = self.rope_local.tables(&positions, self.dtype, fused)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let kv = cache.map(|(c, first)| LayerKv {
                k: c.k[i].narrow(0, first, b).expect("cache rows checked by the caller"),
                v: c.v[i].narrow(0, first, b).expect("cache rows checked by the caller"),
                offsets,
            });
            x = match (&sliding_mask, layer.sliding) {
                (Some(m), true) => layer.forward(&x, (&self.rope_local, &tables_l), m, kv)?,
                _ => layer.forward(&x, (&self.rope_global, &tables_g), &full_mask, kv)?,
            };
        }
        Ok(self.norm.forward(&x, fused)?)
    }

    /// Additive attention mask (B, 1, T, S): query i of row r, at position
    /// p = offsets[r] + i, sees key position j when j <= p, the key is a real
    /// token (`keep`, if given) and, for sliding layers, p - j < window. Every
    /// query sees itself, so rows of padding stay finite.
    fn mask(&self, offsets: &[usize], t: usize, keys: usize, keep: Option<&[Vec<u32>]>, window: Option<usize>) -> Result<Tensor> {
        let b = offsets.len();
        let mut m = vec![0f32; b * t * keys];
        for (r, &offset) in offsets.iter().enumerate() {
            for i in 0..t {
                let p = offset + i;
                for j in 0..keys {
                    let real = keep.is_none_or(|k| k[r][j] != 0);
                    let visible = j == p || (j < p && real && window.is_none_or(|w| p - j < w));
                    if !visible {
                        m[(r * t + i) * keys + j] = f32::MIN;
                    }
                }
            }
        }
        Ok(Tensor::from_vec(m, (b, 1, t, keys), &self.device)?.to_dtype(self.dtype)?)
    }

    /// Append `tokens` to cache slot `slot` (a prompt's prefill, or more of a
    /// sequence) and return the next-token logits (vocab,) as f32.
    pub fn prefill(&self, cache: &mut KvCache, slot: usize, tokens: &[u32]) -> Result<Tensor> {
        if tokens.is_empty() {
            bail!("prefill needs at least one token");
        }
        cache.reserve(slot..slot + 1, tokens.len())?;
        let ids = Tensor::from_slice(tokens, (1, tokens.len()), &self.device)?;
        let logits = self.extend(cache, slot, &ids)?;
        Ok(logits.squeeze(0)?)
    }

    /// One decoding step for cache slots 0..tokens.len(), each with its own
    /// length: append token r to slot r and return next-token logits (n, vocab) f32.
    pub fn decode(&self, cache: &mut KvCache, tokens: &[u32]) -> Result<Tensor> {
        cache.reserve(0..tokens.len(), 1)?;
        let ids = Tensor::from_slice(tokens, (tokens.len(), 1), &self.device)?;
        self.extend(cache, 0, &ids)
    }

    fn extend(&self, cache: &mut KvCache, first: usize, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let offsets = cache.lens[first..first + b].to_vec();
        let hidden = self.run(ids, &offsets, None, Some((cache, first)))?;
        for len in &mut cache.lens[first..first + b] {
            *len += t;
        }
        Ok(self.logits_of(&hidden.narrow(1, t - 1, 1)?.squeeze(1)?)?.to_dtype(DType::F32)?)
    }

    /// Logits (..., vocab) of hidden states, soft-capped where the family does.
    pub fn logits_of(&self, hidden: &Tensor) -> Result<Tensor> {
        let mut logits = self.lm_head.forward(hidden)?;
        if let Some(cap) = self.config.final_logit_softcapping {
            logits = ((logits / cap)?.tanh()? * cap)?;
        }
        Ok(logits)
    }

    /// Logits (B, T, vocab) at every position.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        self.logits_of(&self.hidden_states(input_ids, attention_mask)?)
    }

    /// Summed log-probabilities (B,) of the tokens that `label_mask` (B, T)
    /// marks with 1: sum over t of log p(input_ids[b, t] | input_ids[b, ..t]).
    /// The LM head and log-softmax run only at the positions that predict a
    /// label. Position 0 cannot be a label.
    pub fn sequence_logprobs(&self, input_ids: &Tensor, attention_mask: &Tensor, label_mask: &Tensor) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let ids = input_ids.to_vec2::<u32>()?;
        let labelled = label_mask.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let (mut rows, mut labels, mut owner) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..b {
            for i in 1..t {
                if labelled[r][i] != 0 {
                    rows.push((r * t + i - 1) as u32);
                    labels.push(ids[r][i]);
                    owner.push(r);
                }
            }
        }
        let hidden = self.hidden_states(input_ids, attention_mask)?.reshape((b * t, self.config.hidden_size))?;
        let m = rows.len();
        let rows = Tensor::from_vec(rows, m, &self.device)?;
        let logits = self.logits_of(&hidden.index_select(&rows, 0)?)?;
        let labels = Tensor::from_vec(labels, (m, 1), &self.device)?;
        let token_logp = log_softmax(&logits, D::Minus1)?.gather(&labels, 1)?; // (M, 1)
        // Sum per sequence with a (B, M) 0/1 matrix: differentiable, one matmul.
        let mut sum = vec![0f32; b * m];
        for (k, &r) in owner.iter().enumerate() {
            sum[r * m + k] = 1.0;
        }
        let sum = Tensor::from_vec(sum, (b, m), &self.device)?.to_dtype(self.dtype)?;
        Ok(sum.matmul(&token_logp)?.squeeze(1)?)
    }
}

/// One layer's view of the cache rows that a step extends.
struct LayerKv<'a> {
    /// (B, kv_heads, capacity, head_dim) views of the cache.
    k: Tensor,
    v: Tensor,
    offsets: &'a [usize],
}

impl LayerKv<'_> {
    /// Write the step's keys and values (B, kv_heads, T, head_dim) at each
    /// row's offset, in place, and return every cached key and value up to
    /// the longest row (shorter rows' tails are masked).
    fn append(&self, k: &Tensor, v: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        for (r, &offset) in self.offsets.iter().enumerate() {
            self.k.narrow(0, r, 1)?.slice_set(&k.narrow(0, r, 1)?.contiguous()?, 2, offset)?;
            self.v.narrow(0, r, 1)?.slice_set(&v.narrow(0, r, 1)?.contiguous()?, 2, offset)?;
        }
        let keys = self.offsets.iter().max().copied().unwrap_or(0) + t;
        Ok((self.k.narrow(2, 0, keys)?, self.v.narrow(2, 0, keys)?))
    }
}

/// Preallocated keys and values for inference: `slots` sequences of up to
/// `capacity` positions each, every slot with its own length, so sequences
/// of different lengths decode in one batch.
pub struct KvCache {
    /// Per layer, (slots, kv_heads, capacity, head_dim).
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    lens: Vec<usize>,
    capacity: usize,
}

impl KvCache {
    pub fn new(model: &Model, slots: usize, capacity: usize) -> Result<Self> {
        let c = &model.config;
        let shape = (slots, c.num_kv_heads, capacity, c.head_dim);
        let zeros = || Tensor::zeros(shape, model.dtype, &model.device);
        Ok(KvCache {
            k: (0..c.num_layers).map(|_| zeros()).collect::<candle_core::Result<_>>()?,
            v: (0..c.num_layers).map(|_| zeros()).collect::<candle_core::Result<_>>()?,
            lens: vec![0; slots],
            capacity,
        })
    }

    pub fn slots(&self) -> usize {
        self.lens.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Positions filled in `slot`.
    pub fn len(&self, slot: usize) -> usize {
        self.lens[slot]
    }

    /// Forget `slot`'s sequence.
    pub fn clear(&mut self, slot: usize) {
        self.lens[slot] = 0;
    }

    /// Make `dst` a copy of `src`'s sequence: N samples share one prefill.
    pub fn copy_slot(&mut self, src: usize, dst: usize) -> Result<()> {
        let len = self.lens[src];
        if src != dst && len > 0 {
            for buf in self.k.iter().chain(&self.v) {
                let prefix = buf.narrow(0, src, 1)?.narrow(2, 0, len)?;
                // slice_set needs a contiguous source in other storage.
                let prefix = if prefix.is_contiguous() { prefix.copy()? } else { prefix.contiguous()? };
                buf.narrow(0, dst, 1)?.slice_set(&prefix, 2, 0)?;
            }
        }
        self.lens[dst] = len;
        Ok(())
    }

    /// Keep only the first `len` positions of `slot`: a copy of a slot that
    /// sampled further becomes the bare prompt again.
    pub fn truncate(&mut self, slot: usize, len: usize) {
        self.lens[slot] = self.lens[slot].min(len);
    }

    fn reserve(&self, slots: std::ops::Range<usize>, more: usize) -> Result<()> {
        if slots.end > self.slots() {
            bail!("the cache has {} slots, slot {} was asked for", self.slots(), slots.end - 1);
        }
        for s in slots {
            if self.lens[s] + more > self.capacity {
                bail!("slot {s} would hold {} positions, more than the cache capacity {}", self.lens[s] + more, self.capacity);
            }
        }
        Ok(())
    }
}
