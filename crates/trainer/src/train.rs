//! The training loop of `wrpo-train sft` and `wrpo-train wrpo`, top to
//! bottom: given the encoded examples (`data`), for every optimizer step sum
//! the gradients of its micro-batches, clip, take an AdamW step, log a
//! metrics row, and every `save_every` steps save a checkpoint from which a
//! rerun of the same command continues to the same result. Below the loop,
//! one step: each micro-batch's forward, its SFT or preference loss
//! (`loss`), and the backward.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Instant,
};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Tensor};
use serde::Serialize;
use wrpo_common::{io::InputHash, metrics::StepMetrics, progress::Progress, write_dataset, Provenance};
use wrpo_llm::{bf16::Precision, LoadOptions, Model, Rng, Tokenizer};

use crate::{
    checkpoint,
    data::{split, Batch, Examples, PairExample, Sequence, SftBlock, SftForm, Truncation},
    loss::{Inputs, Objective, PerY, Y},
    metrics::Sums,
    optim::{AdamW, AdamWConfig},
    reference,
    schedule::{LrSchedule, Schedule, Settings},
};

pub const PRODUCER: &str = concat!("wrpo-train ", env!("CARGO_PKG_VERSION"));

/// Everything that fixes the trained weights: a resumed run must use the same.
#[derive(Clone, Debug, Serialize)]
pub struct TrainConfig {
    pub lr: f64,
    pub warmup_ratio: f64,
    pub schedule: LrSchedule,
    pub epochs: f64,
    pub micro_batch: usize,
    pub grad_accum: usize,
    pub max_grad_norm: Option<f64>,
    pub adamw: AdamWConfig,
    pub truncation: Truncation,
    pub seed: u64,
    pub freeze_embeddings: bool,
    /// The matmuls' precision: the run's process is switched to it. Left out
    /// of run.json when f32, so that runs from before it resume.
    #[serde(skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

/// What is trained.
#[derive(Clone, Debug, Serialize)]
pub enum Stage {
    /// Next-token loss.
    Sft { form: SftForm },
    /// A preference objective, with alpha rising to alpha_max or fixed.
    Preference { objective: Objective, alpha_max: f64, static_alpha: bool },
}

impl Stage {
    /// Its rows' name in the metrics: sft, or the loss's (wrpo, dpo, ...).
    fn name(&self) -> Result<String> {
        Ok(match self {
            Stage::Sft { .. } => "sft".to_string(),
            Stage::Preference { objective, .. } => serde_json::to_value(objective.loss)?.as_str().unwrap_or("wrpo").to_string(),
        })
    }

    /// Does alpha enter the loss? Not for SFT, nor for the pairwise losses
    /// (their metrics' alpha is null).
    fn uses_alpha(&self) -> bool {
        matches!(self, Stage::Preference { objective, .. } if objective.uses_alpha())
    }

    /// The error for examples of the other kind than this stage trains on.
    fn wrong_examples(&self) -> anyhow::Error {
        match self {
            Stage::Sft { .. } => anyhow!("SFT trains on SFT examples, not on preference pairs"),
            Stage::Preference { .. } => anyhow!("preference training needs pairs, not SFT examples"),
        }
    }
}

/// What [`run`] trains, on what, and where it writes.
pub struct RunInputs<'a> {
    pub model: &'a Model,
    pub tokenizer: &'a Tokenizer,
    pub chat_template: &'a str,
    pub examples: &'a Examples,
    pub eval: Option<&'a Examples>,
    pub stage: &'a Stage,
    pub config: &'a TrainConfig,
    pub out: &'a Path,
    /// Input files, recorded in the metrics' provenance.
    pub inputs: Vec<PathBuf>,
    pub log_every: u64,
    pub save_every: u64,
    pub eval_every: Option<u64>,
    pub interrupted: Arc<AtomicBool>,
    /// Tests: abort the process, as a crash would, after this many steps.
    pub abort_after_steps: Option<u64>,
}

