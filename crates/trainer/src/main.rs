use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::DType;
use clap::{Args, Parser, Subcommand};
use wrpo_common::{
    io::{check_keys, check_paths, dataset_files, read_file},
    pairs::Pair,
    read_dataset,
    sft::SftExample,
    write_dataset, Provenance,
};
use wrpo_llm::{bf16::Precision, LoadOptions, Model};
use wrpo_trainer::{
    data::{Encoder, Sequence, Truncation},
    import,
    loss::{Chosen, LossKind, Objective, SIMPO_GAMMA_BETA_RATIO},
    optim::AdamWConfig,
    schedule::{LrSchedule, Schedule, Settings},
    train::{
        encode_pairs, encode_sft, load_model, reference_logps, run, subsample, use_precision, Examples, ReferenceRecord, RunInputs, SftForm, Stage,
        TrainConfig, PRODUCER,
    },
};

/// Train the target model: SFT on y_ws, then WRPO on (x, y_ws, y_wt, y_l).
#[derive(Parser)]
#[command(name = "wrpo-train", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// On an error, also print any backtrace a library captured (RUST_BACKTRACE).
    #[arg(short, long, global = true)]
    verbose: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Supervised fine-tuning on (x, y_ws): Target-SFT, the model sampled on
    /// the preference prompts and the frozen reference of WRPO.
    Sft(SftArgs),
    /// Fill ref_logp_y_ws / _y_wt / _y_l of a pairs file with the frozen
    /// reference model (computed once: the reference never changes).
    RefLogps(RefArgs),
    /// Preference training: WRPO, or a baseline (DPO, SimPO, IPO, ...) on the same pairs.
    Wrpo(WrpoArgs),
    /// Turn a Hugging Face Trainer run's log (TRL's, wrpo_trl's:
    /// trainer_state.json) into a `metrics` dataset and its plot, as
    /// `wrpo-train` writes them for its own runs.
    ImportMetrics(ImportArgs),
    /// Print the learning-rate and alpha schedule of a run as CSV
    /// (step, lr, alpha), to check a configuration before training.
    Schedule {
        /// Training examples (rows of the pairs or SFT set).
        #[arg(long)]
        examples: u64,
        #[command(flatten)]
        steps: Steps,
        /// Peak learning rate.
        #[arg(long, default_value_t = 3e-7)]
        lr: f64,
        /// Final fusion coefficient alpha (recipe: 0.1).
        #[arg(long, default_value_t = 0.1)]
        alpha_max: f64,
        /// Keep alpha at alpha_max from the first step.
        #[arg(long)]
        static_alpha: bool,
    },
}

#[derive(Args)]
struct ImportArgs {
    /// trainer_state.json of the run (in its output folder or a checkpoint-N folder).
    state: PathBuf,
    /// Output `metrics` Parquet; the plot is written beside it (same name, .png).
    #[arg(long)]
    out: PathBuf,
    /// The rows' stage (wrpo, dpo, sft, ...) [default: wrpo if the log has
    /// preference rewards, else sft].
    #[arg(long)]
    stage: Option<String>,
}

#[derive(Args)]
struct Steps {
    /// Examples per forward/backward pass.
    #[arg(long, default_value_t = 1)]
    micro_batch: u64,
    /// Micro-batches per optimizer step (global batch = micro_batch * grad_accum; recipe: 128).
    #[arg(long, default_value_t = 128)]
    grad_accum: u64,
    #[arg(long, default_value_t = 1.0)]
    epochs: f64,
    /// Fraction of the steps spent warming the learning rate up.
    #[arg(long, default_value_t = 0.1)]
    warmup_ratio: f64,
    /// The learning rate's decay after warm-up.
    #[arg(long, value_enum, default_value_t = LrSchedule::Cosine)]
    lr_schedule: LrSchedule,
}

