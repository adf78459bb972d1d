use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;
use wrpo_common::{
    export::{TrlExample, WrpoExample},
    hash::parse_shard,
    io::{check_paths, read_file, write_rows, write_text},
    pairs::Pair,
    prompts::Prompt,
    read_dataset,
    report::Judgement,
    scored::ScoredSample,
    sft::SftExample,
    write_dataset, Provenance,
};
use wrpo_scorer::{
    dose,
    judge::{self, Judge},
    pairwise, report,
    reward::RewardSpec,
    score::{score, write_summary, ScoreOptions, ScoreSettings, PRODUCER},
    select::{check_scores, make_pairs, pairs_summary, reference_sft, sft_split, sft_summary, truncated_shares, ByPrompt, PairOptions, Strategy},
};

/// Score samples with a reward model and build the SFT set and WRPO pairs.
#[derive(Parser)]
#[command(name = "wrpo-score", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// On an error, also print any backtrace a library captured (RUST_BACKTRACE).
    #[arg(short, long, global = true)]
    verbose: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Score every sample with a reward into `scored` shards under OUT/<model>/.
    /// Rerunning the same command continues an interrupted run.
    Score(ScoreArgs),
    /// Compare models on held-out prompts from their scored samples: mean
    /// reward and win rate against a baseline (95% bootstrap intervals),
    /// numeric accuracy and ROUGE-L; OUT/report.md, report.png, report.parquet.
    Report(ReportArgs),
    /// The dose-response: per level of source strength (a pairs file with its
    /// own y_ws) and arm (a recipe trained at that level), the held-out paired
    /// difference against a baseline (DPO on y_wt), by the level's mean training
    /// gap y_ws - y_wt, with slopes; OUT/dose.md, dose.png, dose-points.parquet,
    /// dose-slopes.parquet.
    Dose(DoseArgs),
    /// Split the train prompts into an SFT part and a preference part, and
    /// write the SFT set (x, y_ws) and the preference prompts.
    SftSet(SftSetArgs),
    /// Build preference pairs (x, y_ws, y_wt, y_l) for the preference prompts.
    Pairs(PairsArgs),
    /// The training set of a stronger source: the SFT part's prompts with
    /// their reference answers, refused where a prompt is also a preference,
    /// validation or test prompt.
    ReferenceSet(ReferenceSetArgs),
    /// Write pairs in the shape a GPU trainer reads: the official WRPO
    /// recipe's (chosen = [y_ws, y_wt], rejected = [y_l]) or TRL's
    /// conversational preference data; Parquet or JSON lines by OUT's extension.
    Export(ExportArgs),
}

#[derive(Clone, Copy, PartialEq, Serialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
enum ExportFormat {
    Wrpo,
    Trl,
}

#[derive(Clone, Copy, PartialEq, Serialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
enum ChosenArg {
    /// y_ws, the best source response.
    Source,
    /// y_wt, the best target response (as the DPO baseline).
    Target,
}

#[derive(clap::Args, Serialize)]
struct ExportArgs {
    /// `pairs` dataset (from `wrpo-score pairs`).
    #[arg(long)]
    pairs: PathBuf,
    #[arg(long, value_enum)]
    format: ExportFormat,
    /// `--format trl`: which response is `chosen`.
    #[arg(long, value_enum, default_value = "target")]
    chosen: ChosenArg,
    /// Output file: .parquet or .jsonl.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum DTypeArg {
    F32,
    Bf16,
}