/// Train, resuming from `out/checkpoint` when it exists; returns the metrics rows.
pub fn run(r: RunInputs) -> Result<Vec<StepMetrics>> {
    let RunInputs { model, config, stage, examples, out, .. } = r;
    let stage_name = stage.name()?;
    if !matches!((stage, examples), (Stage::Sft { .. }, Examples::Sft(_)) | (Stage::Preference { .. }, Examples::Pairs(_))) {
        return Err(stage.wrong_examples());
    }
    let schedule = schedule_of(stage, config, examples.len());
    if schedule.total_steps == 0 {
        bail!("no training example");
    }
    let trainer = Trainer { model, stage, config };
    let params: Vec<_> = model.trainable().into_iter().filter(|p| !(config.freeze_embeddings && p.name == "model.embed_tokens.weight")).collect();
    use_precision(model, config.precision)?;
    let mut optimizer = AdamW::new(params, config.adamw.clone())?;
    // The inputs' content is part of the run: a rerun on changed data is refused, not resumed.
    let hashes = r.inputs.iter().map(|p| wrpo_common::io::content_sha256(p)).collect::<Result<Vec<_>>>()?;
    let run_config = serde_json::json!({"stage": stage, "train": config, "examples": examples.len(), "inputs": hashes});
    let mut state = checkpoint::prepare(out, &run_config)?;
    if let Some(done) = checkpoint::finished(out)? {
        eprintln!("{} already holds this finished run ({} steps); delete it to train again", out.display(), done.step);
        return Ok(done.metrics);
    }
    if let Some(resumed) = checkpoint::load(out, model, &mut optimizer)? {
        state = resumed;
        eprintln!("resuming from {} at step {}/{}", out.join("checkpoint").display(), state.step, schedule.total_steps);
    }
    // The metrics' alpha: null for SFT and for the losses that do not mix y_ws and y_wt.
    let alpha_of = |step: u64| stage.uses_alpha().then(|| schedule.alpha(step));
    let evaluate = |eval: &Examples, step: u64| trainer.evaluate(eval, alpha_of(step).unwrap_or(0.0), step, &format!("eval_{stage_name}"));
    if let Some(eval) = r.eval.filter(|_| state.step == 0 && state.metrics.is_empty()) {
        state.metrics.push(evaluate(eval, 0)?);
    }
    let per_epoch = examples.len().div_ceil(config.micro_batch);
    let mut progress = Progress::new(schedule.total_steps, "steps");
    progress.set_model(&stage_name);
    progress.add(state.step, 0);
    while state.step < schedule.total_steps {
        let step = state.step;
        let started = Instant::now();
        let (lr, alpha) = (schedule.lr(step), alpha_of(step));
        let micro: Vec<Batch> =
            schedule.micro_batches(step).map(|k| examples.batch(&micro_batch(examples.len(), config.micro_batch, config.seed, k as usize))).collect();
        if let (0, Stage::Preference { objective, .. }, Batch::Pairs(first)) = (step, stage, &micro[0]) {
            reference::check_at_start(model, objective, first).with_context(|| format!("step 0; {}", checkpoint::what_is_kept(out)))?;
        }
        let sums = trainer
            .step_gradients(&micro, alpha.unwrap_or(0.0), &mut optimizer)
            .with_context(|| format!("step {step}; {}", checkpoint::what_is_kept(out)))?;
        let grad_norm = optimizer.step(lr, config.max_grad_norm)?;
        if !grad_norm.is_finite() {
            let ids: Vec<&str> = micro.iter().flat_map(Batch::prompt_ids).collect();
            bail!("the gradient norm became {grad_norm} at step {step} on prompts {ids:?}; {}", checkpoint::what_is_kept(out));
        }
        let epoch = (schedule.micro_batches(step).end as f64 / per_epoch as f64).min(config.epochs);
        let row = sums.row(&stage_name, step, epoch, lr, alpha, Some(grad_norm), started.elapsed().as_secs_f64());
        progress.set_note(format!(", loss {:.4}{}", row.loss, alpha.map_or(String::new(), |a| format!(", alpha {a:.3}"))));
        progress.add(1, sums.tokens() as u64);
        if r.log_every > 0 && (step % r.log_every == 0 || step + 1 == schedule.total_steps) {
            progress.log(&format!(
                "step {step}: loss {:.5}, lr {lr:.3e}, grad norm {grad_norm:.4}{}",
                row.loss,
                row.rewards_accuracies.map_or(String::new(), |a| format!(", accuracy {a:.3}, margin {:.4}", row.rewards_margins.unwrap_or(0.0)))
            ));
        }
        state.metrics.push(row);
        state.step += 1;
        if let (Some(eval), Some(every)) = (r.eval, r.eval_every) {
            if state.step % every == 0 && state.step < schedule.total_steps {
                state.metrics.push(evaluate(eval, state.step)?);
            }
        }
        let interrupted = r.interrupted.load(Ordering::SeqCst);
        if state.step % r.save_every.max(1) == 0 || interrupted || r.abort_after_steps == Some(state.step) {
            checkpoint::save(out, model, &optimizer, &state)?;
        }
        if r.abort_after_steps == Some(state.step) {
            std::process::abort();
        }
        if interrupted {
            bail!("interrupted at step {}; the checkpoint is saved: run the same command again to continue", state.step);
        }
    }
    progress.finish();
    if let Some(eval) = r.eval {
        state.metrics.push(evaluate(eval, schedule.total_steps)?);
    }
    // The final checkpoint, then the metrics and their plot.
    wrpo_llm::save_hf_checkpoint(model, r.tokenizer, Some(r.chat_template), &out.join("final"))?;
    // The inputs were hashed once, at the start.
    let mut prov = Provenance::new(PRODUCER, &run_config)?;
    prov.inputs = r.inputs.iter().zip(hashes).map(|(p, sha256)| InputHash { path: p.display().to_string(), sha256 }).collect();
    write_dataset(&out.join("metrics.parquet"), &state.metrics, &prov)?;
    crate::plot::plot(&state.metrics, &out.join("metrics.png"))?;
    checkpoint::finish(out, &state)?;
    Ok(state.metrics)
}