#[derive(Args)]
struct Common {
    /// The model to train: an HF folder or a GGUF file (dequantized to f32).
    #[arg(long)]
    model: PathBuf,
    /// Output folder: final/ (HF checkpoint), metrics.parquet, metrics.png, checkpoint/.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    steps: Steps,
    #[command(flatten)]
    precision: PrecisionArg,
    /// Gradient clipping by global norm (0 = none).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Apply weight decay to norms and biases too.
    #[arg(long)]
    decay_norms_and_biases: bool,
    #[arg(long, default_value_t = 0.9)]
    adam_beta1: f64,
    #[arg(long, default_value_t = 0.999)]
    adam_beta2: f64,
    #[arg(long, default_value_t = 1e-8)]
    adam_eps: f64,
    /// Prompt + longest response tokens at most; beyond, the prompt is cut to --max-prompt-length, then every
    /// response to --max-length minus --max-prompt-length (the official trainer's rule).
    #[arg(long, default_value_t = 2048)]
    max_length: usize,
    /// Prompt tokens kept (its end) when an example is too long.
    #[arg(long, default_value_t = 1800)]
    max_prompt_length: usize,
    /// Fixes the data order.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Do not train the token embeddings (nor a head tied to them).
    #[arg(long)]
    freeze_embeddings: bool,
    /// Print a line every N steps (metrics are kept for every step).
    #[arg(long, default_value_t = 1)]
    log_every: u64,
    /// Save a resumable checkpoint every N steps.
    #[arg(long, default_value_t = 50)]
    save_every: u64,
    /// Evaluate on the eval set every N steps (and at the start and end).
    #[arg(long)]
    eval_every: Option<u64>,
    /// CPU threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Tests only: abort after this many steps (after saving), as a crash would.
    #[arg(long, hide = true)]
    abort_after_steps: Option<u64>,
}

/// `--precision`, shared by the commands that run the model.
#[derive(Args)]
struct PrecisionArg {
    /// The matmuls' precision: f32; bf16 (operands rounded to bf16, sums in
    /// f32, on the CPU's bf16 units: AMX or AVX512-BF16; weights, optimizer,
    /// norms, softmax and the loss stay f32); auto: bf16 where the CPU has
    /// bf16 units. WRPO_BF16_ISA=amx|avx512bf16|emulated forces a kernel.
    #[arg(long = "precision", default_value = "f32", value_parser = Precision::parse)]
    precision: Precision,
}

#[derive(Args)]
struct SftArgs {
    #[command(flatten)]
    common: Common,
    /// `sft` dataset (from `wrpo-score sft-set`).
    #[arg(long)]
    data: PathBuf,
    /// Held-out `sft` dataset whose loss is logged as eval rows.
    #[arg(long)]
    eval_data: Option<PathBuf>,
    /// Peak learning rate (recipe: 7e-6).
    #[arg(long, default_value_t = 7e-6)]
    lr: f64,
    /// Loss on every token of each conversation (default: response tokens only).
    #[arg(long, conflicts_with = "packing")]
    loss_on_prompt: bool,
    /// The recipe's SFT: conversations packed into blocks of --max-length
    /// tokens, loss on every token, documents attending only to themselves.
    /// The default (one conversation per example, response tokens only)
    /// suits small data, where every example's answer counts.
    #[arg(long)]
    packing: bool,
    /// With --packing: let documents attend to the ones before them in a
    /// block, as plain concatenation does (the recipe's exact form).
    #[arg(long, requires = "packing")]
    cross_document_attention: bool,
}

