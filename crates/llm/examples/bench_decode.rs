//! Decode throughput of a GGUF model (quantized inference path, or --dense
//! f32), batch 1 and batch 8 sharing one prefill; for scripts/bench/decode.sh.
//!     bench_decode MODEL [--tokens N] [--batches 1,8] [--dense]
//! Prints one JSON line per batch size.

use std::{path::PathBuf, time::Instant};

use anyhow::{Context, Result};
use candle_core::DType;
use wrpo_llm::{sampling::argmax, ChatMessage, KvCache, LoadOptions, Model, Tokenizer};

fn main() -> Result<()> {
    // As the sampler's main does, so the benchmark measures what users run.
    wrpo_llm::setup_process();
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(args.next().context("usage: bench_decode MODEL [--tokens N] [--batches 1,8] [--dense]")?);
    let (mut tokens, mut batches, mut dense) = (128usize, vec![1usize, 8], false);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--tokens" => tokens = args.next().context("--tokens N")?.parse()?,
            "--batches" => batches = args.next().context("--batches 1,8")?.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--dense" => dense = true,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let model = if dense { Model::load(&path, &LoadOptions::frozen(DType::F32))? } else { Model::load(&path, &LoadOptions::quantized(None))? };
    let tok = Tokenizer::load(&path)?;
    let template = tok.chat_template_for(model.config.family)?;
    let prompt = template.render(&[ChatMessage { role: "user", content: "Write a short story about a robot who learns to paint." }], true)?;
    let ids = tok.encode_chat(&prompt)?;
    for &b in &batches {
        let mut cache = KvCache::new(&model, b, ids.len() + tokens + 1)?;
        let first = argmax(&model.prefill(&mut cache, 0, &ids)?.to_vec1::<f32>()?);
        for slot in 1..b {
            cache.copy_slot(0, slot)?;
        }
        let mut next = vec![first; b];
        let start = Instant::now();
        for _ in 0..tokens {
            let logits = model.decode(&mut cache, &next)?.to_vec2::<f32>()?;
            next = logits.iter().map(|l| argmax(l)).collect();
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{{\"engine\": \"wrpo\", \"mode\": \"{}\", \"batch\": {b}, \"prompt_tokens\": {}, \"new_tokens\": {tokens}, \"seconds\": {secs:.3}, \"tokens_per_s\": {:.1}}}",
            if dense { "dense-f32" } else { "quantized" },
            ids.len(),
            (b * tokens) as f64 / secs
        );
    }
    Ok(())
}