/// The run's learning rate and alpha at every step, over its `examples`.
pub fn schedule_of(stage: &Stage, config: &TrainConfig, examples: usize) -> Schedule {
    let (alpha_max, static_alpha) = match stage {
        Stage::Preference { alpha_max, static_alpha, .. } => (*alpha_max, *static_alpha),
        Stage::Sft { .. } => (0.0, false),
    };
    Schedule::new(&Settings {
        examples: examples as u64,
        micro_batch: config.micro_batch as u64,
        grad_accum: config.grad_accum as u64,
        epochs: config.epochs,
        warmup_ratio: config.warmup_ratio,
        lr: config.lr,
        lr_schedule: config.schedule,
        alpha_max,
        static_alpha,
    })
}

/// The example order of an epoch: a permutation fixed by (seed, epoch).
fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    for i in (1..n).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    order
}

/// Examples of global micro-batch `k`.
fn micro_batch(n: usize, micro: usize, seed: u64, k: usize) -> Vec<usize> {
    let per_epoch = n.div_ceil(micro);
    let order = epoch_order(n, seed, k / per_epoch);
    let start = (k % per_epoch) * micro;
    order[start..(start + micro).min(n)].to_vec()
}

/// The trainer: a model, its examples and what to optimise.
pub struct Trainer<'a> {
    pub model: &'a Model,
    pub stage: &'a Stage,
    pub config: &'a TrainConfig,
}

