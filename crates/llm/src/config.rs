//! Model configuration from an HF `config.json`, in both the transformers 4
//! form (`rope_theta`, `rope_scaling`, `rope_local_base_freq`,
//! `sliding_window_pattern`) and the transformers 5 form (`rope_parameters`,
//! `layer_types`).

use anyhow::{anyhow, bail, Result};
use serde_json::Value;

use crate::family::{Family, Sliding};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    Silu,
    /// gelu_pytorch_tanh (Gemma).
    GeluTanh,
    /// Exact (erf) gelu.
    Gelu,
}

/// Frequency scaling of rotary embeddings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.1: low frequencies divided by `factor`, a smooth band between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position: f64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rope {
    pub theta: f64,
    pub scaling: RopeScaling,
    /// Fraction of each head's dimensions that rotate (Phi-3 variants).
    pub partial_factor: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub family: &'static Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on the q, k and v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub activation: Activation,
    /// Window of the sliding-attention layers: key j is visible from query i
    /// when i - window < j <= i.
    pub sliding_window: Option<usize>,
    /// Per layer: does it use sliding-window attention (and the local rope)?
    pub sliding_layers: Vec<bool>,
    /// Rope of full-attention layers.
    pub rope_global: Rope,
    /// Rope of sliding layers (differs from the global one in Gemma-3).
    pub rope_local: Rope,
    /// Multiplier of q k^T.
    pub attention_scale: f64,
    pub attn_logit_softcapping: Option<f64>,
    pub final_logit_softcapping: Option<f64>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl Config {
    pub fn from_hf_json(c: &Value) -> Result<Self> {
        let model_type = c["model_type"].as_str().ok_or_else(|| anyhow!("'model_type' is missing"))?;
        let family = Family::from_model_type(model_type)?;
        let usize_of =
            |key: &str| -> Result<usize> { c[key].as_u64().map(|v| v as usize).ok_or_else(|| anyhow!("'{key}' is missing or not a whole number")) };
        let opt_f64 = |key: &str| c[key].as_f64();

        let hidden_size = usize_of("hidden_size")?;
        let num_heads = usize_of("num_attention_heads")?;
        let num_layers = usize_of("num_hidden_layers")?;
        let num_kv_heads = c["num_key_value_heads"].as_u64().map_or(num_heads, |v| v as usize);
        let head_dim = c["head_dim"].as_u64().map_or(hidden_size / num_heads, |v| v as usize);
        if num_heads % num_kv_heads != 0 {
            bail!("num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}");
        }

        let act_name = c["hidden_activation"].as_str().or(c["hidden_act"].as_str()).unwrap_or("silu");
        let activation = match act_name {
            "silu" | "swish" => Activation::Silu,
            "gelu_pytorch_tanh" | "gelu_new" => Activation::GeluTanh,
            "gelu" => Activation::Gelu,
            other => bail!("unsupported activation '{other}'"),
        };

        let sliding_window = c["sliding_window"].as_u64().map(|v| v as usize);
        let sliding_layers = sliding_layers(c, family, num_layers, sliding_window)?;
        let (rope_global, rope_local) = ropes(c, family)?;

        let attention_bias = c["attention_bias"].as_bool().unwrap_or(false);
        let attention_scale = match (family.gemma_layout, opt_f64("query_pre_attn_scalar")) {
            (true, Some(s)) => s.powf(-0.5),
            _ => (head_dim as f64).powf(-0.5),
        };
        let eos_token_ids = match &c["eos_token_id"] {
            Value::Number(n) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
            Value::Array(a) => a.iter().filter_map(|v| v.as_u64().map(|v| v as u32)).collect(),
            _ => vec![],
        };

        Ok(Config {
            family,
            vocab_size: usize_of("vocab_size")?,
            hidden_size,
            intermediate_size: usize_of("intermediate_size")?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: opt_f64("rms_norm_eps").unwrap_or(1e-6),
            max_position_embeddings: c["max_position_embeddings"].as_u64().unwrap_or(4096) as usize,
            tie_word_embeddings: c["tie_word_embeddings"].as_bool().unwrap_or(family.gemma_layout),
            qkv_bias: attention_bias || family.qkv_bias,
            o_bias: attention_bias && !family.qkv_bias,
            mlp_bias: c["mlp_bias"].as_bool().unwrap_or(false),
            activation,
            sliding_window,
            sliding_layers,
            rope_global,
            rope_local,
            attention_scale,
            attn_logit_softcapping: opt_f64("attn_logit_softcapping"),
            final_logit_softcapping: opt_f64("final_logit_softcapping"),
            bos_token_id: c["bos_token_id"].as_u64().map(|v| v as u32),
            eos_token_ids,
        })
    }
}