#[derive(clap::Args)]
struct ScoreArgs {
    /// `prompts` dataset the samples answer (messages and reference answers).
    #[arg(long)]
    prompts: PathBuf,
    /// `samples` dataset: a file or a folder of shards (e.g. OUT/*/ of `wrpo-sample generate`).
    #[arg(long)]
    samples: PathBuf,
    /// `rm:PATH` (an HF reward model: *ForSequenceClassification or ArmoRM),
    /// `classify:URL#MODEL` (one served by vLLM at http://HOST:PORT/classify
    /// or SGLang at …/v1/classify), `similarity:PATH` (a sentence-transformers
    /// folder; cosine to the reference), `similarity:openai:URL#MODEL` (the
    /// same through a server's /v1/embeddings), `judge:openai:URL#MODEL` (an LLM
    /// judge's 1-10 grade), `exact` or `numeric[:TOLERANCE]` (verifiers).
    #[arg(long, value_parser = RewardSpec::parse)]
    reward: RewardSpec,
    /// classify: render conversations here with this reward-model folder's
    /// tokenizer and chat template and send them as text (SGLang needs it).
    #[arg(long)]
    render_with: Option<PathBuf>,
    /// classify: before scoring, check that the server scores a known
    /// conversation as this local checkpoint of the reward model does.
    #[arg(long)]
    check_against: Option<PathBuf>,
    #[command(flatten)]
    remote: wrpo_remote::RemoteArgs,
    /// Output folder: OUT/<model>/part-*.parquet and OUT/summary.json.
    #[arg(long)]
    out: PathBuf,
    /// Weight type of a reward model.
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    dtype: DTypeArg,
    /// The matmuls' precision for an `rm:` reward model on f32 weights: f32;
    /// bf16 (operands rounded to bf16, sums in f32, on the CPU's AMX or
    /// AVX512-BF16 units, as `wrpo-train --precision`); auto (bf16 where the
    /// CPU has those units). Other rewards run no model of ours.
    #[arg(long, default_value = "f32", value_parser = wrpo_llm::bf16::Precision::parse)]
    precision: wrpo_llm::bf16::Precision,
    /// Leave out (and count) samples whose prompt has no reference, instead of failing.
    #[arg(long)]
    skip_unreferenced: bool,
    /// `i/n`: this machine's part of the prompts, by a hash of prompt_id (as `wrpo-sample --shard`).
    #[arg(long, value_parser = parse_shard)]
    shard: Option<(usize, usize)>,
    /// Tokens per batch: padded (batch size x longest) for similarity models; for reward
    /// models, which run each sequence unpadded and each prompt once, the sum of lengths.
    #[arg(long, default_value_t = 4096)]
    batch_tokens: usize,
    /// Samples per batch for rewards that run no model here (verifiers and
    /// served rewards, whose requests a batch's items are spread over).
    #[arg(long, default_value_t = 256)]
    batch_items: usize,
    /// CPU threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Rows per committed shard; a shard is also committed every minute.
    #[arg(long, default_value_t = 2000)]
    shard_rows: usize,
    /// Tests only: abort after this many committed shards, as a crash would.
    #[arg(long, hide = true)]
    abort_after_shards: Option<usize>,
}