impl Trainer<'_> {
    /// The forward and backward passes of one optimizer step: each
    /// micro-batch's loss, scaled so that their gradients sum to the
    /// gradient of the step's mean loss, added into `optimizer`'s buffers.
    /// Returns the step's metric sums.
    pub fn step_gradients(&self, micro: &[Batch], alpha: f64, optimizer: &mut AdamW) -> Result<Sums> {
        let denominator = micro.iter().map(Batch::denominator).sum();
        let mut sums = Sums::default();
        for batch in micro {
            let loss = self.micro_loss(batch, alpha, denominator, &mut sums)?;
            if !loss.to_dtype(DType::F64)?.to_scalar::<f64>()?.is_finite() {
                bail!("the loss became {loss} on prompts {:?}", batch.prompt_ids());
            }
            optimizer.accumulate(&loss.backward()?)?;
        }
        Ok(sums)
    }

    /// The mean loss of `batch` (per example for preference losses, per
    /// label token for SFT), as one optimizer step over it computes it.
    pub fn batch_loss(&self, batch: &Batch, alpha: f64) -> Result<Tensor> {
        self.micro_loss(batch, alpha, batch.denominator(), &mut Sums::default())
    }

    /// Metrics of `examples` without updating (micro-batches of the same size).
    pub fn evaluate(&self, examples: &Examples, alpha: f64, step: u64, stage: &str) -> Result<StepMetrics> {
        let mut sums = Sums::default();
        let started = Instant::now();
        let batches = examples.batches(self.config.micro_batch);
        let denominator = batches.iter().map(Batch::denominator).sum();
        for batch in &batches {
            self.micro_loss(batch, alpha, denominator, &mut sums)?;
        }
        let alpha = self.stage.uses_alpha().then_some(alpha);
        Ok(sums.row(stage, step, 0.0, 0.0, alpha, None, started.elapsed().as_secs_f64()))
    }

    /// Loss of a micro-batch, scaled by `1 / denominator` (examples or
    /// tokens of the whole optimizer step, so accumulation gives the step's
    /// mean), and its metrics added to `sums`.
    fn micro_loss(&self, batch: &Batch, alpha: f64, denominator: f64, sums: &mut Sums) -> Result<Tensor> {
        match (self.stage, batch) {
            (Stage::Sft { .. }, Batch::Sft(b)) => self.sft_loss(b, denominator, sums),
            (Stage::Preference { objective, .. }, Batch::Pairs(b)) => self.preference_loss(objective, b, alpha, denominator, sums),
            _ => Err(self.stage.wrong_examples()),
        }
    }

    /// The summed next-token loss of the blocks' label tokens.
    fn sft_loss(&self, batch: &[&SftBlock], denominator: f64, sums: &mut Sums) -> Result<Tensor> {
        let seqs: Vec<&Sequence> = batch.iter().flat_map(|e| &e.seqs).collect();
        let logps = self.model.response_logprobs(&split(&seqs))?;
        let nll = logps.sum_all()?.neg()?;
        let tokens: usize = seqs.iter().map(|s| s.response_len()).sum();
        sums.add(nll.to_dtype(DType::F64)?.to_scalar::<f64>()?, tokens as f64, tokens);
        Ok((nll / denominator)?)
    }

    /// The summed preference loss of the pairs: the responses the objective
    /// reads, by one forward over all of them.
    fn preference_loss(&self, objective: &Objective, batch: &[&PairExample], alpha: f64, denominator: f64, sums: &mut Sums) -> Result<Tensor> {
        let device = self.model.device();
        let ys = objective.responses();
        let seqs: Vec<&Sequence> = ys.iter().flat_map(|&y| batch.iter().map(move |e| e.seq(y))).collect();
        let logps = self.model.response_logprobs(&split(&seqs))?;
        let counts: Vec<usize> = seqs.iter().map(|s| s.response_len()).collect();
        let n = batch.len();
        let part = |k: usize| logps.narrow(0, k * n, n);
        let lengths_of =
            |k: usize| Tensor::from_vec(counts[k * n..(k + 1) * n].iter().map(|&c| c as f32).collect(), n, device)?.to_dtype(logps.dtype());
        let refs_of = |y: Y| -> Result<Tensor> {
            let values = batch
                .iter()
                .map(|e| e.reference.map(|r| r[y.index()] as f32).ok_or_else(|| anyhow!("prompt {}: no reference log-probs", e.prompt_id)))
                .collect::<Result<Vec<f32>>>()?;
            Ok(Tensor::from_vec(values, n, device)?.to_dtype(logps.dtype())?)
        };
        let k_of = |y: Y| ys.iter().position(|&v| v == y);
        let per_y = |f: &dyn Fn(usize) -> candle_core::Result<Tensor>| -> Result<PerY<Tensor>> {
            Ok(PerY { y_ws: k_of(Y::Ws).map(f).transpose()?, y_wt: k_of(Y::Wt).map(f).transpose()?, y_l: f(k_of(Y::L).expect("y_l always"))? })
        };
        let reference = if objective.needs_reference() {
            Some(PerY {
                y_ws: k_of(Y::Ws).map(|_| refs_of(Y::Ws)).transpose()?,
                y_wt: k_of(Y::Wt).map(|_| refs_of(Y::Wt)).transpose()?,
                y_l: refs_of(Y::L)?,
            })
        } else {
            None
        };
        let inputs = Inputs { policy: per_y(&part)?, reference, lengths: per_y(&lengths_of)? };
        let out = objective.forward(&inputs, alpha)?;
        let loss_sum = out.losses.sum_all()?;
        sums.add_preference(objective, alpha, &inputs, &out)?;
        sums.add(loss_sum.to_dtype(DType::F64)?.to_scalar::<f64>()?, n as f64, counts.iter().sum());
        Ok((loss_sum / denominator)?)
    }
}

