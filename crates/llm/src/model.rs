//! One config-driven decoder for every supported family, with two forwards:
//! the training one over a packed row (differentiable: our kernels with an
//! analytic backward, `kernels`, `attention`, `logprob`), and the cached one
//! for sampling and scoring. Both call the same layers; whether gradients
//! flow is the tensors' own business (tracked variables or not).

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{quantized::GgmlDType, DType, Device, Module, Tensor, Var, D};

use crate::{
    attention::{self, Packing},
    config::{Activation, Config},
    kernels,
    kv::{Attend, KvCache},
    rope::{CosSin, RotaryEmbedding},
    weights::{Dense, LinearWeight, Trainable, Weights},
};

/// How a layer sees the positions of its input.
enum Positions<'a> {
    /// Training (and reference log-probs): one packed row, differentiable.
    Packed { rope: &'a CosSin, packing: &'a Packing, window: Option<usize> },
    /// Inference: keys and values go to the cache, which attends.
    Cached { cache: &'a mut KvCache, layer: usize, rows: &'a [(usize, usize)], window: Option<usize>, rope: &'a CosSin },
}

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

    /// x (tokens, in) -> (tokens, out).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = match &self.weight {
            LinearWeight::Dense(w) => kernels::linear(x, &w.tensor, w.grad())?,
            LinearWeight::Int8Dot(q) => q.forward(x)?,
            LinearWeight::CandleQuantized(q) => q.forward(x)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// RMSNorm over each run of the weight's length (the last dimension; for
/// the q and k norms, each head): x / sqrt(mean(x^2) + eps) * (offset + w),
/// offset 1 for Gemma (its weights are stored as w - 1), 0 elsewhere.
struct RmsNorm {
    weight: Dense,
    eps: f64,
    offset: f64,
}

