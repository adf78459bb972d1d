use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::Serialize;
use wrpo_common::{io::check_paths, prompts::Prompt, read_dataset, scored::ScoredSample, write_dataset, Provenance};
use wrpo_scorer::{
    score::{write_summary, PRODUCER},
    select::{check_scores, sft_split, sft_summary, truncated_shares, ByPrompt},
};

use super::{summary_path, TRUNCATED_WARNING};

#[derive(clap::Args, Serialize)]
pub struct SftSetArgs {
    /// `prompts` dataset (only its train split is used).
    #[arg(long)]
    prompts: PathBuf,
    /// Scored source samples (a file or a folder of shards).
    #[arg(long)]
    source_scores: PathBuf,
    /// Fraction of the train prompts used for SFT (paper: one third; FuseChat-3.0: 0.4).
    #[arg(long, default_value_t = 1.0 / 3.0)]
    sft_fraction: f64,
    /// Seed of the SFT/preference split.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Let a response cut off by the token limit (finish_reason 'length') be y_ws.
    #[arg(long)]
    allow_truncated: bool,
    /// Output `sft` dataset.
    #[arg(long)]
    out: PathBuf,
    /// Output `prompts` dataset of the preference part.
    #[arg(long)]
    out_preference: PathBuf,
}

impl SftSetArgs {
    fn check(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.sft_fraction) {
            bail!("--sft-fraction must lie in [0, 1], got {}", self.sft_fraction);
        }
        check_paths(
            &[("--out", &self.out), ("--out-preference", &self.out_preference)],
            &[("--prompts", &self.prompts), ("--source-scores", &self.source_scores)],
        )
    }

    pub fn run(self) -> Result<()> {
        self.check()?;
        let prompts = read_dataset::<Prompt>(&self.prompts)?;
        let scores = read_dataset::<ScoredSample>(&self.source_scores)?;
        check_scores(&[(&self.source_scores, &scores)])?;
        let truncated = truncated_shares(&[&scores], TRUNCATED_WARNING, self.allow_truncated);
        let split = sft_split(&prompts, &ByPrompt::new(&scores), self.sft_fraction, self.seed, self.allow_truncated);
        let prov = Provenance::new(PRODUCER, &self)?.with_input(&self.prompts)?.with_input(&self.source_scores)?;
        write_dataset(&self.out, &split.sft, &prov)?;
        write_dataset(&self.out_preference, &split.preference, &prov)?;
        write_summary(&summary_path(&self.out), &sft_summary(&split, &truncated))?;
        eprintln!(
            "{} SFT examples -> {}; {} preference prompts -> {}; {} train prompts had no scored source sample, {} only truncated ones",
            split.sft.len(),
            self.out.display(),
            split.preference.len(),
            self.out_preference.display(),
            split.unscored,
            split.only_truncated
        );
        Ok(())
    }
}
