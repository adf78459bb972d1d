//! Decoder-only LLMs for the WRPO pipeline, one config-driven implementation
//! for every supported family, so sampling, scoring and training run the same
//! forward pass (and match HF transformers).

pub mod chat;
pub mod config;
mod infer;
pub mod gguf;
pub mod kv;
pub mod logprob;
pub mod model;
pub mod pool;
pub mod qmatmul;
pub mod rope;
pub mod sampling;
pub mod save;
pub mod tiny;
pub mod tokenizer;
pub mod weights;

pub use chat::{ChatMessage, ChatTemplate};
pub use config::{Config, Family};
pub use kv::KvCache;
pub use model::Model;
pub use sampling::{Rng, SamplingParams};
pub use save::save_hf_checkpoint;
pub use tokenizer::Tokenizer;
