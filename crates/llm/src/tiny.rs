//! Tiny random checkpoints for tests and examples: a 2-layer Llama with the
//! repo's tiny ChatML BPE tokenizer (data/fixtures/tokenizer/tiny-bpe),
//! saved as an HF folder.

use std::{collections::HashMap, path::Path, path::PathBuf};

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use serde_json::json;

use crate::{save_hf_checkpoint, weights::Weights, Model, Rng, Tokenizer};

/// Save a random 2-layer Llama with `context` positions, seeded by `seed`,
/// as `dir/tiny-llama`, with the tokenizer of the folder `tokenizer`.
pub fn tiny_llama(dir: &Path, tokenizer: &Path, context: usize, seed: u64) -> Result<PathBuf> {
    let tok = Tokenizer::load(tokenizer)?;
    let (v, h, i, layers, heads, kv, hd) = (tok.vocab_size(), 32, 64, 2, 4, 2, 8);
    let config = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": v, "hidden_size": h,
        "intermediate_size": i, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv, "head_dim": hd, "max_position_embeddings": context, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": false,
        "bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id,
    });
    let mut rng = Rng::new(seed);
    let mut randn = |shape: &[usize], scale: f32| -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| (rng.next_f64() as f32 * 2.0 - 1.0) * scale).collect();
        Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
    };
    let mut t = HashMap::new();
    t.insert("model.embed_tokens.weight".to_string(), randn(&[v, h], 1.0)?);
    t.insert("model.norm.weight".to_string(), randn(&[h], 0.1)?.affine(1.0, 1.0)?);
    t.insert("lm_head.weight".to_string(), randn(&[v, h], 0.5)?);
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("self_attn.q_proj", [heads * hd, h]),
            ("self_attn.k_proj", [kv * hd, h]),
            ("self_attn.v_proj", [kv * hd, h]),
            ("self_attn.o_proj", [h, heads * hd]),
            ("mlp.gate_proj", [i, h]),
            ("mlp.up_proj", [i, h]),
            ("mlp.down_proj", [h, i]),
        ] {
            t.insert(format!("{p}.{name}.weight"), randn(&shape, 0.3)?);
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            t.insert(format!("{p}.{norm}.weight"), randn(&[h], 0.1)?.affine(1.0, 1.0)?);
        }
    }
    let model = Model::new(config, Weights::from_tensors(t, "tiny".into())?, DType::F32, &Device::Cpu)?;
    let out = dir.join("tiny-llama");
    save_hf_checkpoint(&model, &tok, tok.chat_template.as_deref(), &out)?;
    Ok(out)
}