fn sliding_layers(c: &Value, family: &Family, n: usize, window: Option<usize>) -> Result<Vec<bool>> {
    if let Some(types) = c["layer_types"].as_array() {
        if types.len() != n {
            bail!("'layer_types' has {} entries for {n} layers", types.len());
        }
        return types
            .iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(window.is_some()),
                Some("full_attention") => Ok(false),
                _ => Err(anyhow!("unknown layer type {t}")),
            })
            .collect();
    }
    let Some(_) = window else { return Ok(vec![false; n]) };
    Ok((0..n)
        .map(|i| match family.sliding {
            Sliding::Alternate => i % 2 == 0,
            Sliding::Pattern => {
                let pattern = c["sliding_window_pattern"].as_u64().unwrap_or(6) as usize;
                (i + 1) % pattern != 0
            }
            Sliding::FromMaxWindowLayers => {
                c["use_sliding_window"].as_bool().unwrap_or(false) && i >= c["max_window_layers"].as_u64().unwrap_or(0) as usize
            }
            Sliding::Every => true,
            Sliding::Never => false,
        })
        .collect())
}

/// The rope of full-attention layers and of sliding layers.
fn ropes(c: &Value, family: &Family) -> Result<(Rope, Rope)> {
    let partial = c["partial_rotary_factor"].as_f64();
    if let Some(params) = c.get("rope_parameters").filter(|v| v.is_object()) {
        // transformers 5: one parameter set, or one per layer type.
        if params.get("full_attention").is_some() {
            let global = parse_rope(&params["full_attention"], partial)?;
            let local = params.get("sliding_attention").map_or(Ok(global), |p| parse_rope(p, partial))?;
            return Ok((global, local));
        }
        let rope = parse_rope(params, partial)?;
        return Ok((rope, rope));
    }
    // transformers 4: rope_theta and rope_scaling beside each other.
    let mut params = c.get("rope_scaling").filter(|v| v.is_object()).cloned().unwrap_or_else(|| serde_json::json!({}));
    params["rope_theta"] = c["rope_theta"].clone();
    let global = parse_rope(&params, partial)?;
    let local = if family.local_rope {
        Rope { theta: c["rope_local_base_freq"].as_f64().unwrap_or(10_000.0), scaling: RopeScaling::None, ..global }
    } else {
        global
    };
    Ok((global, local))
}

fn parse_rope(p: &Value, partial: Option<f64>) -> Result<Rope> {
    let f = |key: &str| p[key].as_f64().ok_or_else(|| anyhow!("rope parameter '{key}' is missing"));
    let kind = p["rope_type"].as_str().or(p["type"].as_str()).unwrap_or("default");
    let scaling = match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: f("factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: f("factor")?,
            low_freq_factor: f("low_freq_factor")?,
            high_freq_factor: f("high_freq_factor")?,
            original_max_position: f("original_max_position_embeddings")?,
        },
        other => bail!("unsupported rope type '{other}' (supported: default, linear, llama3)"),
    };
    Ok(Rope {
        theta: p["rope_theta"].as_f64().unwrap_or(10_000.0),
        scaling,
        partial_factor: p["partial_rotary_factor"].as_f64().or(partial).unwrap_or(1.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn transformers_4_and_5_forms_give_the_same_config() {
        let v4 = json!({
            "model_type": "gemma3_text", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 7, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
            "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "rope_scaling": {"rope_type": "linear", "factor": 8.0},
            "sliding_window": 512, "sliding_window_pattern": 6, "query_pre_attn_scalar": 4,
            "hidden_activation": "gelu_pytorch_tanh"
        });
        let mut v5 = v4.clone();
        let o = v5.as_object_mut().unwrap();
        for k in ["rope_theta", "rope_local_base_freq", "rope_scaling", "sliding_window_pattern"] {
            o.remove(k);
        }
        o.insert(
            "rope_parameters".into(),
            json!({
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}
            }),
        );
        let s = "sliding_attention";
        let f = "full_attention";
        o.insert("layer_types".into(), json!([s, s, s, s, s, f, s]));
        let a = Config::from_hf_json(&v4).unwrap();
        assert_eq!(a, Config::from_hf_json(&v5).unwrap());
        assert_eq!(a.sliding_layers, [true, true, true, true, true, false, true]);
        assert_eq!(a.rope_global.scaling, RopeScaling::Linear { factor: 8.0 });
        assert_eq!(a.rope_local.theta, 10000.0);
        assert!(a.tie_word_embeddings);
        assert_eq!(a.attention_scale, 0.5);
    }

    #[test]
    fn an_unknown_architecture_is_named_with_the_supported_list() {
        let err = Config::from_hf_json(&json!({"model_type": "gpt2"})).unwrap_err().to_string();
        assert!(err.contains("'gpt2'") && err.contains("supported: llama, mistral"), "{err}");
    }
}
