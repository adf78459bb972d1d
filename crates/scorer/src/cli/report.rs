use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use wrpo_common::{
    eval::Judgement,
    io::{check_paths, read_file, write_text},
    prompts::Prompt,
    read_dataset,
    scored::ScoredSample,
    write_dataset, Provenance,
};
use wrpo_scorer::{
    head_to_head,
    judge::{self, Judge},
    report::{self, render},
    score::PRODUCER,
    select::check_scores,
};

#[derive(clap::Args, Serialize)]
pub struct ReportArgs {
    /// `prompts` dataset (references for ROUGE-L and the numeric check).
    #[arg(long)]
    prompts: PathBuf,
    /// `scored` dataset of every model compared (a folder of OUT/<model>/ shards).
    #[arg(long)]
    scores: PathBuf,
    /// The model the others are compared with (e.g. the original target).
    #[arg(long)]
    baseline: String,
    /// Models in this order in the table (others follow by name).
    #[arg(long = "order", value_delimiter = ',')]
    order: Vec<String>,
    /// A paired comparison MODEL:AGAINST on the prompts both answered
    /// (repeatable) [default: every model against --baseline]. Aliases
    /// NAME@SEED (one training seed each) also pool into NAME.
    #[arg(long = "compare", value_parser = parse_comparison)]
    compare: Vec<(String, String)>,
    /// A sweep's model and its value, MODEL=VALUE (repeatable, e.g.
    /// alpha0.1=0.1): each model's paired reward comparison (its first
    /// --compare) against the value, as sweep.png and a table in report.md.
    #[arg(long = "sweep", value_parser = parse_sweep)]
    sweep: Vec<(String, f64)>,
    /// What the sweep's values are (the plot's axis).
    #[arg(long, default_value = "value")]
    sweep_label: String,
    /// Seed of the bootstrap resamples.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// An LLM judge, openai:URL#MODEL (an OpenAI-compatible chat server): every
    /// model against --baseline, each prompt's answers shown in both orders;
    /// win rates and length-adjusted win rates in report.md and judge.parquet,
    /// each --compare pair without the baseline in judge-paired.parquet, every
    /// verdict in judgements.parquet (kept for a rerun).
    #[arg(long, value_parser = judge::parse_spec)]
    judge: Option<(String, String)>,
    #[command(flatten)]
    #[serde(skip)]
    remote: wrpo_remote::RemoteArgs,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
}

/// MODEL:AGAINST of --compare.
fn parse_comparison(text: &str) -> Result<(String, String), String> {
    match text.split_once(':') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() && a != b => Ok((a.to_string(), b.to_string())),
        _ => Err(format!("'{text}' is not MODEL:AGAINST with two different model aliases")),
    }
}

fn parse_sweep(text: &str) -> Result<(String, f64), String> {
    match text.split_once('=').map(|(m, v)| (m, v.parse::<f64>())) {
        // The plot's axis spans the values: past 1e12 its ticks never end.
        Some((m, Ok(v))) if !m.is_empty() && v.is_finite() && v.abs() <= 1e12 => Ok((m.to_string(), v)),
        _ => Err(format!("'{text}' is not MODEL=VALUE with a number of at most 1e12 in size")),
    }
}

/// What `report` writes into its --out folder.
const REPORT_FILES: [&str; 5] = ["report.parquet", "per-prompt.parquet", "paired.parquet", "report.png", "report.md"];

impl ReportArgs {
    fn check(&self) -> Result<()> {
        if let Some((m, _)) = self.sweep.iter().find(|(m, _)| !self.compare.is_empty() && !self.compare.iter().any(|(a, _)| a == m)) {
            bail!("--sweep {m}: no --compare {m}:AGAINST gives it a comparison to plot");
        }
        let written = REPORT_FILES.map(|f| self.out.join(f));
        let sweep_png = self.out.join("sweep.png");
        let mut outputs: Vec<(&str, &Path)> = written.iter().map(|p| ("--out", p.as_path())).collect();
        if !self.sweep.is_empty() {
            outputs.push(("--out", &sweep_png));
        }
        check_paths(&outputs, &[("--prompts", &self.prompts), ("--scores", &self.scores)])
    }

