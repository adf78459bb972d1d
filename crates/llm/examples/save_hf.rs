//! Save a model (GGUF file or HF folder) as an HF checkpoint, with its
//! tokenizer and chat template (or the built-in fallback):
//!     cargo run --release -p wrpo-llm --example save_hf -- MODEL OUT_DIR

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::DType;
use wrpo_llm::{save_hf_checkpoint, LoadOptions, Model, Tokenizer};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model_path, out] = args.as_slice() else { anyhow::bail!("usage: save_hf MODEL OUT_DIR") };
    let model_path = PathBuf::from(model_path);
    let model = Model::load(&model_path, &LoadOptions::trainable(DType::F32))?;
    let tokenizer = Tokenizer::load(&model_path).context("cannot load the tokenizer")?;
    let template = tokenizer.chat_template_for(model.config.family)?;
    save_hf_checkpoint(&model, &tokenizer, Some(&template.source), &PathBuf::from(out))?;
    println!("saved {} as an HF checkpoint in {out}", model_path.display());
    Ok(())
}
