//! Save a model (GGUF file or HF folder) as an HF checkpoint, with its
//! tokenizer and chat template (or the built-in fallback):
//!     cargo run --release -p wrpo-llm --example save_hf -- MODEL OUT_DIR

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use wrpo_llm::{save_hf_checkpoint, ChatTemplate, Model, Tokenizer};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model_path, out] = args.as_slice() else { anyhow::bail!("usage: save_hf MODEL OUT_DIR") };
    let model_path = PathBuf::from(model_path);
    let model = Model::load(&model_path, DType::F32, &Device::Cpu)?;
    let tokenizer = Tokenizer::load(&model_path).context("cannot load the tokenizer")?;
    let token = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i)).unwrap_or_default();
    let template = ChatTemplate::for_model(tokenizer.chat_template.as_deref(), model.config.family, &token(tokenizer.bos_id), &token(tokenizer.eos_id))?;
    save_hf_checkpoint(&model, &tokenizer, Some(&template.source), &PathBuf::from(out))?;
    println!("saved {} as an HF checkpoint in {out}", model_path.display());
    Ok(())
}
