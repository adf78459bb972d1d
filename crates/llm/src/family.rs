//! The supported model families, in one table. Every place that tells
//! families apart reads a family's entry here: the config (`config.rs`), the
//! decoder's layers (`model.rs`), GGUF import (`gguf.rs`), the built-in chat
//! formats (`chat.rs`) and the scorer's reward-model heads. A family that
//! recombines these features is one entry here plus a fixture
//! (scripts/fixtures/make_llm_fixtures.py).
//!
//! GGUF pre-tokenizers are not here: a file names its own
//! (`tokenizer.ggml.pre`), whatever its architecture (SmolLM2 is `llama`
//! with `smollm`), so they are the tokenizer's table (`tokenizer.rs`).

use anyhow::{anyhow, Result};

/// One supported architecture and what sets it apart.
#[derive(Debug, PartialEq, Eq)]
pub struct Family {
    /// HF `model_type` (config.json).
    pub model_type: &'static str,
    /// HF's causal-LM class: a checkpoint's `architectures`.
    pub causal_lm: &'static str,
    /// HF's sequence-classification class, where a reward model of this
    /// family loads.
    pub reward_model: Option<&'static str>,
    /// llama.cpp's `general.architecture`, where GGUF files of this family load.
    pub gguf: Option<&'static str>,
    /// Gemma's layout: RMSNorm scales by (1 + w), norms after attention and
    /// MLP too, embeddings multiplied by sqrt(hidden_size), GELU (tanh),
    /// tied embeddings unless the config says otherwise, the query scaled by
    /// `query_pre_attn_scalar`; GGUF stores its norms as 1 + w.
    pub gemma_layout: bool,
    /// An RMSNorm over each head of q and k.
    pub qk_norm: bool,
    /// Biases on q, k and v (and none on o) whatever `attention_bias` says.
    pub qkv_bias: bool,
    /// q, k, v in one projection and gate, up in another, in HF's files and GGUF's.
    pub fused_projections: bool,
    /// Which layers attend through a sliding window when the config has a
    /// window but no `layer_types`.
    pub sliding: Sliding,
    /// Sliding layers have their own rope base (`rope_local_base_freq`).
    pub local_rope: bool,
    /// llama.cpp stores q's and k's rows permuted for its rope.
    pub gguf_permuted_qk: bool,
    /// The layer count at which llama.cpp scales Gemma's query by
    /// hidden / heads instead of the key length (the 27B model), for files
    /// that do not state `attention.scale`.
    pub gguf_wide_query_layers: Option<u32>,
    /// The chat format used when a checkpoint has no template.
    pub fallback_chat: FallbackChat,
}

/// Which layers slide (see [`Family::sliding`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sliding {
    Never,
    Every,
    /// Even layers (Gemma-2).
    Alternate,
    /// All but every `sliding_window_pattern`-th (default 6; Gemma-3).
    Pattern,
    /// With `use_sliding_window`, the layers from `max_window_layers` on (Qwen).
    FromMaxWindowLayers,
}

/// The built-in chat formats (`chat.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FallbackChat {
    ChatMl,
    Gemma,
}

const BASE: Family = Family {
    model_type: "",
    causal_lm: "",
    reward_model: None,
    gguf: None,
    gemma_layout: false,
    qk_norm: false,
    qkv_bias: false,
    fused_projections: false,
    sliding: Sliding::Never,
    local_rope: false,
    gguf_permuted_qk: false,
    gguf_wide_query_layers: None,
    fallback_chat: FallbackChat::ChatMl,
};

/// Every supported family.
pub const FAMILIES: &[Family] = &[
    // Llama 2/3/3.1, SmolLM2, TinyLlama, Yi.
    Family {
        model_type: "llama",
        causal_lm: "LlamaForCausalLM",
        reward_model: Some("LlamaForSequenceClassification"),
        gguf: Some("llama"),
        gguf_permuted_qk: true,
        ..BASE
    },
    Family {
        model_type: "mistral",
        causal_lm: "MistralForCausalLM",
        reward_model: Some("MistralForSequenceClassification"),
        sliding: Sliding::Every,
        ..BASE
    },
    // Qwen2 and Qwen2.5.
    Family {
        model_type: "qwen2",
        causal_lm: "Qwen2ForCausalLM",
        reward_model: Some("Qwen2ForSequenceClassification"),
        gguf: Some("qwen2"),
        qkv_bias: true,
        sliding: Sliding::FromMaxWindowLayers,
        ..BASE
    },
    Family {
        model_type: "qwen3",
        causal_lm: "Qwen3ForCausalLM",
        reward_model: Some("Qwen3ForSequenceClassification"),
        gguf: Some("qwen3"),
        qk_norm: true,
        sliding: Sliding::FromMaxWindowLayers,
        ..BASE
    },
    Family {
        model_type: "gemma2",
        causal_lm: "Gemma2ForCausalLM",
        reward_model: Some("Gemma2ForSequenceClassification"),
        gguf: Some("gemma2"),
        gemma_layout: true,
        sliding: Sliding::Alternate,
        gguf_wide_query_layers: Some(46),
        fallback_chat: FallbackChat::Gemma,
        ..BASE
    },
    Family {
        model_type: "gemma3_text",
        causal_lm: "Gemma3ForCausalLM",
        gguf: Some("gemma3"),
        gemma_layout: true,
        qk_norm: true,
        sliding: Sliding::Pattern,
        local_rope: true,
        gguf_wide_query_layers: Some(62),
        fallback_chat: FallbackChat::Gemma,
        ..BASE
    },
    Family { model_type: "phi3", causal_lm: "Phi3ForCausalLM", gguf: Some("phi3"), fused_projections: true, sliding: Sliding::Every, ..BASE },
];

impl Family {
    /// The family of an HF config's `model_type`.
    pub fn from_model_type(model_type: &str) -> Result<&'static Family> {
        FAMILIES
            .iter()
            .find(|f| f.model_type == model_type)
            .ok_or_else(|| anyhow!("unsupported architecture '{model_type}'; supported: {}", supported(|f| Some(f.model_type))))
    }

    /// The family of a GGUF file's `general.architecture`.
    pub fn from_gguf(architecture: &str) -> Result<&'static Family> {
        FAMILIES
            .iter()
            .find(|f| f.gguf == Some(architecture))
            .ok_or_else(|| anyhow!("unsupported GGUF architecture '{architecture}'; supported: {}", supported(|f| f.gguf)))
    }

    /// The family whose sequence-classification class is `class`.
    pub fn from_reward_model(class: &str) -> Option<&'static Family> {
        FAMILIES.iter().find(|f| f.reward_model == Some(class))
    }
}

/// The names `name` gives the families that have one, comma-separated.
pub fn supported(name: impl Fn(&Family) -> Option<&'static str>) -> String {
    FAMILIES.iter().filter_map(name).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_picks_one_family() {
        for f in FAMILIES {
            assert_eq!(Family::from_model_type(f.model_type).unwrap(), f);
            if let Some(arch) = f.gguf {
                assert_eq!(Family::from_gguf(arch).unwrap(), f);
            }
            if let Some(class) = f.reward_model {
                assert_eq!(Family::from_reward_model(class).unwrap(), f);
            }
        }
        let err = Family::from_model_type("gpt2").unwrap_err().to_string();
        assert!(err.contains("'gpt2'") && err.contains("llama, mistral, qwen2, qwen3, gemma2, gemma3_text, phi3"), "{err}");
        let err = Family::from_gguf("mistral").unwrap_err().to_string();
        assert!(err.contains("supported: llama, qwen2, qwen3, gemma2, gemma3, phi3"), "{err}");
    }
}
