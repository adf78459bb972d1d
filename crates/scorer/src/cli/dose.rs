use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use wrpo_common::{
    io::{check_paths, write_text},
    pairs::Pair,
    prompts::Prompt,
    read_dataset,
    scored::ScoredSample,
    write_dataset, Provenance,
};
use wrpo_scorer::{dose, report, score::PRODUCER, select::check_scores};

#[derive(clap::Args, Serialize)]
pub struct DoseArgs {
    /// `prompts` dataset (references for numeric accuracy).
    #[arg(long)]
    prompts: PathBuf,
    /// `scored` datasets of the models compared (repeatable: e.g. the main eval's and the levels' own answers).
    #[arg(long = "scores", required = true)]
    scores: Vec<PathBuf>,
    /// The model every arm is compared with (DPO on y_wt; a pool NAME of NAME@SEED aliases is one model).
    #[arg(long)]
    baseline: String,
    /// A level, NAME=PAIRS: its `pairs` dataset (the one its arms trained on) gives its x (repeatable).
    #[arg(long = "level", value_parser = parse_level, required = true)]
    levels: Vec<(String, PathBuf)>,
    /// An arm, LEVEL:ARM=MODEL: MODEL trained at LEVEL by recipe ARM (repeatable); arms of one
    /// name at several levels give a slope.
    #[arg(long = "arm", value_parser = parse_arm, required = true)]
    arms: Vec<(String, String, String)>,
    /// Prompt families (prompt_id without its -NUMBER) whose numeric accuracy is measured.
    #[arg(long, value_delimiter = ',', default_value = "arithmetic,conversion")]
    numeric_families: Vec<String>,
    /// Seed of the bootstrap resamples.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
}

/// NAME=PAIRS of `dose --level`.
fn parse_level(text: &str) -> Result<(String, PathBuf), String> {
    match text.split_once('=') {
        Some((n, p)) if !n.is_empty() && !p.is_empty() => Ok((n.to_string(), PathBuf::from(p))),
        _ => Err(format!("'{text}' is not NAME=PAIRS (a level name and its pairs file)")),
    }
}

/// LEVEL:ARM=MODEL of `dose --arm`.
fn parse_arm(text: &str) -> Result<(String, String, String), String> {
    match text.split_once('=').and_then(|(la, m)| la.split_once(':').map(|(l, a)| (l, a, m))) {
        Some((l, a, m)) if !l.is_empty() && !a.is_empty() && !m.is_empty() => Ok((l.to_string(), a.to_string(), m.to_string())),
        _ => Err(format!("'{text}' is not LEVEL:ARM=MODEL (e.g. L+:wrpo=wrpo-lplus)")),
    }
}

/// What `dose` writes into its --out folder.
const DOSE_FILES: [&str; 4] = ["dose-points.parquet", "dose-slopes.parquet", "dose.png", "dose.md"];

impl DoseArgs {
    fn check(&self) -> Result<()> {
        let mut names = HashSet::new();
        if let Some((name, _)) = self.levels.iter().find(|(name, _)| !names.insert(name)) {
            bail!("--level {name} is given twice");
        }
        let written = DOSE_FILES.map(|f| self.out.join(f));
        let mut inputs: Vec<(&str, &Path)> = vec![("--prompts", &self.prompts)];
        inputs.extend(self.scores.iter().map(|p| ("--scores", p.as_path())));
        inputs.extend(self.levels.iter().map(|(_, p)| ("--level", p.as_path())));
        check_paths(&written.iter().map(|p| ("--out", p.as_path())).collect::<Vec<_>>(), &inputs)
    }

    /// Every --scores dataset, as one; a model scored in two is refused.
    fn read_scores(&self) -> Result<Vec<ScoredSample>> {
        let mut sets = Vec::new();
        for path in &self.scores {
            sets.push((path.as_path(), read_dataset::<ScoredSample>(path)?));
        }
        check_scores(&sets.iter().map(|(p, rows)| (*p, rows.as_slice())).collect::<Vec<_>>())?;
        // One model's answers in two folders (or one folder given twice) would count twice in its means.
        let mut holder: HashMap<&str, usize> = HashMap::new();
        for (i, (path, rows)) in sets.iter().enumerate() {
            for r in rows.iter() {
                if let Some(j) = holder.insert(&r.model, i).filter(|j| *j != i) {
                    bail!("model '{}' is scored in both {} and {}: give each model's answers once", r.model, sets[j].0.display(), path.display());
                }
            }
        }
        Ok(sets.into_iter().flat_map(|(_, rows)| rows).collect())
    }

    pub fn run(self) -> Result<()> {
        self.check()?;
        let written = DOSE_FILES.map(|f| self.out.join(f));
        let prompts: Vec<Prompt> = read_dataset(&self.prompts)?;
        let scored = self.read_scores()?;
        let levels = self
            .levels
            .iter()
            .map(|(name, path)| dose::Level::from_pairs(name, &read_dataset::<Pair>(path)?).map_err(|e| anyhow!("{}: {e}", path.display())))
            .collect::<Result<Vec<_>>>()?;
        let arms: Vec<dose::Arm> =
            self.arms.iter().map(|(level, arm, model)| dose::Arm { level: level.clone(), arm: arm.clone(), model: model.clone() }).collect();
        // `report` pools the seeds and refuses models that answered different prompts.
        let compare: Vec<(String, String)> = arms.iter().map(|a| (a.model.clone(), self.baseline.clone())).collect();
        let r = report::report(&prompts, &scored, &self.baseline, &compare, self.seed)?;
        let numeric = self.numeric_families.iter().cloned().collect();
        let d = dose::dose(&r.prompts, &levels, &arms, &self.baseline, &numeric, self.seed)?;
        let mut prov = Provenance::new(PRODUCER, &self)?.with_input(&self.prompts)?;
        for path in self.scores.iter().chain(self.levels.iter().map(|(_, p)| p)) {
            prov = prov.with_input(path)?;
        }
        let [points, slopes, png, md] = &written;
        write_dataset(points, &d.points, &prov)?;
        write_dataset(slopes, &d.slopes, &prov)?;
        dose::chart(&d, png)?;
        let table = dose::markdown(&d);
        write_text(md, &table)?;
        println!("{table}");
        Ok(())
    }
}
