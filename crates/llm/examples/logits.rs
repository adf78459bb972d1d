//! Our view of a model, for outside checks (scripts/check_hf_checkpoint.py):
//! for each chat prompt given as a JSON list of messages on stdin (one per
//! line), the prompt's ids through the model's chat template and the logits
//! at every position, as JSON lines on stdout.
//!     cargo run --release -p wrpo-llm --example logits -- MODEL < prompts.jsonl

use std::io::BufRead;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use wrpo_llm::{ChatMessage, LoadOptions, Model, Tokenizer};

fn main() -> Result<()> {
    let path = std::path::PathBuf::from(std::env::args().nth(1).ok_or_else(|| anyhow::anyhow!("usage: logits MODEL < prompts.jsonl"))?);
    let model = Model::load(&path, &LoadOptions::frozen(DType::F32))?;
    let tokenizer = Tokenizer::load(&path)?;
    let template = tokenizer.chat_template_for(model.config.family)?;
    for line in std::io::stdin().lock().lines() {
        let messages: Vec<serde_json::Value> = serde_json::from_str(&line?)?;
        let turns: Vec<ChatMessage> = messages
            .iter()
            .map(|m| ChatMessage { role: m["role"].as_str().unwrap_or("user"), content: m["content"].as_str().unwrap_or("") })
            .collect();
        let ids = tokenizer.encode_chat(&template.render(&turns, true)?)?;
        let input = Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        let logits = model.forward(&input, &input.ones_like()?)?.squeeze(0)?.to_vec2::<f32>()?;
        println!("{}", serde_json::json!({"ids": ids, "logits": logits}));
    }
    Ok(())
}
