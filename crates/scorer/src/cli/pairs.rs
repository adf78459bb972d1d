use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::Serialize;
use wrpo_common::{io::check_paths, prompts::Prompt, read_dataset, scored::ScoredSample, write_dataset, Provenance};
use wrpo_scorer::{
    score::{write_summary, PRODUCER},
    select::{check_scores, make_pairs, pairs_summary, truncated_shares, ByPrompt, PairOptions, Strategy},
};

use super::{summary_path, TRUNCATED_WARNING};

#[derive(clap::Args, Serialize)]
pub struct PairsArgs {
    /// `prompts` dataset of the preference part (from `sft-set --out-preference`).
    #[arg(long)]
    prompts: PathBuf,
    /// Scored source samples.
    #[arg(long)]
    source_scores: PathBuf,
    /// Scored samples of the target (Target-SFT); required by --strategy wrpo.
    #[arg(long)]
    target_scores: Option<PathBuf>,
    /// How chosen and rejected responses are picked.
    #[arg(long, value_enum, default_value_t = Strategy::Wrpo)]
    strategy: Strategy,
    /// fusechat: smallest reward gap kept.
    #[arg(long, default_value_t = 0.01)]
    min_gap: f64,
    /// fusechat: largest reward gap kept.
    #[arg(long, default_value_t = 0.1)]
    max_gap: f64,
    /// Let a response cut off by the token limit (finish_reason 'length') be
    /// y_ws, y_wt or y_l; by default it is none of them, so that cut-off
    /// answers do not all end up rejected and teach "shorter wins".
    #[arg(long)]
    allow_truncated: bool,
    /// wrpo: y_ws is the best of only the first K eligible source samples of
    /// each prompt (by sample_index), e.g. 1 for a single draw: a weaker
    /// source from the same samples.
    #[arg(long)]
    source_best_of: Option<usize>,
    /// Output `pairs` dataset.
    #[arg(long)]
    out: PathBuf,
}

impl PairsArgs {
    fn check(&self) -> Result<()> {
        if self.strategy == Strategy::Wrpo && self.target_scores.is_none() {
            bail!("--strategy wrpo needs --target-scores");
        }
        match (self.source_best_of, self.strategy) {
            (Some(0), _) => bail!("--source-best-of must be at least 1, got 0"),
            (Some(_), Strategy::Fusechat) => bail!("--source-best-of picks y_ws of --strategy wrpo; fusechat takes each source's best and worst"),
            _ => {}
        }
        let mut inputs = vec![("--prompts", self.prompts.as_path()), ("--source-scores", self.source_scores.as_path())];
        inputs.extend(self.target_scores.as_deref().map(|p| ("--target-scores", p)));
        check_paths(&[("--out", &self.out)], &inputs)
    }

    pub fn run(self) -> Result<()> {
        self.check()?;
        let prompts = read_dataset::<Prompt>(&self.prompts)?;
        let source = read_dataset::<ScoredSample>(&self.source_scores)?;
        let mut prov = Provenance::new(PRODUCER, &self)?.with_input(&self.prompts)?.with_input(&self.source_scores)?;
        let target = match &self.target_scores {
            Some(path) => {
                prov = prov.with_input(path)?;
                read_dataset::<ScoredSample>(path)?
            }
            None => Vec::new(),
        };
        let target_path = self.target_scores.clone().unwrap_or_default();
        check_scores(&[(&self.source_scores, &source), (&target_path, &target)])?;
        let opts = PairOptions {
            strategy: self.strategy,
            allow_truncated: self.allow_truncated,
            min_gap: self.min_gap,
            max_gap: self.max_gap,
            source_best_of: self.source_best_of,
        };
        let truncated = truncated_shares(&[&source, &target], TRUNCATED_WARNING, self.allow_truncated);
        let (pairs, dropped) = make_pairs(&prompts, &ByPrompt::new(&source), &ByPrompt::new(&target), &opts);
        if pairs.is_empty() {
            bail!("no pair could be built from {} prompts: {}", prompts.len(), serde_json::to_string(&dropped)?);
        }
        write_dataset(&self.out, &pairs, &prov)?;
        let summary = pairs_summary(prompts.len(), &pairs, &dropped, &truncated);
        write_summary(&summary_path(&self.out), &summary)?;
        let gain = &summary["source_gain"]["all"];
        let share = |k: &str| 100.0 * gain[k].as_f64().unwrap_or(0.0);
        eprintln!(
            "{} pairs from {} prompts -> {}; dropped: {}; y_ws beats y_wt on {:.1}%, ties on {:.1}% (win rate {:.1}%, mean gap {:+.4})",
            pairs.len(),
            prompts.len(),
            self.out.display(),
            serde_json::to_string(&dropped)?,
            share("y_ws_beats_y_wt"),
            share("ties"),
            share("win_rate"),
            gain["mean_gap"].as_f64().unwrap_or(0.0),
        );
        Ok(())
    }
}