#[derive(clap::Args, Serialize)]
struct ReportArgs {
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

#[derive(clap::Args, Serialize)]
struct DoseArgs {
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

#[derive(clap::Args, Serialize)]
struct SftSetArgs {
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

#[derive(clap::Args, Serialize)]
struct ReferenceSetArgs {
    /// `prompts` dataset of every split (the references, and the held-out prompts to keep out).
    #[arg(long)]
    prompts: PathBuf,
    /// `sft` dataset whose prompts the source is trained on (from `sft-set`).
    #[arg(long)]
    sft: PathBuf,
    /// `prompts` dataset of the preference part (from `sft-set --out-preference`), kept out.
    #[arg(long)]
    preference: PathBuf,
    /// Output `sft` dataset (x, reference answer).
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args, Serialize)]
struct PairsArgs {
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

/// MODEL:AGAINST of --compare.
fn parse_comparison(text: &str) -> Result<(String, String), String> {
    match text.split_once(':') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() && a != b => Ok((a.to_string(), b.to_string())),
        _ => Err(format!("'{text}' is not MODEL:AGAINST with two different model aliases")),
    }
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

fn parse_sweep(text: &str) -> Result<(String, f64), String> {
    match text.split_once('=').map(|(m, v)| (m, v.parse::<f64>())) {
        // The plot's axis spans the values: past 1e12 its ticks never end.
        Some((m, Ok(v))) if !m.is_empty() && v.is_finite() && v.abs() <= 1e12 => Ok((m.to_string(), v)),
        _ => Err(format!("'{text}' is not MODEL=VALUE with a number of at most 1e12 in size")),
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
    let verdicts = pairwise::judge_all(&judge, prompts, scored, &args.baseline, cached, &interrupted, |v| write_dataset(&verdicts_path, v, &prov))?;
    let rows = pairwise::compare(&verdicts, &args.baseline, model, args.seed);
    write_dataset(&args.out.join("judge.parquet"), &rows, &prov)?;
    let paired = pairwise::paired(&verdicts, &args.baseline, &args.compare, args.seed)?;
    write_dataset(&args.out.join("judge-paired.parquet"), &paired, &prov)?;
    let mut notes = String::new();
    for (m, n) in pairwise::all_unreadable(&verdicts, &args.baseline) {
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
        pairwise::markdown(&rows) + &notes,
        if paired.is_empty() {
            String::new()
        } else {
            format!(
                "\nPaired through the baseline (measure `judge`: per prompt, the difference of the two models' outcomes against it):\n\n{}",
                report::paired_markdown(&paired)
            )
        }
    ))
}

/// What `report` writes into its --out folder.
const REPORT_FILES: [&str; 5] = ["report.parquet", "per-prompt.parquet", "paired.parquet", "report.png", "report.md"];

/// What `dose` writes into its --out folder.
const DOSE_FILES: [&str; 4] = ["dose-points.parquet", "dose-slopes.parquet", "dose.png", "dose.md"];

/// A model with more than this share of its samples cut off is warned about.
const TRUNCATED_WARNING: f64 = 0.2;

fn main() {
    wrpo_llm::setup_process();
    let cli = Cli::parse();
    wrpo_common::exit_on_error("wrpo-score", cli.verbose, run(cli));
}

/// `OUT.parquet` -> `OUT.summary.json`: where a single-file output's summary goes.
fn summary_path(out: &Path) -> PathBuf {
    out.with_extension("summary.json")
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Score(a) => {
            for (flag, value) in [
                ("--batch-tokens", a.batch_tokens),
                ("--batch-items", a.batch_items),
                ("--shard-rows", a.shard_rows),
                ("--threads", a.threads.unwrap_or(1)),
                ("--concurrency", a.remote.concurrency.unwrap_or(1)),
            ] {
                if value == 0 {
                    bail!("{flag} must be at least 1, got 0");
                }
            }
            check_paths(&[("--out", &a.out)], &[("--prompts", &a.prompts), ("--samples", &a.samples)])?;
            wrpo_llm::set_threads(a.threads);
            let mut reward = a.reward;
            match (&mut reward, a.render_with) {
                (RewardSpec::Classify { render_with, .. }, dir) => *render_with = dir,
                (_, Some(_)) => bail!("--render-with renders conversations for a served reward model (--reward classify:URL#MODEL)"),
                (_, None) => {}
            }
            if a.precision != wrpo_llm::bf16::Precision::F32 {
                if !matches!(reward, RewardSpec::Rm { .. }) {
                    bail!("--precision {}: it applies to a reward model of ours (--reward rm:PATH); this reward runs none", a.precision.name());
                }
                if matches!(a.dtype, DTypeArg::Bf16) {
                    bail!(
                        "--precision {} runs bf16 matmuls on f32 weights; with --dtype bf16 the weights are bf16 already: choose one",
                        a.precision.name()
                    );
                }
            }
            let settings = ScoreSettings {
                reward,
                precision: a.precision,
                dtype: match a.dtype {
                    DTypeArg::F32 => "f32".into(),
                    DTypeArg::Bf16 => "bf16".into(),
                },
                skip_unreferenced: a.skip_unreferenced,
                shard: a.shard,
            };
            let served = matches!(settings.reward, RewardSpec::Classify { .. } | RewardSpec::SimilarityOpenai { .. } | RewardSpec::Judge { .. });
            a.remote.warn_if_unused(served, "this --reward is not served");
            let options = ScoreOptions {
                batch_tokens: a.batch_tokens,
                batch_items: a.batch_items,
                shard_rows: a.shard_rows,
                remote: a.remote.into(),
                check_against: a.check_against,
                abort_after_shards: a.abort_after_shards,
            };
            let prompts: Vec<Prompt> = read_dataset(&a.prompts)?;
            let interrupted = wrpo_common::interrupt_flag("committing finished batches", served)?;
            let summary = score(&a.prompts, &prompts, &a.samples, &settings, &options, &a.out, interrupted)?;
            eprintln!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Command::Report(args) => {
            args.remote.warn_if_unused(args.judge.is_some(), "no --judge is given");
            let written = REPORT_FILES.map(|f| args.out.join(f));
            let sweep_png = args.out.join("sweep.png");
            let mut outputs: Vec<(&str, &Path)> = written.iter().map(|p| ("--out", p.as_path())).collect();
            if !args.sweep.is_empty() {
                outputs.push(("--out", &sweep_png));
            }
            check_paths(&outputs, &[("--prompts", &args.prompts), ("--scores", &args.scores)])?;
            if let Some((m, _)) = args.sweep.iter().find(|(m, _)| !args.compare.is_empty() && !args.compare.iter().any(|(a, _)| a == m)) {
                bail!("--sweep {m}: no --compare {m}:AGAINST gives it a comparison to plot");
            }
            let prompts: Vec<Prompt> = read_dataset(&args.prompts)?;
            let scored: Vec<ScoredSample> = read_dataset(&args.scores)?;
            // Rewards of two reward models are on two scales, as for sft-set and pairs.
            check_scores(&[(&args.scores, &scored)])?;
            let mut r = report::report(&prompts, &scored, &args.baseline, &args.compare, args.seed)?;
            let names: Vec<&str> = r.models.iter().map(|m| m.model.as_str()).collect();
            let unknown = |flag: &str, m: &str| anyhow!("{flag} {m}: no model of that name was scored (models: {})", names.join(", "));
            if let Some(m) = args.order.iter().find(|m| !names.contains(&m.as_str())) {
                return Err(unknown("--order", m));
            }
            if let Some((m, _)) = args.sweep.iter().find(|(m, _)| !names.contains(&m.as_str())) {
                return Err(unknown("--sweep", m));
            }
            let rank = |m: &str| args.order.iter().position(|o| o == m).unwrap_or(usize::MAX);
            r.models.sort_by(|a, b| rank(&a.model).cmp(&rank(&b.model)).then_with(|| a.model.cmp(&b.model)));
            let reward = scored.first().map_or(String::new(), |s| s.reward_model.clone());
            let mut table = format!(
                "{}\nPaired comparisons: per-prompt differences on the prompts both models answered.\n\n{}",
                report::markdown(&r.models, &args.baseline, &reward),
                report::paired_markdown(&r.paired)
            );
            for note in &r.refused {
                eprintln!("{note}");
                table += &format!("\n{note}.\n");
            }
            let sweep = report::sweep_points(&args.sweep, &r.paired)?;
            if !sweep.is_empty() {
                table += &format!("\nBy {} (sweep.png):\n\n{}", args.sweep_label, report::sweep_markdown(&args.sweep_label, &sweep));
            }
            let prov = Provenance::new(PRODUCER, &args)?.with_input(&args.prompts)?.with_input(&args.scores)?;
            if let Some((url, model)) = &args.judge {
                table += &judge_section(url, model, &args, &prompts, &scored, &prov)?;
            }
            let [models, per_prompt, paired, png, md] = &written;
            write_dataset(models, &r.models, &prov)?;
            write_dataset(per_prompt, &r.prompts, &prov)?;
            write_dataset(paired, &r.paired, &prov)?;
            report::chart(&r.models, &r.paired, png)?;
            if !sweep.is_empty() {
                report::sweep_chart(&args.sweep_label, &sweep, &sweep_png)?;
            }
            write_text(md, &table)?;
            println!("{table}");
        }
        Command::Dose(args) => {
            let written = DOSE_FILES.map(|f| args.out.join(f));
            let mut inputs: Vec<(&str, &Path)> = vec![("--prompts", &args.prompts)];
            inputs.extend(args.scores.iter().map(|p| ("--scores", p.as_path())));
            inputs.extend(args.levels.iter().map(|(_, p)| ("--level", p.as_path())));
            check_paths(&written.iter().map(|p| ("--out", p.as_path())).collect::<Vec<_>>(), &inputs)?;
            let prompts: Vec<Prompt> = read_dataset(&args.prompts)?;
            let mut sets = Vec::new();
            for path in &args.scores {
                sets.push((path.as_path(), read_dataset::<ScoredSample>(path)?));
            }
            check_scores(&sets.iter().map(|(p, rows)| (*p, rows.as_slice())).collect::<Vec<_>>())?;
            // One model's answers in two folders (or one folder given twice) would count twice in its means.
            let mut holder: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
            for (i, (path, rows)) in sets.iter().enumerate() {
                for r in rows.iter() {
                    if let Some(j) = holder.insert(&r.model, i).filter(|j| *j != i) {
                        bail!("model '{}' is scored in both {} and {}: give each model's answers once", r.model, sets[j].0.display(), path.display());
                    }
                }
            }
            let scored: Vec<ScoredSample> = sets.into_iter().flat_map(|(_, rows)| rows).collect();
            let mut levels = Vec::new();
            for (name, path) in &args.levels {
                if levels.iter().any(|l: &dose::Level| &l.name == name) {
                    bail!("--level {name} is given twice");
                }
                levels.push(dose::Level::from_pairs(name, &read_dataset::<Pair>(path)?).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?);
            }
            let arms: Vec<dose::Arm> =
                args.arms.iter().map(|(level, arm, model)| dose::Arm { level: level.clone(), arm: arm.clone(), model: model.clone() }).collect();
            // `report` pools the seeds and refuses models that answered different prompts.
            let compare: Vec<(String, String)> = arms.iter().map(|a| (a.model.clone(), args.baseline.clone())).collect();
            let r = report::report(&prompts, &scored, &args.baseline, &compare, args.seed)?;
            let numeric = args.numeric_families.iter().cloned().collect();
            let d = dose::dose(&r.prompts, &levels, &arms, &args.baseline, &numeric, args.seed)?;
            let mut prov = Provenance::new(PRODUCER, &args)?.with_input(&args.prompts)?;
            for path in args.scores.iter().chain(args.levels.iter().map(|(_, p)| p)) {
                prov = prov.with_input(path)?;
            }
            let [points, slopes, png, md] = &written;
            write_dataset(points, &d.points, &prov)?;
            write_dataset(slopes, &d.slopes, &prov)?;
            dose::chart(&d, png)?;
            let table = dose::markdown(&d);
            write_text(md, &table)?;
            println!("{table}");
        }
        Command::SftSet(args) => {
            if !(0.0..=1.0).contains(&args.sft_fraction) {
                bail!("--sft-fraction must lie in [0, 1], got {}", args.sft_fraction);
            }
            check_paths(
                &[("--out", &args.out), ("--out-preference", &args.out_preference)],
                &[("--prompts", &args.prompts), ("--source-scores", &args.source_scores)],
            )?;
            let prompts = read_dataset::<Prompt>(&args.prompts)?;
            let scores = read_dataset::<ScoredSample>(&args.source_scores)?;
            check_scores(&[(&args.source_scores, &scores)])?;
            let truncated = truncated_shares(&[&scores], TRUNCATED_WARNING, args.allow_truncated);
            let split = sft_split(&prompts, &ByPrompt::new(&scores), args.sft_fraction, args.seed, args.allow_truncated);
            let prov = Provenance::new(PRODUCER, &args)?.with_input(&args.prompts)?.with_input(&args.source_scores)?;
            write_dataset(&args.out, &split.sft, &prov)?;
            write_dataset(&args.out_preference, &split.preference, &prov)?;
            write_summary(&summary_path(&args.out), &sft_summary(&split, &truncated))?;
            eprintln!(
                "{} SFT examples -> {}; {} preference prompts -> {}; {} train prompts had no scored source sample, {} only truncated ones",
                split.sft.len(),
                args.out.display(),
                split.preference.len(),
                args.out_preference.display(),
                split.unscored,
                split.only_truncated
            );
        }
        Command::ReferenceSet(args) => {
            check_paths(&[("--out", &args.out)], &[("--prompts", &args.prompts), ("--sft", &args.sft), ("--preference", &args.preference)])?;
            let prompts = read_dataset::<Prompt>(&args.prompts)?;
            let sft = read_dataset::<SftExample>(&args.sft)?;
            let preference = read_dataset::<Prompt>(&args.preference)?;
            let examples = reference_sft(&prompts, &sft, &preference).map_err(|e| anyhow::anyhow!("{}: {e}", args.sft.display()))?;
            let prov = Provenance::new(PRODUCER, &args)?.with_input(&args.prompts)?.with_input(&args.sft)?.with_input(&args.preference)?;
            write_dataset(&args.out, &examples, &prov)?;
            eprintln!("{} (prompt, reference) examples -> {}; none is a preference, validation or test prompt", examples.len(), args.out.display());
        }
        Command::Export(args) => {
            check_paths(&[("--out", &args.out)], &[("--pairs", &args.pairs)])?;
            let pairs = read_dataset::<Pair>(&args.pairs)?;
            let prov = Provenance::new(PRODUCER, &args)?.with_input(&args.pairs)?;
            match args.format {
                ExportFormat::Wrpo => write_rows(&args.out, &pairs.iter().map(WrpoExample::from_pair).collect::<Vec<_>>(), &prov)?,
                ExportFormat::Trl => {
                    let rows: Vec<_> = pairs.iter().map(|p| TrlExample::from_pair(p, args.chosen == ChosenArg::Source)).collect();
                    write_rows(&args.out, &rows, &prov)?
                }
            }
            eprintln!("{} pairs -> {}", pairs.len(), args.out.display());
        }
        Command::Pairs(args) => {
            let mut inputs = vec![("--prompts", args.prompts.as_path()), ("--source-scores", args.source_scores.as_path())];
            inputs.extend(args.target_scores.as_deref().map(|p| ("--target-scores", p)));
            check_paths(&[("--out", &args.out)], &inputs)?;
            let prompts = read_dataset::<Prompt>(&args.prompts)?;
            let source = read_dataset::<ScoredSample>(&args.source_scores)?;
            let mut prov = Provenance::new(PRODUCER, &args)?.with_input(&args.prompts)?.with_input(&args.source_scores)?;
            let target = match (&args.target_scores, args.strategy) {
                (Some(path), _) => {
                    prov = prov.with_input(path)?;
                    read_dataset::<ScoredSample>(path)?
                }
                (None, Strategy::Wrpo) => bail!("--strategy wrpo needs --target-scores"),
                (None, Strategy::Fusechat) => Vec::new(),
            };
            let target_path = args.target_scores.clone().unwrap_or_default();
            check_scores(&[(&args.source_scores, &source), (&target_path, &target)])?;
            match (args.source_best_of, args.strategy) {
                (Some(0), _) => bail!("--source-best-of must be at least 1, got 0"),
                (Some(_), Strategy::Fusechat) => bail!("--source-best-of picks y_ws of --strategy wrpo; fusechat takes each source's best and worst"),
                _ => {}
            }
            let opts = PairOptions {
                strategy: args.strategy,
                allow_truncated: args.allow_truncated,
                min_gap: args.min_gap,
                max_gap: args.max_gap,
                source_best_of: args.source_best_of,
            };
            let truncated = truncated_shares(&[&source, &target], TRUNCATED_WARNING, args.allow_truncated);
            let (pairs, dropped) = make_pairs(&prompts, &ByPrompt::new(&source), &ByPrompt::new(&target), &opts);
            if pairs.is_empty() {
                bail!("no pair could be built from {} prompts: {}", prompts.len(), serde_json::to_string(&dropped)?);
            }
            write_dataset(&args.out, &pairs, &prov)?;
            let summary = pairs_summary(prompts.len(), &pairs, &dropped, &truncated);
            write_summary(&summary_path(&args.out), &summary)?;
            let gain = &summary["source_gain"]["all"];
            let share = |k: &str| 100.0 * gain[k].as_f64().unwrap_or(0.0);
            eprintln!(
                "{} pairs from {} prompts -> {}; dropped: {}; y_ws beats y_wt on {:.1}%, ties on {:.1}% (win rate {:.1}%, mean gap {:+.4})",
                pairs.len(),
                prompts.len(),
                args.out.display(),
                serde_json::to_string(&dropped)?,
                share("y_ws_beats_y_wt"),
                share("ties"),
                share("win_rate"),
                gain["mean_gap"].as_f64().unwrap_or(0.0),
            );
        }
    }
    Ok(())
}