    pub fn run(self) -> Result<()> {
        self.check()?;
        self.remote.warn_if_unused(self.judge.is_some(), "no --judge is given");
        let written = REPORT_FILES.map(|f| self.out.join(f));
        let sweep_png = self.out.join("sweep.png");
        let prompts: Vec<Prompt> = read_dataset(&self.prompts)?;
        let scored: Vec<ScoredSample> = read_dataset(&self.scores)?;
        // Rewards of two reward models are on two scales, as for sft-set and pairs.
        check_scores(&[(&self.scores, &scored)])?;
        let mut r = report::report(&prompts, &scored, &self.baseline, &self.compare, self.seed)?;
        let names: Vec<&str> = r.models.iter().map(|m| m.model.as_str()).collect();
        let unknown = |flag: &str, m: &str| anyhow!("{flag} {m}: no model of that name was scored (models: {})", names.join(", "));
        if let Some(m) = self.order.iter().find(|m| !names.contains(&m.as_str())) {
            return Err(unknown("--order", m));
        }
        if let Some((m, _)) = self.sweep.iter().find(|(m, _)| !names.contains(&m.as_str())) {
            return Err(unknown("--sweep", m));
        }
        let rank = |m: &str| self.order.iter().position(|o| o == m).unwrap_or(usize::MAX);
        r.models.sort_by(|a, b| rank(&a.model).cmp(&rank(&b.model)).then_with(|| a.model.cmp(&b.model)));
        let reward = scored.first().map_or(String::new(), |s| s.reward_model.clone());
        let mut table = format!(
            "{}\nPaired comparisons: per-prompt differences on the prompts both models answered.\n\n{}",
            render::markdown(&r.models, &self.baseline, &reward),
            render::paired_markdown(&r.paired)
        );
        for note in &r.refused {
            eprintln!("{note}");
            table += &format!("\n{note}.\n");
        }
        let sweep = report::sweep_points(&self.sweep, &r.paired)?;
        if !sweep.is_empty() {
            table += &format!("\nBy {} (sweep.png):\n\n{}", self.sweep_label, render::sweep_markdown(&self.sweep_label, &sweep));
        }
        let prov = Provenance::new(PRODUCER, &self)?.with_input(&self.prompts)?.with_input(&self.scores)?;
        if let Some((url, model)) = &self.judge {
            table += &judge_section(url, model, &self, &prompts, &scored, &prov)?;
        }
        let [models, per_prompt, paired, png, md] = &written;
        write_dataset(models, &r.models, &prov)?;
        write_dataset(per_prompt, &r.prompts, &prov)?;
        write_dataset(paired, &r.paired, &prov)?;
        render::chart(&r.models, &r.paired, png)?;
        if !sweep.is_empty() {
            render::sweep_chart(&self.sweep_label, &sweep, &sweep_png)?;
        }
        write_text(md, &table)?;
        println!("{table}");
        Ok(())
    }
}

/// `report --judge`: every model against the baseline by the judge; the
/// verdicts already in OUT/judgements.parquet are kept when the judge and its
/// prompts are the same, each for as long as the answers it judged are.
fn judge_section(url: &str, model: &str, args: &ReportArgs, prompts: &[Prompt], scored: &[ScoredSample], prov: &Provenance) -> Result<String> {
    let judge = Judge::connect(url, model, &args.remote.clone().into())?;
    let verdicts_path = args.out.join("judgements.parquet");
    let config = serde_json::json!({"judge": judge.settings, "prompts": judge::PROMPTS_JSON});
    let prov = Provenance { config: config.clone(), ..prov.clone() };
    let cached = match verdicts_path.exists() {
        true => {
            let then = read_file::<Judgement>(&verdicts_path)?;
            match wrpo_common::io::settings_differ(&then.provenance.config, &config) {
                None => then.rows,
                Some(d) => {
                    eprintln!("{}: made by another judge or with other instructions ({d}); judging again", verdicts_path.display());
                    vec![]
                }
            }
        }
        false => vec![],
    };
    let interrupted = wrpo_common::interrupt_flag("keeping the verdicts that arrive", true)?;
    let verdicts =
        head_to_head::judge_all(&judge, prompts, scored, &args.baseline, cached, &interrupted, |v| write_dataset(&verdicts_path, v, &prov))?;
    let rows = head_to_head::compare(&verdicts, &args.baseline, model, args.seed)?;
    write_dataset(&args.out.join("judge.parquet"), &rows, &prov)?;
    let paired = head_to_head::paired(&verdicts, &args.baseline, &args.compare, args.seed)?;
    write_dataset(&args.out.join("judge-paired.parquet"), &paired, &prov)?;
    let mut notes = String::new();
    for (m, n) in head_to_head::all_unreadable(&verdicts, &args.baseline) {
        let note = format!("{m}: none of its {n} verdicts could be read, so it has no judged win rate (the judge's words are in judgements.parquet)");
        eprintln!("{note}");
        notes += &format!("\n{note}.\n");
    }
    let s = &judge.settings;
    Ok(format!(
        "\nJudged by '{}' at {} (judge/prompts.json version {}, sha256 {}; temperature {}, at most {} tokens), each prompt's answers in both orders (sample {}); \
         a prompt wins or loses when both orders say so and is a tie otherwise (MT-Bench's rule); the length-adjusted rate is a two-parameter \
         logistic fit read at equal length (not AlpacaEval 2's GLM, which also models each prompt's difficulty):\n\n{}{}",
        s.model,
        s.url,
        s.prompts_version,
        &s.prompts_sha256[..12],
        s.temperature,
        s.max_tokens,
        "with the lowest index both models have",
        render::judge_markdown(&rows) + &notes,
        if paired.is_empty() {
            String::new()
        } else {
            format!(
                "\nPaired through the baseline (measure `judge`: per prompt, the difference of the two models' outcomes against it):\n\n{}",
                render::paired_markdown(&paired)
            )
        }
    ))
}