/// Load the model to train: an HF folder or a GGUF file (dequantized), f32.
pub fn load_model(path: &Path) -> Result<(Model, Tokenizer)> {
    let model = Model::load(path, &LoadOptions::trainable(DType::F32))?;
    if model.has_quantized() {
        bail!("{}: a model loaded for quantized inference cannot be trained", path.display());
    }
    Ok((model, Tokenizer::load(path)?))
}

/// Switch the process to `precision` for `model`: in bf16, every matrix of
/// the model is rounded to bf16 first, in training (the f32 master weights'
/// start) as in `ref-logps`, so that the reference is the policy at step 0. It changes nothing the bf16 matmuls read, only what an
/// embedding lookup reads, and it takes the weights off the rounding ties. A dequantized GGUF model puts many weights exactly
/// halfway between two bf16 numbers (8.1% of SmolLM2-135M Q4_1's, its
/// 4-bit grid being coarser than bf16's); from a tie, every update, however
/// small, moves what the forward reads by half a bf16 step in the update's
/// direction, 100 times a 1e-6 step. PyTorch's autocast does that silently:
/// on `make bench-train`'s step its loss fell from 8.7 to 0.6 in one step at
/// lr 1e-6, f32's to 8.2. A resumed run's weights are the checkpoint's.
pub fn use_precision(model: &Model, precision: Precision) -> Result<()> {
    precision.apply().map_err(anyhow::Error::msg)?;
    if precision == Precision::Bf16 {
        round_matrices_to_bf16(model)?;
    }
    Ok(())
}

/// Every matrix of `model` rounded to bf16 (see [`use_precision`]).
pub fn round_matrices_to_bf16(model: &Model) -> Result<()> {
    let (mut ties, mut weights) = (0, 0);
    for (_, var) in model.vars().into_iter().filter(|(_, v)| v.rank() == 2) {
        ties += wrpo_llm::bf16::round_var(var)?;
        weights += var.elem_count();
    }
    eprintln!(
        "bf16: the model's matrices are rounded to bf16, as the matmuls read them ({:.2}% of their weights sat on a rounding tie)",
        100.0 * ties as f64 / weights.max(1) as f64
    );
    Ok(())
}
