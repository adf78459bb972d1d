//! What every training run shares: its flags (`Common`, `Steps`,
//! `PrecisionArg`), their range checks, and running it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use wrpo_common::io::check_paths;
use wrpo_llm::{bf16::Precision, Model};
use wrpo_trainer::{
    data::{Encoder, Examples, Truncation},
    optim::AdamWConfig,
    schedule::LrSchedule,
    train::{load_model, run, RunInputs, Stage, TrainConfig},
};

#[derive(Args)]
pub struct Steps {
    /// Examples per forward/backward pass.
    #[arg(long, default_value_t = 1)]
    pub micro_batch: u64,
    /// Micro-batches per optimizer step (global batch = micro_batch * grad_accum; recipe: 128).
    #[arg(long, default_value_t = 128)]
    pub grad_accum: u64,
    /// Passes over the training examples (a fraction runs part of one).
    #[arg(long, default_value_t = 1.0)]
    pub epochs: f64,
    /// Fraction of the steps spent warming the learning rate up.
    #[arg(long, default_value_t = 0.1)]
    pub warmup_ratio: f64,
    /// The learning rate's decay after warm-up.
    #[arg(long, value_enum, default_value_t = LrSchedule::Cosine)]
    pub lr_schedule: LrSchedule,
}

#[derive(Args)]
pub struct Common {
    /// The model to train: an HF folder or a GGUF file (dequantized to f32).
    #[arg(long)]
    pub model: PathBuf,
    /// Output folder: final/ (HF checkpoint), metrics.parquet, metrics.png, checkpoint/.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub steps: Steps,
    #[command(flatten)]
    pub precision: PrecisionArg,
    /// Gradient clipping by global norm (0 = none).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// AdamW's decoupled weight decay (torch.optim.AdamW's weight_decay).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Apply weight decay to norms and biases too.
    #[arg(long)]
    pub decay_norms_and_biases: bool,
    /// AdamW's first-moment decay.
    #[arg(long, default_value_t = 0.9)]
    adam_beta1: f64,
    /// AdamW's second-moment decay.
    #[arg(long, default_value_t = 0.999)]
    adam_beta2: f64,
    /// AdamW's denominator term.
    #[arg(long, default_value = "1e-8")]
    pub adam_eps: f64,
    /// Prompt + longest response tokens at most; beyond, the prompt is cut to --max-prompt-length, then every
    /// response to --max-length minus --max-prompt-length (the official trainer's rule).
    #[arg(long, default_value_t = 2048)]
    pub max_length: usize,
    /// Prompt tokens kept (its end) when an example is too long.
    #[arg(long, default_value_t = 1800)]
    pub max_prompt_length: usize,
    /// Fixes the data order.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Do not train the token embeddings (nor a head tied to them).
    #[arg(long)]
    pub freeze_embeddings: bool,
    /// Print a line every N steps (metrics are kept for every step).
    #[arg(long, default_value_t = 1)]
    pub log_every: u64,
    /// Save a resumable checkpoint every N steps.
    #[arg(long, default_value_t = 50)]
    pub save_every: u64,
    /// Evaluate on the eval set every N steps (and at the start and end).
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// CPU threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Tests only: abort after this many steps (after saving), as a crash would.
    #[arg(long, hide = true)]
    pub abort_after_steps: Option<u64>,
}

/// `--precision` of the training commands.
#[derive(Args)]
pub struct PrecisionArg {
    /// The matmuls' precision: f32; bf16 (operands rounded to bf16, sums in
    /// f32, on the CPU's bf16 units: AMX or AVX512-BF16; weights, optimizer,
    /// norms, softmax and the loss stay f32); auto: bf16 where the CPU has
    /// bf16 units. WRPO_BF16_ISA=amx|avx512bf16|emulated forces a kernel.
    #[arg(long = "precision", default_value = "f32", value_parser = Precision::parse)]
    pub precision: Precision,
}

pub fn encoder(model: &Model, tokenizer: wrpo_llm::Tokenizer, max_length: usize, max_prompt_length: usize, path: &Path) -> Result<Encoder> {
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
pub(super) fn in_range(checks: &[(&str, f64, bool, &str)]) -> Result<()> {
    for (flag, value, ok, expected) in checks {
        if !ok || !value.is_finite() {
            bail!("{flag} must be {expected}, got {value}");
        }
    }
    Ok(())
}

pub fn train_config(c: &Common, lr: f64) -> TrainConfig {
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

pub fn report_truncated(truncated: usize, total: usize, what: &str) {
    if truncated > 0 {
        eprintln!("{truncated} of {total} {what} were truncated by --max-length / --max-prompt-length");
    }
}

impl Common {
    /// The run's numbers range-checked and its paths refused where they
    /// clash, before any model loads: `data` (the training set's flag and
    /// path), the model, the held-out `eval` set if given, the output folder.
    pub fn check(&self, lr: f64, data: (&str, &Path), eval: Option<(&str, &Path)>) -> Result<()> {
        check_settings(self, lr)?;
        let mut inputs = vec![data, ("--model", self.model.as_path())];
        inputs.extend(eval);
        check_paths(&[("--out", &self.out)], &inputs)
    }

    /// The model to train and its encoder, truncating as this run does.
    pub fn load(&self) -> Result<(Model, Encoder)> {
        let (model, tokenizer) = load_model(&self.model)?;
        let enc = encoder(&model, tokenizer, self.max_length, self.max_prompt_length, &self.model)?;
        Ok((model, enc))
    }

    /// Train `stage` on `examples` and the file they came from (and on
    /// `eval`'s held-out examples and file, if any): the files and the model
    /// are the run's recorded inputs.
    pub fn train(
        &self,
        lr: f64,
        stage: Stage,
        model: &Model,
        enc: &Encoder,
        examples: (&Examples, &Path),
        eval: Option<(&Examples, &Path)>,
    ) -> Result<()> {
        let mut inputs = vec![examples.1.to_path_buf(), self.model.clone()];
        inputs.extend(eval.map(|(_, path)| path.to_path_buf()));
        let config = train_config(self, lr);
        let template = enc.template().source.clone();
        eprintln!("training on {}; matmuls in {}", wrpo_llm::cpu_summary(), config.precision.describe());
        let metrics = run(RunInputs {
            model,
            tokenizer: enc.tokenizer(),
            chat_template: &template,
            examples: examples.0,
            eval: eval.map(|(e, _)| e),
            stage: &stage,
            config: &config,
            out: &self.out,
            inputs,
            log_every: self.log_every,
            save_every: self.save_every,
            eval_every: self.eval_every,
            interrupted: wrpo_common::interrupt_flag("saving a checkpoint after this step", false)?,
            abort_after_steps: self.abort_after_steps,
        })?;
        let last = metrics.iter().rev().find(|m| !m.stage.starts_with("eval"));
        eprintln!(
            "trained {} steps -> {}/final; metrics in {}/metrics.parquet and metrics.png{}",
            last.map_or(0, |m| m.step + 1),
            self.out.display(),
            self.out.display(),
            last.map_or(String::new(), |m| format!("; last loss {:.5}", m.loss))
        );
        Ok(())
    }
}
