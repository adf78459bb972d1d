//! What the trainer's test files share: where the repository's fixtures
//! are, a PyTorch fixture's expected values, and a training configuration.
//! Each test file is its own crate and uses a part of this.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use candle_core::{Device, Tensor};
use serde_json::Value;
use wrpo_trainer::{data::Truncation, optim::AdamWConfig, schedule::LrSchedule, train::TrainConfig};

/// `data/fixtures/<path>` of the repository.
pub fn fixtures(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/fixtures").join(path)
}

/// A PyTorch fixture folder's cases (`cases.json`) and the values PyTorch
/// computed for them (`expected.safetensors`), by name.
pub fn pytorch_expected(dir: &Path) -> (Value, HashMap<String, Tensor>) {
    let cases = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let expected = candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    (cases, expected)
}

/// One epoch in micro-batches of 1 at a constant learning rate of 0, no
/// warm-up, clipping or weight decay, AdamW's usual betas and eps, f32
/// matmuls: the settings a test changes are set on this.
pub fn train_config(truncation: Truncation) -> TrainConfig {
    TrainConfig {
        lr: 0.0,
        warmup_ratio: 0.0,
        schedule: LrSchedule::Constant,
        epochs: 1.0,
        micro_batch: 1,
        grad_accum: 1,
        max_grad_norm: None,
        adamw: AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, decay_norms_and_biases: false },
        truncation,
        seed: 0,
        freeze_embeddings: false,
        precision: wrpo_llm::bf16::Precision::F32,
    }
}
