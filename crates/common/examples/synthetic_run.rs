//! Fill a run folder with the datasets that models make (samples, scores,
//! training metrics), with synthetic content, for the prompts already in
//! `RUN/prompts.parquet` or `RUN/preference-prompts.parquet`. Used by
//! scripts/check-duckdb.sh to check every dataset kind in DuckDB without models.
//!
//!   cargo run -p wrpo-common --example synthetic_run -- sources RUN
//!   cargo run -p wrpo-common --example synthetic_run -- target RUN
//!   cargo run -p wrpo-common --example synthetic_run -- refs RUN     (pairs-ref.parquet from pairs.parquet)
//!   cargo run -p wrpo-common --example synthetic_run -- metrics RUN

use std::path::Path;

use anyhow::{bail, Result};
use wrpo_common::{
    hash::uniform_draw,
    metrics::StepMetrics,
    pairs::Pair,
    prompts::{Prompt, Split},
    read_dataset,
    samples::{FinishReason, Sample},
    scored::ScoredSample,
    write_dataset, Provenance, ShardWriter,
};

const N: u32 = 3;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, what, run] = args.as_slice() else { bail!("usage: synthetic_run sources|target|refs|metrics RUN") };
    let run = Path::new(run);
    let prov = Provenance::new("synthetic_run example", &serde_json::json!({"what": what}))?;
    match what.as_str() {
        "sources" => {
            let prompts: Vec<Prompt> =
                read_dataset::<Prompt>(&run.join("prompts.parquet"))?.into_iter().filter(|p| p.split == Split::Train).collect();
            for model in ["gemma3", "smollm2"] {
                write_samples(run, "source", model, &prompts, &prov)?;
            }
        }
        "target" => write_samples(run, "target", "target-sft", &read_dataset(&run.join("preference-prompts.parquet"))?, &prov)?,
        "refs" => {
            let mut pairs: Vec<Pair> = read_dataset(&run.join("pairs.parquet"))?;
            for p in &mut pairs {
                let logp = |y: &str| Some(-40.0 * (1.0 + uniform_draw(42, y, &p.prompt_id)));
                (p.ref_logp_y_ws, p.ref_logp_y_wt, p.ref_logp_y_l) = (logp("y_ws"), logp("y_wt"), logp("y_l"));
            }
            write_dataset(&run.join("pairs-ref.parquet"), &pairs, &prov)?;
        }
        "metrics" => {
            let rows: Vec<StepMetrics> = (0..10)
                .map(|step| StepMetrics {
                    stage: "wrpo".into(),
                    step,
                    epoch: step as f64 / 10.0,
                    loss: 0.693 - 0.01 * step as f64,
                    lr: 3e-7,
                    alpha: Some(0.1 * step as f64 / 9.0),
                    grad_norm: Some(1.0),
                    tokens_per_second: 900.0,
                    rewards_margins: Some(0.002 * step as f64),
                    rewards_accuracies: Some(0.5 + 0.03 * step as f64),
                    ..Default::default()
                })
                .collect();
            write_dataset(&run.join("wrpo").join("metrics.parquet"), &rows, &prov)?;
        }
        _ => bail!("unknown kind {what}"),
    }
    Ok(())
}

/// N samples per prompt into RUN/{side}-samples/{model}/ and their scores into
/// RUN/{side}-scores/{model}/.
fn write_samples(run: &Path, side: &str, model: &str, prompts: &[Prompt], prov: &Provenance) -> Result<()> {
    let mut samples = ShardWriter::<Sample>::new(&run.join(format!("{side}-samples")).join(model), prov.clone(), 64)?;
    let mut scores = ShardWriter::<ScoredSample>::new(&run.join(format!("{side}-scores")).join(model), prov.clone(), 64)?;
    for p in prompts {
        for i in 0..N {
            let key = format!("{model}/{}/{i}", p.prompt_id);
            let response = format!("Answer {i} of {model} to: {}", p.messages.last().unwrap().content);
            let finish_reason = if i == N - 1 { FinishReason::Length } else { FinishReason::Stop };
            samples.push(Sample {
                prompt_id: p.prompt_id.clone(),
                model: model.into(),
                sample_index: i,
                prompt_text: format!("<|user|>{}<|assistant|>", p.messages.last().unwrap().content),
                response: response.clone(),
                prompt_tokens: 20,
                response_tokens: 12 + i,
                finish_reason,
                skip_reason: None,
                temperature: 0.8,
                top_p: 0.95,
                top_k: 0,
                seed: 42,
                generation_seconds: 0.1,
            })?;
            scores.push(ScoredSample {
                prompt_id: p.prompt_id.clone(),
                model: model.into(),
                sample_index: i,
                response,
                response_tokens: 12 + i,
                finish_reason,
                reward: uniform_draw(42, "reward", &key),
                reward_model: "synthetic".into(),
            })?;
        }
    }
    samples.finish()?;
    scores.finish()
}
