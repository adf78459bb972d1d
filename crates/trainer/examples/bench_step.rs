//! One WRPO optimizer step, timed, for `make bench-train`: a pair of 3
//! sequences sharing a prompt (token ids from a JSON file, so the PyTorch
//! peer runs the very same ones), reference log-probs given, AdamW with
//! gradient clipping, the trainer's own code path. Prints JSON: seconds per
//! step (the median of the steps after the first), peak RSS, and this
//! machine's f32 matmul speed measured with the same library.
//! The matmuls run in PRECISION (f32, bf16 or auto; default f32).
//!     bench_step MODEL_DIR IDS.json STEPS [PRECISION]

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use wrpo_llm::bf16::Precision;
use wrpo_trainer::{
    data::{Batch, PairExample, Sequence, Truncation},
    loss::{Chosen, LossKind, Objective, PerY},
    optim::{AdamW, AdamWConfig},
    schedule::LrSchedule,
    train::{load_model, round_matrices_to_bf16, Stage, TrainConfig, Trainer},
};

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok()).unwrap_or(0.0)
        / 1024.0
}

/// GFLOP/s of an LLM-shaped linear layer's forward (768 x 640 by a weight
/// of 2048 x 640) on the trainer's kernels, in the process's precision.
fn matmul_gflops() -> Result<f64> {
    let a = Tensor::randn(0f32, 1.0, (768, 640), &Device::Cpu)?;
    let w = Tensor::randn(0f32, 1.0, (2048, 640), &Device::Cpu)?;
    wrpo_llm::linear(&a, &w, None)?;
    let reps = 20;
    let t = Instant::now();
    for _ in 0..reps {
        wrpo_llm::linear(&a, &w, None)?;
    }
    Ok(2.0 * 768.0 * 640.0 * 2048.0 * reps as f64 / t.elapsed().as_secs_f64() / 1e9)
}

/// The useful FLOPs of one step (forward and backward) of a pair packed as
/// the prompt once and then its responses, as our trainer runs it: every
/// layer's matmuls over all tokens (forward 2 per weight and token, backward
/// 4), causal attention over the keys each query sees, and the LM head at the
/// response positions only (its logits kept for the backward, so 3 matmuls).
fn step_flops(c: &wrpo_llm::Config, prompt: usize, responses: &[usize]) -> f64 {
    let tokens = (prompt + responses.iter().sum::<usize>()) as f64;
    let (h, q, kv) = (c.hidden_size as f64, (c.num_heads * c.head_dim) as f64, (c.num_kv_heads * c.head_dim) as f64);
    let per_layer = h * q + 2.0 * h * kv + q * h + 3.0 * h * c.intermediate_size as f64;
    // Query-key pairs: the prompt causally, each response over the prompt and causally over itself.
    let pairs = (prompt * (prompt + 1) / 2) as f64 + responses.iter().map(|&r| (r * prompt + r * (r + 1) / 2) as f64).sum::<f64>();
    let layers = c.num_layers as f64;
    let linear = 6.0 * tokens * per_layer * layers;
    // QKᵀ and PV forward (2 FLOPs per pair and head dimension each), twice that backward.
    let attention = 12.0 * q * pairs * layers;
    let head = 6.0 * responses.iter().sum::<usize>() as f64 * h * c.vocab_size as f64;
    linear + attention + head
}

fn main() -> Result<()> {
    wrpo_llm::setup_process();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (model_path, ids_path, steps, precision) = match args.as_slice() {
        [m, i, s] => (m, i, s, Precision::F32),
        [m, i, s, p] => (m, i, s, Precision::parse(p).map_err(anyhow::Error::msg)?),
        _ => anyhow::bail!("usage: bench_step MODEL_DIR IDS.json STEPS [PRECISION]"),
    };
    precision.apply().map_err(anyhow::Error::msg)?;
    let ids: Value = serde_json::from_str(&std::fs::read_to_string(ids_path).context("ids file")?)?;
    let get = |k: &str| -> Vec<u32> { serde_json::from_value(ids[k].clone()).expect("ids") };
    let prompt = get("prompt");
    let seq = |k: &str| Sequence { ids: [prompt.clone(), get(k)].concat(), prompt_len: prompt.len(), truncated: false };
    let reference = [ids["ref"][0].as_f64().unwrap_or(-500.0), ids["ref"][1].as_f64().unwrap_or(-500.0), ids["ref"][2].as_f64().unwrap_or(-500.0)];
    let example = PairExample {
        prompt_id: "bench".into(),
        seqs: PerY { y_ws: Some(seq("y_ws")), y_wt: Some(seq("y_wt")), y_l: seq("y_l") },
        reference: Some(reference),
    };

    let (model, _) = load_model(std::path::Path::new(model_path))?;
    let objective = Objective { loss: LossKind::Wrpo, chosen: Chosen::Target, beta: 0.1, label_smoothing: 0.0, gamma: 0.0 };
    let stage = Stage::Preference { objective, alpha_max: 0.1, static_alpha: true };
    let config = TrainConfig {
        lr: 1e-6,
        warmup_ratio: 0.0,
        schedule: LrSchedule::Constant,
        epochs: 1.0,
        micro_batch: 1,
        grad_accum: 1,
        max_grad_norm: Some(1.0),
        adamw: AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, decay_norms_and_biases: false },
        truncation: Truncation { max_length: 4096, max_prompt_length: 2048 },
        seed: 0,
        freeze_embeddings: false,
        precision,
    };
    let trainer = Trainer { model: &model, stage: &stage, config: &config };
    let params = model.trainable();
    if precision == Precision::Bf16 && std::env::var_os("BENCH_KEEP_TIES").is_none() {
        round_matrices_to_bf16(&model)?;
    }
    let mut optimizer = AdamW::new(params, config.adamw.clone())?;
    let mut times = vec![];
    let mut losses = vec![];
    for _ in 0..steps.parse::<usize>()? {
        let t = Instant::now();
        let loss = trainer.batch_loss(&Batch::Pairs(vec![&example]), 0.1)?;
        losses.push(loss.to_dtype(DType::F64)?.to_scalar::<f64>()?);
        optimizer.accumulate(&loss.backward()?)?;
        optimizer.step(config.lr, config.max_grad_norm)?;
        times.push(t.elapsed().as_secs_f64());
    }
    let mut later = times[1.min(times.len() - 1)..].to_vec();
    later.sort_by(f64::total_cmp);
    let params: usize = model.vars().iter().map(|(_, v)| v.elem_count()).sum();
    let responses = [get("y_ws").len(), get("y_wt").len(), get("y_l").len()];
    let step_seconds = later[later.len() / 2];
    let step_gflop = step_flops(&model.config, prompt.len(), &responses) / 1e9;
    println!(
        "{}",
        serde_json::json!({"engine": format!("wrpo-train {}", precision.describe()), "step_seconds": step_seconds, "first_step_seconds": times[0],
                           "peak_rss_mb": peak_rss_mb(), "matmul_gflops": matmul_gflops()?, "params": params,
                           "step_gflop": step_gflop, "achieved_gflops": step_gflop / step_seconds, "losses": losses})
    );
    Ok(())
}