#[derive(Args)]
struct RefArgs {
    /// The reference model (Target-SFT): an HF folder or a GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// `pairs` dataset.
    #[arg(long)]
    pairs: PathBuf,
    /// Output `pairs` dataset with the reference columns filled.
    #[arg(long)]
    out: PathBuf,
    /// Pairs per forward pass.
    #[arg(long, default_value_t = 4)]
    micro_batch: usize,
    #[arg(long, default_value_t = 2048)]
    max_length: usize,
    #[arg(long, default_value_t = 1800)]
    max_prompt_length: usize,
    /// The precision of the training runs these pairs feed (their first
    /// step checks the policy against these log-probs).
    #[command(flatten)]
    precision: PrecisionArg,
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
struct WrpoArgs {
    #[command(flatten)]
    common: Common,
    /// `pairs` dataset with reference log-probs (from `wrpo-train ref-logps`).
    #[arg(long)]
    pairs: PathBuf,
    /// Held-out pairs (with reference log-probs) whose metrics are logged as eval rows.
    #[arg(long)]
    eval_pairs: Option<PathBuf>,
    /// Train on N of the pairs, the same N for every run and seed (picked by a
    /// hash of the prompt id): an ablation on a subsample.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    subsample: Option<u64>,
    /// Peak learning rate (recipe: 3e-7 for an 8B target).
    #[arg(long, default_value_t = 3e-7)]
    lr: f64,
    #[arg(long, value_enum, default_value_t = LossKind::Wrpo)]
    loss: LossKind,
    /// The chosen response of the pairwise losses (dpo, simpo, ipo).
    #[arg(long, value_enum, default_value_t = Chosen::Target)]
    dpo_chosen: Chosen,
    /// [default: per loss, from its source: 0.01 for wrpo, dpo and
    /// sigmoid-mix (the WRPO recipe), 2.0 for the SimPO forms, 0.1 (tau) for
    /// the IPO forms]
    #[arg(long)]
    beta: Option<f64>,
    /// Fusion coefficient alpha_max; alpha = alpha_max * t / T at optimizer step t of T, as the official trainer.
    #[arg(long, default_value_t = 0.1)]
    alpha_max: f64,
    /// alpha = alpha_max at every step instead.
    #[arg(long)]
    static_alpha: bool,
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f64,
    /// SimPO's target reward margin gamma [default: 0.5 * beta, SimPO's gamma/beta ratio].
    #[arg(long)]
    simpo_gamma: Option<f64>,
}

fn main() {
    wrpo_llm::setup_process();
    let cli = Cli::parse();
    wrpo_common::exit_on_error("wrpo-train", cli.verbose, run_cli(cli));
}

fn encoder(model: &Model, tokenizer: wrpo_llm::Tokenizer, max_length: usize, max_prompt_length: usize, path: &Path) -> Result<Encoder> {
    let template = tokenizer.chat_template_for(model.config.family).with_context(|| format!("{}: chat template", path.display()))?;
    Encoder::new(tokenizer, template, Truncation { max_length, max_prompt_length })
}

/// Every number a training run takes, range-checked before any model loads.
fn check_settings(c: &Common, lr: f64) -> Result<()> {
    let s = &c.steps;
    let checks: [(&str, f64, bool, &str); 13] = [
        ("--lr", lr, lr > 0.0, "a positive number"),
        ("--epochs", s.epochs, s.epochs > 0.0, "a positive number"),
        ("--warmup-ratio", s.warmup_ratio, (0.0..1.0).contains(&s.warmup_ratio), "in [0, 1)"),
        ("--micro-batch", s.micro_batch as f64, s.micro_batch > 0, "at least 1"),
        ("--grad-accum", s.grad_accum as f64, s.grad_accum > 0, "at least 1"),
        ("--max-grad-norm", c.max_grad_norm, c.max_grad_norm >= 0.0, "0 (no clipping) or more"),
        ("--weight-decay", c.weight_decay, c.weight_decay >= 0.0, "0 or more"),
        ("--adam-beta1", c.adam_beta1, (0.0..1.0).contains(&c.adam_beta1), "in [0, 1)"),
        ("--adam-beta2", c.adam_beta2, (0.0..1.0).contains(&c.adam_beta2), "in [0, 1)"),
        ("--adam-eps", c.adam_eps, c.adam_eps > 0.0, "a positive number"),
        ("--save-every", c.save_every as f64, c.save_every > 0, "at least 1"),
        ("--max-length", c.max_length as f64, c.max_length > 1, "at least 2"),
        ("--threads", c.threads.unwrap_or(1) as f64, c.threads != Some(0), "at least 1"),
    ];
    in_range(&checks)
}

/// (flag, value, whether it is in range, the range in words): the first out
/// of range, or not finite, is refused. NaN fails every comparison, so it is too.
fn in_range(checks: &[(&str, f64, bool, &str)]) -> Result<()> {
    for (flag, value, ok, expected) in checks {
        if !ok || !value.is_finite() {
            bail!("{flag} must be {expected}, got {value}");
        }
    }
    Ok(())
}

/// The preference settings, range-checked before any model loads.
fn check_objective(o: &Objective, alpha_max: f64) -> Result<()> {
    let checks: [(&str, f64, bool, &str); 4] = [
        ("--beta", o.beta, o.beta > 0.0, "a positive number"),
        ("--alpha-max", alpha_max, (0.0..=1.0).contains(&alpha_max), "in [0, 1]"),
        ("--label-smoothing", o.label_smoothing, (0.0..0.5).contains(&o.label_smoothing), "in [0, 0.5)"),
        ("--simpo-gamma", o.gamma, o.gamma.is_finite(), "a finite number"),
    ];
    in_range(&checks)
}

fn train_config(c: &Common, lr: f64) -> TrainConfig {
    TrainConfig {
        lr,
        warmup_ratio: c.steps.warmup_ratio,
        schedule: c.steps.lr_schedule,
        epochs: c.steps.epochs,
        micro_batch: c.steps.micro_batch as usize,
        grad_accum: c.steps.grad_accum as usize,
        max_grad_norm: (c.max_grad_norm > 0.0).then_some(c.max_grad_norm),
        adamw: AdamWConfig {
            beta1: c.adam_beta1,
            beta2: c.adam_beta2,
            eps: c.adam_eps,
            weight_decay: c.weight_decay,
            decay_norms_and_biases: c.decay_norms_and_biases,
        },
        truncation: Truncation { max_length: c.max_length, max_prompt_length: c.max_prompt_length },
        seed: c.seed,
        freeze_embeddings: c.freeze_embeddings,
        precision: c.precision.precision,
    }
}

fn report_truncated(truncated: usize, total: usize, what: &str) {
    if truncated > 0 {
        eprintln!("{truncated} of {total} {what} were truncated by --max-length / --max-prompt-length");
    }
}

#[allow(clippy::too_many_arguments)]
fn train(
    c: &Common,
    lr: f64,
    stage: Stage,
    model: &Model,
    enc: &Encoder,
    examples: &Examples,
    eval: Option<&Examples>,
    inputs: Vec<PathBuf>,
) -> Result<()> {
    let config = train_config(c, lr);
    let template = enc.template().source.clone();
    eprintln!("training on {}; matmuls in {}", wrpo_llm::cpu_summary(), config.precision.describe());
    let metrics = run(RunInputs {
        model,
        tokenizer: enc.tokenizer(),
        chat_template: &template,
        examples,
        eval,
        stage: &stage,
        config: &config,
        out: &c.out,
        inputs,
        log_every: c.log_every,
        save_every: c.save_every,
        eval_every: c.eval_every,
        interrupted: wrpo_common::interrupt_flag("saving a checkpoint after this step", false)?,
        abort_after_steps: c.abort_after_steps,
    })?;
    let last = metrics.iter().rev().find(|m| !m.stage.starts_with("eval"));
    eprintln!(
        "trained {} steps -> {}/final; metrics in {}/metrics.parquet and metrics.png{}",
        last.map_or(0, |m| m.step + 1),
        c.out.display(),
        c.out.display(),
        last.map_or(String::new(), |m| format!("; last loss {:.5}", m.loss))
    );
    Ok(())
}

/// `wrpo-train schedule`: every optimizer step's learning rate and alpha, as CSV.
fn print_schedule(s: &Schedule) {
    println!("step,lr,alpha");
    for step in 0..s.total_steps {
        println!("{step},{:e},{}", s.lr(step), s.alpha(step));
    }
}

fn run_cli(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Schedule { examples, steps, lr, alpha_max, static_alpha } => print_schedule(&Schedule::new(&Settings {
            examples,
            micro_batch: steps.micro_batch,
            grad_accum: steps.grad_accum,
            epochs: steps.epochs,
            warmup_ratio: steps.warmup_ratio,
            lr,
            lr_schedule: steps.lr_schedule,
            alpha_max,
            static_alpha,
        })),
        Command::ImportMetrics(a) => {
            let plot = a.out.with_extension("png");
            // --out m.png would be written, then overwritten by its own plot.
            check_paths(&[("--out", &a.out), ("its plot (--out with .png)", &plot)], &[("STATE", &a.state)])?;
            let text = std::fs::read_to_string(&a.state).with_context(|| format!("cannot read {}", a.state.display()))?;
            let state = import::parse_state(&text, &a.state)?;
            let log = import::log_history(&state, &a.state)?;
            let stage = a.stage.clone().unwrap_or_else(|| import::default_stage(&log).to_string());
            import::check_stage(&stage)?;
            let metrics = import::metrics_from_log(&log, &stage, &a.state)?;
            if let Some(first) = metrics.iter().find(|m| !m.loss.is_finite()) {
                let n = metrics.iter().filter(|m| !m.loss.is_finite()).count();
                eprintln!(
                    "warning: {n} rows have a loss that is not a finite number, the first at {} step {}: the run diverged",
                    first.stage, first.step
                );
            }
            let prov = Provenance::new(PRODUCER, &serde_json::json!({"stage": stage}))?.with_input(&a.state)?;
            write_dataset(&a.out, &metrics, &prov)?;
            wrpo_trainer::plot::plot(&metrics, &plot)?;
            eprintln!("{} rows ({stage}) -> {} and {}", metrics.len(), a.out.display(), plot.display());
        }
        Command::Sft(a) => {
            wrpo_llm::set_threads(a.common.threads);
            let c = &a.common;
            check_settings(c, a.lr)?;
            let mut inputs = vec![("--data", a.data.as_path()), ("--model", c.model.as_path())];
            inputs.extend(a.eval_data.as_deref().map(|p| ("--eval-data", p)));
            check_paths(&[("--out", &c.out)], &inputs)?;
            let rows = read_dataset::<SftExample>(&a.data)?;
            let (model, tokenizer) = load_model(&c.model)?;
            let enc = encoder(&model, tokenizer, c.max_length, c.max_prompt_length, &c.model)?;
            let form = match (a.packing, a.loss_on_prompt) {
                (true, _) => SftForm::Packed { cross_document: a.cross_document_attention },
                (false, true) => SftForm::AllTokens,
                (false, false) => SftForm::Response,
            };
            let (examples, truncated) = encode_sft(&enc, &rows, form).with_context(|| a.data.display().to_string())?;
            report_truncated(truncated, examples.len(), "SFT examples");
            let eval = match &a.eval_data {
                Some(p) => Some(Examples::Sft(encode_sft(&enc, &read_dataset::<SftExample>(p)?, form).with_context(|| p.display().to_string())?.0)),
                None => None,
            };
            let mut inputs = vec![a.data.clone(), c.model.clone()];
            inputs.extend(a.eval_data.clone());
            train(c, a.lr, Stage::Sft { form }, &model, &enc, &Examples::Sft(examples), eval.as_ref(), inputs)?;
        }
        Command::RefLogps(a) => {
            wrpo_llm::set_threads(a.threads);
            if a.micro_batch == 0 {
                bail!("--micro-batch must be at least 1, got 0");
            }
            check_paths(&[("--out", &a.out)], &[("--pairs", &a.pairs), ("--model", &a.model)])?;
            let mut pairs = read_dataset::<Pair>(&a.pairs)?;
            let model = Model::load(&a.model, &LoadOptions::frozen(DType::F32))?;
            if model.has_quantized() {
                bail!("{}: the reference must be a dense model", a.model.display());
            }
            let tokenizer = wrpo_llm::Tokenizer::load(&a.model)?;
            let enc = encoder(&model, tokenizer, a.max_length, a.max_prompt_length, &a.model)?;
            let (examples, truncated) = encode_pairs(&enc, &pairs, None, &a.pairs)?;
            report_truncated(truncated, examples.len(), "pairs");
            let precision = a.precision.precision;
            use_precision(&model, precision)?;
            let record = ReferenceRecord::of(&a.model, &enc, precision)?;
            let logps = reference_logps(&model, &examples, a.micro_batch)?;
            for ((p, l), e) in pairs.iter_mut().zip(&logps).zip(&examples) {
                (p.ref_logp_y_ws, p.ref_logp_y_wt, p.ref_logp_y_l) = (Some(l[0]), Some(l[1]), Some(l[2]));
                let tokens = |s: &Option<Sequence>| s.as_ref().map(|s| s.response_len() as u32);
                (p.ref_tokens_y_ws, p.ref_tokens_y_wt, p.ref_tokens_y_l) =
                    (tokens(&e.seqs.y_ws), tokens(&e.seqs.y_wt), Some(e.seqs.y_l.response_len() as u32));
            }
            let config =
                serde_json::json!({"model": a.model, "max_length": a.max_length, "max_prompt_length": a.max_prompt_length, "reference": record});
            let prov = Provenance::new(PRODUCER, &config)?.with_input(&a.pairs)?.with_input(&a.model)?;
            write_dataset(&a.out, &pairs, &prov)?;
            eprintln!("reference log-probs of {} pairs -> {}", pairs.len(), a.out.display());
        }
        Command::Wrpo(a) => {
            wrpo_llm::set_threads(a.common.threads);
            let c = &a.common;
            let beta = a.beta.unwrap_or(a.loss.default_beta());
            let gamma = a.simpo_gamma.unwrap_or(SIMPO_GAMMA_BETA_RATIO * beta);
            let objective = Objective { loss: a.loss, chosen: a.dpo_chosen, beta, label_smoothing: a.label_smoothing, gamma };
            check_settings(c, a.lr)?;
            check_objective(&objective, a.alpha_max)?;
            let mut inputs = vec![("--pairs", a.pairs.as_path()), ("--model", c.model.as_path())];
            inputs.extend(a.eval_pairs.as_deref().map(|p| ("--eval-pairs", p)));
            check_paths(&[("--out", &c.out)], &inputs)?;
            let (model, tokenizer) = load_model(&c.model)?;
            let enc = encoder(&model, tokenizer, c.max_length, c.max_prompt_length, &c.model)?;
            // The pairs' reference log-probs must be this run's model's, tokenized as this run does.
            let reference = objective.needs_reference().then(|| ReferenceRecord::of(&c.model, &enc, c.precision.precision)).transpose()?;
            let read = |path: &Path| -> Result<Vec<Pair>> {
                let files = dataset_files(path)?.iter().map(|f| read_file::<Pair>(f)).collect::<Result<Vec<_>>>()?;
                check_keys(&files)?;
                for f in &files {
                    // Files without reference log-probs are refused by encode_pairs, naming the column.
                    let has_refs = f.rows.iter().any(|p| p.ref_logp_y_l.is_some());
                    if let Some(r) = reference.as_ref().filter(|_| has_refs) {
                        r.check(&f.path, f.provenance.config.get("reference"))?;
                    }
                }
                Ok(files.into_iter().flat_map(|f| f.rows).collect())
            };
            let mut pairs = read(&a.pairs)?;
            if let Some(n) = a.subsample {
                if n as usize > pairs.len() {
                    bail!("--subsample {n}: {} has only {} pairs", a.pairs.display(), pairs.len());
                }
                pairs = subsample(pairs, n as usize);
            }
            let (examples, truncated) = encode_pairs(&enc, &pairs, Some(&objective), &a.pairs)?;
            report_truncated(truncated, examples.len(), "pairs");
            let eval = match &a.eval_pairs {
                Some(p) => Some(Examples::Pairs(encode_pairs(&enc, &read(p)?, Some(&objective), p)?.0)),
                None => None,
            };
            let mut inputs = vec![a.pairs.clone(), c.model.clone()];
            inputs.extend(a.eval_pairs.clone());
            let stage = Stage::Preference { objective, alpha_max: a.alpha_max, static_alpha: a.static_alpha };
            train(c, a.lr, stage, &model, &enc, &Examples::Pairs(examples), eval.as_ref(), inputs)?;
        }
    }
    Ok(())
}