impl RmsNorm {
    fn new(w: &Weights, name: &str, dim: usize, cfg: &Config) -> Result<Self> {
        Ok(RmsNorm {
            weight: w.dense(&format!("{name}.weight"), &[dim])?,
            eps: cfg.rms_norm_eps,
            offset: if cfg.family.gemma_layout { 1.0 } else { 0.0 },
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        kernels::rms_norm(x, &self.weight.tensor, self.weight.grad(), self.eps, self.offset)
    }
}

enum QkvProj {
    Split {
        q: Linear,
        k: Linear,
        v: Linear,
    },
    /// One projection, rows q then k then v: Phi-3's, or quantized ones fused at load.
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
        let qkv = if cfg.family.fused_projections || w.is_quantized(&format!("{p}.qkv_proj.weight")) {
            QkvProj::Fused(Linear::new(w, &format!("{p}.qkv_proj"), nq + 2 * nkv, h, cfg.qkv_bias)?)
        } else {
            QkvProj::Split {
                q: Linear::new(w, &format!("{p}.q_proj"), nq, h, cfg.qkv_bias)?,
                k: Linear::new(w, &format!("{p}.k_proj"), nkv, h, cfg.qkv_bias)?,
                v: Linear::new(w, &format!("{p}.v_proj"), nkv, h, cfg.qkv_bias)?,
            }
        };
        let qk_norm =
            |n: &str| -> Result<Option<RmsNorm>> { cfg.family.qk_norm.then(|| RmsNorm::new(w, &format!("{p}.{n}"), cfg.head_dim, cfg)).transpose() };
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

    /// x (tokens, hidden): the cache attends (inference), or the packed
    /// row's differentiable attention (training, reference log-probs).
    /// q, k and v stay (tokens, heads · head_dim), as the projections write
    /// them, through the norms, the rotation and the attention: no reshape
    /// or transpose, each of which autograd would pay for with a zeroed
    /// gradient and an add.
    fn forward(&self, x: &Tensor, ctx: Positions) -> candle_core::Result<Tensor> {
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let (mut q, mut k, v) = match &self.qkv {
            QkvProj::Split { q, k, v } => (q.forward(x)?, k.forward(x)?, v.forward(x)?),
            QkvProj::Fused(qkv) => {
                let y = qkv.forward(x)?;
                (y.narrow(1, 0, nh * hd)?, y.narrow(1, nh * hd, nkv * hd)?, y.narrow(1, (nh + nkv) * hd, nkv * hd)?)
            }
        };
        // Weights of head_dim: each head's values normalised on their own.
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        let out = match ctx {
            Positions::Cached { cache, layer, rows, window, rope } => {
                let attend = Attend {
                    layer,
                    rows,
                    heads: nh,
                    scale: self.scale as f32,
                    softcap: self.softcap.map(|c| c as f32),
                    window,
                    cos: &rope.cos[..],
                    sin: &rope.sin[..],
                    rot_dim: rope.rot_dim,
                };
                let values = |x: &Tensor| x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
                let out = cache.attend(&attend, &values(&q)?, &values(&k)?, &values(&v)?);
                Tensor::from_vec(out, (x.dim(0)?, nh * hd), x.device())?.to_dtype(x.dtype())?
            }
            Positions::Packed { rope, packing, window } => {
                let (q, k) = (kernels::rope(&q, rope, hd)?, kernels::rope(&k, rope, hd)?);
                let a = attention::Attention { packing, heads: nh, kv_heads: nkv, scale: self.scale, softcap: self.softcap, window };
                attention::attention(&q, &k, &v, &a)?
            }
        };
        self.o.forward(&out)
    }
}

enum GateUpProj {
    Split {
        gate: Linear,
        up: Linear,
    },
    /// One projection, gate rows then up rows: Phi-3's, or quantized ones fused at load.
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
        let gate_up = if cfg.family.fused_projections || w.is_quantized(&format!("{p}.gate_up_proj.weight")) {
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
        self.down.forward(&kernels::gated(&gate, &up, self.activation)?)
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
        let gemma = cfg.family.gemma_layout;
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

    fn forward(&self, x: &Tensor, ctx: Positions) -> candle_core::Result<Tensor> {
        let mut h = self.attn.forward(&self.input_norm.forward(x)?, ctx)?;
        if let Some(n) = &self.attn_out_norm {
            h = n.forward(&h)?;
        }
        let x = kernels::add(x, &h)?;
        let mut h = self.mlp.forward(&self.mlp_norm.forward(&x)?)?;
        if let Some(n) = &self.mlp_out_norm {
            h = n.forward(&h)?;
        }
        kernels::add(&x, &h)
    }
}

pub struct Model {
    pub config: Config,
    /// The HF config.json this model was built from (or that its GGUF
    /// metadata implies): what a saved checkpoint writes.
    pub hf_config: serde_json::Value,
    weights: Weights,
    embed: Dense,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Option<Linear>,
    rope_global: RotaryEmbedding,
    rope_local: RotaryEmbedding,
    dtype: DType,
    device: Device,
}

/// How [`Model::load`] holds a model's weights.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The dense weights' dtype, which the forward computes in.
    pub dtype: DType,
    /// Trainable variables that record gradients; else frozen (inference:
    /// samplers, reward models, the reference), which records no graph.
    pub trainable: bool,
    /// Keep the projections quantized, for inference: a GGUF file keeps its
    /// own blocks, an HF folder is quantized at load to `quantize_to` (or
    /// stays dense with None). Without it a GGUF file is dequantized.
    pub quantized: bool,
    pub quantize_to: Option<GgmlDType>,
}

impl LoadOptions {
    /// Training: trainable dense weights.
    pub fn trainable(dtype: DType) -> Self {
        LoadOptions { dtype, trainable: true, quantized: false, quantize_to: None }
    }

    /// Inference on dense weights: the reference model, reward models.
    pub fn frozen(dtype: DType) -> Self {
        LoadOptions { dtype, trainable: false, quantized: false, quantize_to: None }
    }

    /// Sampling: quantized projections in f32 compute, frozen.
    pub fn quantized(quantize_to: Option<GgmlDType>) -> Self {
        LoadOptions { dtype: DType::F32, trainable: false, quantized: true, quantize_to }
    }
}

impl Model {
    /// Load an HF model folder (config.json + safetensors) or a GGUF file.
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Self> {
        let device = Device::Cpu;
        let gguf = crate::gguf::is_gguf(path).then(|| crate::gguf::Gguf::open(path)).transpose()?;
        let (hf_config, mut weights) = match &gguf {
            Some(g) if options.quantized => (g.hf_config()?, g.quantized_weights(&device)?),
            Some(g) => (g.hf_config()?, g.weights(options.dtype, &device)?),
            None => (Self::hf_config(path)?, Weights::from_hf_dir(path, options.dtype, &device)?),
        };
        if let (None, true, Some(q)) = (&gguf, options.quantized, options.quantize_to) {
            weights.quantize_projections(q)?;
        }
        if !options.trainable {
            weights.freeze();
        }
        Self::new(hf_config, weights, options.dtype, &device).with_context(|| format!("cannot build the model in {}", path.display()))
    }

    /// The HF config of a model, without reading its weights: an HF folder's
    /// config.json, or what a GGUF file's metadata implies.
    pub fn hf_config(path: &Path) -> Result<serde_json::Value> {
        if crate::gguf::is_gguf(path) {
            return crate::gguf::Gguf::open(path)?.hf_config();
        }
        if !path.is_dir() {
            bail!("{} is neither an HF model folder nor a GGUF file", path.display());
        }
        let file = path.join("config.json");
        let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", file.display()))
    }

    /// A model from its parts: an HF config and the weights it names.
    pub fn new(hf_config: serde_json::Value, mut weights: Weights, dtype: DType, device: &Device) -> Result<Self> {
        let config = Config::from_hf_json(&hf_config)?;
        let cfg = &config;
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let parts = |names: &[&str]| names.iter().map(|n| format!("{p}.{n}")).collect::<Vec<_>>();
            weights.fuse_quantized(&parts(&["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]), &format!("{p}.self_attn.qkv_proj"))?;
            weights.fuse_quantized(&parts(&["mlp.gate_proj", "mlp.up_proj"]), &format!("{p}.mlp.gate_up_proj"))?;
        }
        let embed = weights.dense("model.embed_tokens.weight", &[cfg.vocab_size, cfg.hidden_size])?;
        // A tied checkpoint that also ships lm_head.weight: the embeddings are
        // the head, so the copy would be neither trained nor saved correctly.
        if cfg.tie_word_embeddings {
            weights.remove("lm_head.weight");
        }
        // Sequence-classification checkpoints (reward models) have no LM head.
        let lm_head = match cfg.tie_word_embeddings || weights.contains("lm_head.weight") {
            true => {
                let head = if cfg.tie_word_embeddings { "model.embed_tokens" } else { "lm_head" };
                Some(Linear::new(&weights, head, cfg.vocab_size, cfg.hidden_size, false)?)
            }
            false => None,
        };
        let layers = (0..cfg.num_layers).map(|i| Block::new(&weights, i, cfg)).collect::<Result<_>>()?;
        Ok(Model {
            norm: RmsNorm::new(&weights, "model.norm", cfg.hidden_size, cfg)?,
            rope_global: RotaryEmbedding::new(&cfg.rope_global, cfg.head_dim),
            rope_local: RotaryEmbedding::new(&cfg.rope_local, cfg.head_dim),
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

    /// Every variable by HF name, sorted: what a checkpoint saves.
    pub fn vars(&self) -> Vec<(&str, &Var)> {
        self.weights.vars()
    }

    /// Every variable with the slot its gradient buffer attaches to
    /// (`crate::grad`), sorted by name: what an optimizer trains.
    pub fn trainable(&self) -> Vec<Trainable> {
        self.weights.trainable()
    }

    /// Were projections kept quantized (inference only)?
    pub fn has_quantized(&self) -> bool {
        self.weights.has_quantized()
    }

    /// A tensor the decoder does not use itself (a reward model's head),
    /// which must have `shape`.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.weights.get(name, shape)
    }

    /// Token embeddings (N, hidden) of `ids`, scaled as the family does.
    fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let x = kernels::embedding(&self.embed.tensor, self.embed.grad(), ids)?;
        if !self.config.family.gemma_layout {
            return Ok(x);
        }
        // Gemma scales embeddings by sqrt(hidden_size), rounded to the compute dtype.
        let normalizer = Tensor::new((self.config.hidden_size as f32).sqrt(), &self.device)?.to_dtype(self.dtype)?;
        Ok(x.broadcast_mul(&normalizer)?)
    }

    /// The training forward: final-normed hidden states (N, hidden) of a
    /// packed row of `ids` laid out as `packing` says, differentiable.
    fn run_packed(&self, ids: &[u32], packing: &Packing) -> Result<Tensor> {
        if ids.len() != packing.len() || packing.is_empty() {
            bail!("{} token ids for a packing of {}", ids.len(), packing.len());
        }
        let mut x = self.embed(ids)?;
        let (global, local) = (self.rope_global.cos_sin(&packing.positions), self.rope_local.cos_sin(&packing.positions));
        for layer in &self.layers {
            let (rope, window) = if layer.sliding { (&local, self.config.sliding_window) } else { (&global, None) };
            x = layer.forward(&x, Positions::Packed { rope, packing, window })?;
        }
        Ok(self.norm.forward(&x)?)
    }

    /// The inference forward: the tokens of `rows` packed one after another,
    /// row (slot, n) bringing n tokens whose keys and values are appended to
    /// that cache slot, at the positions after those it holds. Final-normed
    /// hidden states (total tokens, hidden).
    fn run_cached(&self, ids: &[u32], cache: &mut KvCache, rows: &[(usize, usize)]) -> Result<Tensor> {
        let positions: Vec<usize> = rows.iter().flat_map(|&(slot, n)| cache.len(slot)..cache.len(slot) + n).collect();
        let mut x = self.embed(ids)?;
        let (global, local) = (self.rope_global.cos_sin(&positions), self.rope_local.cos_sin(&positions));
        for (i, layer) in self.layers.iter().enumerate() {
            let (rope, window) = if layer.sliding { (&local, self.config.sliding_window) } else { (&global, None) };
            x = layer.forward(&x, Positions::Cached { cache: &mut *cache, layer: i, rows, window, rope })?;
        }
        Ok(self.norm.forward(&x)?)
    }

    /// Append `tokens` to cache slot `slot` (a prompt's prefill, or more of a
    /// sequence) and return the next-token logits (vocab,) as f32.
    pub fn prefill(&self, cache: &mut KvCache, slot: usize, tokens: &[u32]) -> Result<Tensor> {
        let hidden = self.prefill_hidden(cache, &[(slot, tokens)])?;
        Ok(self.logits_of(&hidden.narrow(0, tokens.len() - 1, 1)?)?.squeeze(0)?.to_dtype(DType::F32)?)
    }

    /// One decoding step for cache slots 0..tokens.len(), each with its own
    /// length: append token r to slot r and return next-token logits (n, vocab) f32.
    pub fn decode(&self, cache: &mut KvCache, tokens: &[u32]) -> Result<Tensor> {
        let rows: Vec<(usize, &[u32])> = tokens.iter().enumerate().map(|(r, t)| (r, std::slice::from_ref(t))).collect();
        Ok(self.logits_of(&self.prefill_hidden(cache, &rows)?)?.to_dtype(DType::F32)?)
    }

    /// Append each row's tokens to its cache slot, all rows in one pass with
    /// no padding, and return the final-normed hidden states of every new
    /// token (total tokens, hidden), rows one after another: what reward
    /// models read. Sequences that share a prefix compute it once: prefill
    /// it, `copy_slot` it, then extend each copy.
    pub fn prefill_hidden(&self, cache: &mut KvCache, rows: &[(usize, &[u32])]) -> Result<Tensor> {
        if rows.is_empty() || rows.iter().any(|(_, t)| t.is_empty()) {
            bail!("prefill needs at least one token per row");
        }
        let shape: Vec<(usize, usize)> = rows.iter().map(|(slot, t)| (*slot, t.len())).collect();
        cache.reserve(&shape)?;
        let ids: Vec<u32> = rows.iter().flat_map(|(_, t)| t.iter().copied()).collect();
        let hidden = self.run_cached(&ids, cache, &shape)?;
        cache.advance(&shape);
        Ok(hidden)
    }

    /// Logits (..., vocab) of hidden states, soft-capped where the family does.
    pub fn logits_of(&self, hidden: &Tensor) -> Result<Tensor> {
        let mut logits = self.lm_head()?.forward(hidden)?;
        if let Some(cap) = self.config.final_logit_softcapping {
            logits = ((logits / cap)?.tanh()? * cap)?;
        }
        Ok(logits)
    }

    /// Logits (B, T, vocab) at every position of `input_ids` (B, T) u32.
    /// `attention_mask` (B, T) marks real tokens with 1 and padding with 0,
    /// on the right; positions count from 0 in every row, and padding gets
    /// zero logits.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let (ids, keep) = (input_ids.to_vec2::<u32>()?, attention_mask.to_dtype(DType::U32)?.to_vec2::<u32>()?);
        let mut lens = Vec::with_capacity(b);
        for (r, row) in keep.iter().enumerate() {
            let len = row.iter().take_while(|&&m| m != 0).count();
            if len == 0 || row[len..].iter().any(|&m| m != 0) {
                bail!("row {r} of the attention mask is not real tokens followed by right padding");
            }
            lens.push(len);
        }
        let packed: Vec<u32> = ids.iter().zip(&lens).flat_map(|(row, &len)| row[..len].iter().copied()).collect();
        let packing = Packing::new(&lens.iter().map(|&len| (len, vec![])).collect::<Vec<_>>());
        let logits = self.logits_of(&self.run_packed(&packed, &packing)?)?;
        let mut rows = Vec::with_capacity(b);
        let mut at = 0;
        for len in lens {
            rows.push(logits.narrow(0, at, len)?.pad_with_zeros(0, 0, t - len)?);
            at += len;
        }
        Ok(Tensor::stack(&rows, 0)?)
    }

    fn lm_head(&self) -> Result<&Linear> {
        self.lm_head
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("this checkpoint has no LM head (no lm_head.weight and untied embeddings), as a reward model's"))
    }

    /// Summed log-probabilities (N,) of each sequence's response given its
    /// prompt, for sequences given as (prompt, response) token ids: the sum
    /// over response tokens y_t of log p(y_t | prompt, y_<t). Sequences with
    /// the same prompt are packed after one copy of it, which the forward
    /// computes once. The LM head runs only at the positions that predict a
    /// response token, in chunks of rows ([`crate::logprob`]), so memory
    /// stays bounded whatever the vocabulary.
    pub fn response_logprobs(&self, seqs: &[(&[u32], &[u32])]) -> Result<Tensor> {
        for (i, (prompt, response)) in seqs.iter().enumerate() {
            if prompt.is_empty() || response.is_empty() {
                bail!("sequence {i}: a prompt of {} and a response of {} tokens; both need at least one", prompt.len(), response.len());
            }
        }
        // Groups of sequences sharing a prompt, in order of first appearance.
        let mut groups: Vec<(&[u32], Vec<usize>)> = Vec::new();
        for (i, (prompt, _)) in seqs.iter().enumerate() {
            match groups.iter_mut().find(|(p, _)| p == prompt) {
                Some((_, members)) => members.push(i),
                None => groups.push((prompt, vec![i])),
            }
        }
        let packing = Packing::new(&groups.iter().map(|(p, m)| (p.len(), m.iter().map(|&i| seqs[i].1.len()).collect())).collect::<Vec<_>>());
        let (mut ids, mut rows, mut targets, mut owner) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (prompt, members) in &groups {
            let last_of_prompt = ids.len() + prompt.len() - 1;
            ids.extend_from_slice(prompt);
            for &i in members {
                let response = seqs[i].1;
                // The prompt's last token predicts the first response token, each response token the next.
                rows.push(last_of_prompt as u32);
                rows.extend((ids.len()..ids.len() + response.len() - 1).map(|r| r as u32));
                targets.extend_from_slice(response);
                owner.extend(std::iter::repeat_n(i, response.len()));
                ids.extend_from_slice(response);
            }
        }
        let weight = match &self.lm_head()?.weight {
            LinearWeight::Dense(w) => w,
            _ => bail!("log-probabilities for training need dense weights; this model was loaded for quantized inference"),
        };
        let hidden = self.run_packed(&ids, &packing)?;
        let m = rows.len();
        let rows = Tensor::from_vec(rows, m, &self.device)?;
        let token_logp = crate::logprob::label_logprobs(
            &hidden.index_select(&rows, 0)?,
            &weight.tensor,
            weight.grad(),
            &targets,
            self.config.final_logit_softcapping,
        )?;
        // Sum per sequence with a (N, M) 0/1 matrix: differentiable, one matmul.
        let n = seqs.len();
        let mut sum = vec![0f32; n * m];
        for (k, &i) in owner.iter().enumerate() {
            sum[i * m + k] = 1.0;
        }
        let sum = Tensor::from_vec(sum, (n, m), &self.device)?.to_dtype(self.dtype)?;
        Ok(sum.matmul(&token_logp.unsqueeze(1)?)?.squeeze(1)?)
    }
}
