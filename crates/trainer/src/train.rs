//! The training loop of `wrpo-train sft` and `wrpo-train wrpo`, top to
//! bottom: encode the examples, then for every optimizer step sum the
//! gradients of its micro-batches, clip, take an AdamW step, log a metrics
//! row, and every `save_every` steps save a checkpoint from which a rerun of
//! the same command continues to the same result.

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
use wrpo_common::{
    hash::uniform_draw, io::InputHash, metrics::StepMetrics, pairs::Pair, progress::Progress, sft::SftExample, write_dataset, Provenance,
};
use wrpo_llm::{bf16::Precision, LoadOptions, Model, Rng, Tokenizer};

use crate::{
    checkpoint,
    data::{Encoder, Sequence, Truncation},
    loss::{Chosen, Inputs, LossKind, Objective, PerY, Y},
    optim::{AdamW, AdamWConfig},
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
    /// The error for examples of the other kind than this stage trains on.
    fn wrong_examples(&self) -> anyhow::Error {
        match self {
            Stage::Sft { .. } => anyhow!("SFT trains on SFT examples, not on preference pairs"),
            Stage::Preference { .. } => anyhow!("preference training needs pairs, not SFT examples"),
        }
    }
}

/// Which tokens SFT trains on, and how conversations are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SftForm {
    /// A conversation per example, loss on its response tokens.
    Response,
    /// A conversation per example, loss on every token after the first.
    AllTokens,
    /// The recipe's: conversations packed into blocks of --max-length tokens,
    /// loss on every token ([`pack_sft`]).
    Packed { cross_document: bool },
}

/// An SFT example as token ids: a conversation (one sequence) or a packed
/// block: one sequence when its documents attend to each other, else a
/// sequence per document piece.
pub struct SftBlock {
    pub prompt_id: String,
    pub seqs: Vec<Sequence>,
}

/// A preference example as token ids, with the pairs file's reference
/// log-probs of (y_ws, y_wt, y_l) when it has them.
pub struct PairExample {
    pub prompt_id: String,
    pub seqs: PerY<Sequence>,
    pub reference: Option<[f64; 3]>,
}

/// A stage's examples, all of one kind.
pub enum Examples {
    Sft(Vec<SftBlock>),
    Pairs(Vec<PairExample>),
}

impl Examples {
    pub fn len(&self) -> usize {
        match self {
            Examples::Sft(e) => e.len(),
            Examples::Pairs(e) => e.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The examples at `indices`.
    pub fn batch(&self, indices: &[usize]) -> Batch<'_> {
        match self {
            Examples::Sft(e) => Batch::Sft(indices.iter().map(|&i| &e[i]).collect()),
            Examples::Pairs(e) => Batch::Pairs(indices.iter().map(|&i| &e[i]).collect()),
        }
    }

    /// Consecutive batches of `size` examples (the last may be smaller).
    pub fn batches(&self, size: usize) -> Vec<Batch<'_>> {
        let starts = (0..self.len()).step_by(size.max(1));
        starts.map(|start| self.batch(&(start..(start + size.max(1)).min(self.len())).collect::<Vec<_>>())).collect()
    }
}

/// A micro-batch.
pub enum Batch<'a> {
    Sft(Vec<&'a SftBlock>),
    Pairs(Vec<&'a PairExample>),
}

impl Batch<'_> {
    fn prompt_ids(&self) -> Vec<&str> {
        match self {
            Batch::Sft(b) => b.iter().map(|e| e.prompt_id.as_str()).collect(),
            Batch::Pairs(b) => b.iter().map(|e| e.prompt_id.as_str()).collect(),
        }
    }

    /// What a step's mean divides by: label tokens for SFT (the mean token
    /// loss), examples for preference losses.
    fn denominator(&self) -> f64 {
        match self {
            Batch::Sft(b) => b.iter().flat_map(|e| &e.seqs).map(Sequence::response_len).sum::<usize>() as f64,
            Batch::Pairs(b) => b.len() as f64,
        }
    }
}

/// Sequences as the model's (prompt, response) token ids.
fn split<'a>(seqs: &[&'a Sequence]) -> Vec<(&'a [u32], &'a [u32])> {
    seqs.iter().map(|s| s.ids.split_at(s.prompt_len)).collect()
}

fn seq_of(seqs: &PerY<Sequence>, y: Y) -> &Sequence {
    match y {
        Y::Ws => seqs.y_ws.as_ref().expect("encoded"),
        Y::Wt => seqs.y_wt.as_ref().expect("encoded"),
        Y::L => &seqs.y_l,
    }
}

/// An SFT example's prompt and response ids, untruncated.
fn sft_ids(enc: &Encoder, r: &SftExample) -> Result<(Vec<u32>, Vec<u32>)> {
    let ctx = || format!("SFT example {}", r.prompt_id);
    Ok((enc.prompt_ids(&r.messages).with_context(ctx)?, enc.response_ids(&r.messages, &r.response).with_context(ctx)?))
}

/// Encode SFT examples in `form`, counting the truncated ones (packing
/// truncates none: a conversation runs on into the next block).
pub fn encode_sft(enc: &Encoder, rows: &[SftExample], form: SftForm) -> Result<(Vec<SftBlock>, usize)> {
    if let SftForm::Packed { cross_document } = form {
        return Ok((pack_sft(enc, rows, enc.truncation.max_length, cross_document)?, 0));
    }
    let mut truncated = 0;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let (prompt, response) = sft_ids(enc, r)?;
        let mut seq = enc.truncation.sequences(&prompt, &[&response]).remove(0);
        truncated += usize::from(seq.truncated);
        if form == SftForm::AllTokens {
            // Every token after the first is a label.
            seq.prompt_len = 1;
        }
        out.push(SftBlock { prompt_id: r.prompt_id.clone(), seqs: vec![seq] });
    }
    Ok((out, truncated))
}

/// The recipe's packed SFT: every conversation's ids (prompt, then the
/// response through its end-of-turn token), one after another in dataset
/// order, cut into blocks of `block` tokens (a conversation may run on into
/// the next block; the last block may be shorter). Every token after the
/// first of a block is a label. With `cross_document` a block is one
/// sequence, as plain concatenation trains it (documents attend to the ones
/// before them in the block); without, each document's piece is a sequence
/// of its own, positions from 0, and its first token is no label.
pub fn pack_sft(enc: &Encoder, rows: &[SftExample], block: usize, cross_document: bool) -> Result<Vec<SftBlock>> {
    if block < 2 {
        bail!("a packed block needs at least 2 tokens, got {block}");
    }
    let mut stream: Vec<(u32, usize)> = Vec::new();
    for (doc, r) in rows.iter().enumerate() {
        let (prompt, response) = sft_ids(enc, r)?;
        stream.extend(prompt.into_iter().chain(response).map(|id| (id, doc)));
    }
    let sequence = |ids: Vec<u32>| Sequence { ids, prompt_len: 1, truncated: false };
    let mut out = Vec::new();
    for (k, chunk) in stream.chunks(block).enumerate() {
        let seqs = if cross_document {
            vec![sequence(chunk.iter().map(|t| t.0).collect())]
        } else {
            chunk.chunk_by(|a, b| a.1 == b.1).map(|piece| sequence(piece.iter().map(|t| t.0).collect())).collect()
        };
        // A one-token piece predicts nothing.
        let seqs: Vec<Sequence> = seqs.into_iter().filter(|s| s.ids.len() >= 2).collect();
        if !seqs.is_empty() {
            out.push(SftBlock { prompt_id: format!("block-{k}"), seqs });
        }
    }
    Ok(out)
}

/// The n pairs a study's runs share when they train on a subsample (an
/// ablation): those with the smallest draws keyed by prompt id alone, so
/// every run and training seed gets the same ones whatever the file's order
/// (which is by prompt id, grouping families); kept in the file's order.
pub fn subsample(rows: Vec<Pair>, n: usize) -> Vec<Pair> {
    let mut draws: Vec<(f64, usize)> = rows.iter().enumerate().map(|(i, p)| (uniform_draw(0, "subsample", &p.prompt_id), i)).collect();
    draws.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut keep = vec![false; rows.len()];
    for &(_, i) in draws.iter().take(n) {
        keep[i] = true;
    }
    rows.into_iter().zip(keep).filter_map(|(p, k)| k.then_some(p)).collect()
}

/// Encode pairs for `objective`; reference log-probs are required unless it is reference-free.
pub fn encode_pairs(enc: &Encoder, rows: &[Pair], objective: Option<&Objective>, file: &Path) -> Result<(Vec<PairExample>, usize)> {
    let needs_ref = objective.is_some_and(Objective::needs_reference);
    let mut truncated = 0;
    let mut out = Vec::with_capacity(rows.len());
    for (i, p) in rows.iter().enumerate() {
        let ctx = |y: &str| format!("{}: row {i} (prompt {}): {y}", file.display(), p.prompt_id);
        let prompt = enc.prompt_ids(&p.messages).with_context(|| ctx("prompt"))?;
        let ids = |y: &str, text: &str| enc.response_ids(&p.messages, text).with_context(|| ctx(y));
        let responses = [ids("y_ws", &p.y_ws)?, ids("y_wt", &p.y_wt)?, ids("y_l", &p.y_l)?];
        let [y_ws, y_wt, y_l]: [Sequence; 3] =
            enc.truncation.sequences(&prompt, &responses.each_ref().map(Vec::as_slice)).try_into().expect("three responses");
        let seqs = PerY { y_ws: Some(y_ws), y_wt: Some(y_wt), y_l };
        truncated += usize::from([Y::Ws, Y::Wt, Y::L].iter().any(|&y| seq_of(&seqs, y).truncated));
        if needs_ref {
            for (y, column, recorded) in [
                (Y::Ws, "ref_tokens_y_ws", p.ref_tokens_y_ws),
                (Y::Wt, "ref_tokens_y_wt", p.ref_tokens_y_wt),
                (Y::L, "ref_tokens_y_l", p.ref_tokens_y_l),
            ] {
                let tokens = seq_of(&seqs, y).response_len();
                if recorded.is_some_and(|n| n as usize != tokens) {
                    bail!(
                        "{}: column '{column}' says the reference log-prob summed {} tokens, this run's tokenization and truncation give {tokens}; {RERUN_REF}",
                        ctx(column),
                        recorded.unwrap_or_default()
                    );
                }
            }
        }
        let reference = match (p.ref_logp_y_ws, p.ref_logp_y_wt, p.ref_logp_y_l) {
            (Some(a), Some(b), Some(c)) if [a, b, c].iter().all(|v| v.is_finite()) => Some([a, b, c]),
            (a, b, c) if needs_ref => {
                let column = [("ref_logp_y_ws", a), ("ref_logp_y_wt", b), ("ref_logp_y_l", c)]
                    .into_iter()
                    .find(|(_, v)| !v.is_some_and(f64::is_finite))
                    .unwrap()
                    .0;
                bail!(
                    "{}: row {i} (prompt {}): column '{column}' is empty or not finite; run `wrpo-train ref-logps` first",
                    file.display(),
                    p.prompt_id
                );
            }
            _ => None,
        };
        out.push(PairExample { prompt_id: p.prompt_id.clone(), seqs, reference });
    }
    Ok((out, truncated))
}

/// What a mismatch between a pairs file's reference log-probs and this run asks for.
const RERUN_REF: &str = "run `wrpo-train ref-logps` again with this run's --model, --max-length and --max-prompt-length";

/// What fixes the reference log-probs of a pairs file: `ref-logps` records it
/// in the file's provenance (`reference`), `wrpo` refuses pairs whose record
/// differs from its own run, since every implicit reward would shift silently.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct ReferenceRecord {
    /// Content hash of the reference model, which must be the model
    /// preference training starts from (Target-SFT).
    pub model_sha256: String,
    /// [`Encoder::fingerprint`]: tokenizer, chat template and end-of-turn token.
    pub tokens_sha256: String,
    pub max_length: usize,
    pub max_prompt_length: usize,
    /// The matmuls' precision: a bf16 forward's log-probs differ from an
    /// f32 one's by more than the first step's check allows (files from
    /// before it was recorded were f32).
    #[serde(default)]
    pub precision: Precision,
}

impl ReferenceRecord {
    pub fn of(model: &Path, enc: &Encoder, precision: Precision) -> Result<Self> {
        Ok(ReferenceRecord {
            model_sha256: wrpo_common::hash::content_sha256(model)?,
            tokens_sha256: enc.fingerprint(),
            max_length: enc.truncation.max_length,
            max_prompt_length: enc.truncation.max_prompt_length,
            precision,
        })
    }

    /// Refuse a pairs file whose recorded reference (`recorded`, its
    /// provenance's `reference`) differs from this run's, naming the field.
    /// A file without one (written by another tool or an older version)
    /// cannot be checked here; the check at the first step still applies.
    pub fn check(&self, file: &Path, recorded: Option<&serde_json::Value>) -> Result<()> {
        let Some(recorded) = recorded.filter(|r| !r.is_null()) else {
            eprintln!("warning: {} records no reference model; its log-probs are checked at the first step only", file.display());
            return Ok(());
        };
        let r: ReferenceRecord =
            serde_json::from_value(recorded.clone()).with_context(|| format!("{}: its 'reference' record is not readable", file.display()))?;
        let differs = |what: String| anyhow!("{}: its reference log-probs were computed with {what}; {RERUN_REF}", file.display());
        if r.tokens_sha256 != self.tokens_sha256 {
            return Err(differs("another tokenizer or chat template than this run's model has".into()));
        }
        if (r.max_length, r.max_prompt_length) != (self.max_length, self.max_prompt_length) {
            return Err(differs(format!(
                "--max-length {} --max-prompt-length {}, this run uses {} and {}",
                r.max_length, r.max_prompt_length, self.max_length, self.max_prompt_length
            )));
        }
        if r.precision != self.precision {
            return Err(differs(format!("{} matmuls, this run uses {}", r.precision.name(), self.precision.name())));
        }
        if r.model_sha256 != self.model_sha256 {
            return Err(differs(format!(
                "a reference model (sha256 {}) other than the model this run starts from (sha256 {}); the reference is that model (Target-SFT)",
                &r.model_sha256[..12.min(r.model_sha256.len())],
                &self.model_sha256[..12]
            )));
        }
        Ok(())
    }
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

/// Sums of a step's (or an evaluation's) metrics over its examples.
#[derive(Default)]
pub struct Sums {
    examples: f64,
    loss: f64,
    tokens: usize,
    /// Null for SFT rows.
    preference: Option<PreferenceSums>,
}

/// Sums over preference examples of what the metrics report, by TRL's names.
#[derive(Default)]
struct PreferenceSums {
    /// The objective's chosen reward: alpha-weighted for the WRPO forms.
    rewards_chosen: f64,
    rewards_source_chosen: f64,
    rewards_target_chosen: f64,
    rewards_rejected: f64,
    accuracies: f64,
    source_accuracies: f64,
    pivot_accuracies: f64,
    logps_chosen: f64,
    logps_source_chosen: f64,
    logps_target_chosen: f64,
    logps_rejected: f64,
    /// Whether the objective reads y_ws, and y_wt.
    has_source: bool,
    has_target: bool,
}

impl Sums {
    /// The mean loss: per example for preference losses, per label token for SFT.
    pub fn mean_loss(&self) -> f64 {
        self.loss / self.examples.max(1.0)
    }

    fn row(&self, stage: &str, step: u64, epoch: f64, lr: f64, alpha: Option<f64>, grad_norm: Option<f64>, secs: f64) -> StepMetrics {
        let n = self.examples.max(1.0);
        let p = self.preference.as_ref();
        let mean = |f: fn(&PreferenceSums) -> f64| p.map(|p| f(p) / n);
        let source = |f: fn(&PreferenceSums) -> f64| p.filter(|p| p.has_source).map(|p| f(p) / n);
        let target = |f: fn(&PreferenceSums) -> f64| p.filter(|p| p.has_target).map(|p| f(p) / n);
        StepMetrics {
            stage: stage.to_string(),
            step,
            epoch,
            loss: self.mean_loss(),
            lr,
            alpha,
            grad_norm,
            tokens_per_second: self.tokens as f64 / secs.max(1e-9),
            rewards_chosen: mean(|p| p.rewards_chosen),
            rewards_source_chosen: source(|p| p.rewards_source_chosen),
            rewards_target_chosen: target(|p| p.rewards_target_chosen),
            rewards_rejected: mean(|p| p.rewards_rejected),
            rewards_accuracies: mean(|p| p.accuracies),
            rewards_source_accuracies: source(|p| p.source_accuracies),
            rewards_pivot_accuracies: target(|p| p.pivot_accuracies),
            rewards_margins: mean(|p| p.rewards_chosen - p.rewards_rejected),
            logps_chosen: mean(|p| p.logps_chosen),
            logps_source_chosen: source(|p| p.logps_source_chosen),
            logps_target_chosen: target(|p| p.logps_target_chosen),
            logps_rejected: mean(|p| p.logps_rejected),
        }
    }
}

/// The trainer: a model, its examples and what to optimise.
pub struct Trainer<'a> {
    pub model: &'a Model,
    pub stage: &'a Stage,
    pub config: &'a TrainConfig,
}

impl Trainer<'_> {
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
        sums.loss += nll.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        sums.examples += tokens as f64;
        sums.tokens += tokens;
        Ok((nll / denominator)?)
    }

    /// The summed preference loss of the pairs: the responses the objective
    /// reads, by one forward over all of them.
    fn preference_loss(&self, objective: &Objective, batch: &[&PairExample], alpha: f64, denominator: f64, sums: &mut Sums) -> Result<Tensor> {
        let device = self.model.device();
        let ys = objective.responses();
        let seqs: Vec<&Sequence> = ys.iter().flat_map(|&y| batch.iter().map(move |e| seq_of(&e.seqs, y))).collect();
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
        self.add_metrics(objective, alpha, &inputs, &out, sums)?;
        sums.loss += loss_sum.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        sums.examples += n as f64;
        sums.tokens += counts.iter().sum::<usize>();
        Ok((loss_sum / denominator)?)
    }

    /// At the first step the policy is the reference, so policy minus
    /// reference log-probs must be ~0 (rounding of a differently packed
    /// forward aside): anything else means the pairs' reference log-probs
    /// came from another model, template or truncation.
    pub fn check_reference_at_start(&self, batch: &Batch) -> Result<()> {
        let (Stage::Preference { objective, .. }, Batch::Pairs(batch)) = (self.stage, batch) else { return Ok(()) };
        if !objective.needs_reference() {
            return Ok(());
        }
        let mut seqs = Vec::new();
        let mut refs = Vec::new();
        for y in objective.responses() {
            for e in batch {
                let Some(r) = e.reference else { continue };
                seqs.push(seq_of(&e.seqs, y));
                refs.push((e.prompt_id.as_str(), y, r[y.index()]));
            }
        }
        let policy = self.model.response_logprobs(&split(&seqs))?.detach().to_dtype(DType::F64)?.to_vec1::<f64>()?;
        for (logp, (prompt_id, y, reference)) in policy.iter().zip(refs) {
            if (logp - reference).abs() > 0.05 + 1e-4 * reference.abs() {
                bail!(
                    "at the first step the policy is the reference, but on prompt {prompt_id} log pi({y:?}) is {logp:.4} and the pairs' reference log-prob {reference:.4}: \
                     they were computed with another model, template or truncation; {RERUN_REF}"
                );
            }
        }
        Ok(())
    }

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

    fn add_metrics(&self, objective: &Objective, alpha: f64, x: &Inputs, out: &crate::loss::Output, sums: &mut Sums) -> Result<()> {
        let vals = |t: &Tensor| -> Result<Vec<f64>> { Ok(t.detach().to_dtype(DType::F64)?.to_vec1::<f64>()?) };
        let opt = |t: &Option<Tensor>| t.as_ref().map(vals).transpose();
        let (r_ws, r_wt, r_l) = (opt(&out.rewards.y_ws)?, opt(&out.rewards.y_wt)?, vals(&out.rewards.y_l)?);
        let (p_ws, p_wt, p_l) = (opt(&x.policy.y_ws)?, opt(&x.policy.y_wt)?, vals(&x.policy.y_l)?);
        // Weight of y_ws in "chosen": alpha for the WRPO forms, 1/2 for the mix, 0 or 1 for pairwise ones.
        let w = match objective.loss {
            LossKind::Dpo | LossKind::Simpo | LossKind::Ipo => f64::from(objective.chosen == Chosen::Source),
            LossKind::SigmoidMix => 0.5,
            _ => alpha,
        };
        let s = sums.preference.get_or_insert_with(PreferenceSums::default);
        s.has_source = r_ws.is_some();
        s.has_target = r_wt.is_some();
        // logps/chosen as the official trainer reports it: the plain mean of y_ws and y_wt.
        let w_logps = if p_ws.is_some() && p_wt.is_some() { 0.5 } else { w };
        let at = |v: &Option<Vec<f64>>, i: usize| v.as_ref().map_or(0.0, |v| v[i]);
        let beats = |v: &Option<Vec<f64>>, i: usize| v.as_ref().map_or(0.0, |v| f64::from(v[i] > r_l[i]));
        for i in 0..r_l.len() {
            let mix = |w: f64, a: &Option<Vec<f64>>, b: &Option<Vec<f64>>| {
                a.as_ref().map_or(0.0, |a| w * a[i]) + b.as_ref().map_or(0.0, |b| (1.0 - w) * b[i])
            };
            let chosen = mix(w, &r_ws, &r_wt);
            s.rewards_chosen += chosen;
            s.rewards_source_chosen += at(&r_ws, i);
            s.rewards_target_chosen += at(&r_wt, i);
            s.rewards_rejected += r_l[i];
            s.accuracies += f64::from(chosen > r_l[i]);
            s.source_accuracies += beats(&r_ws, i);
            s.pivot_accuracies += beats(&r_wt, i);
            s.logps_chosen += mix(w_logps, &p_ws, &p_wt);
            s.logps_source_chosen += at(&p_ws, i);
            s.logps_target_chosen += at(&p_wt, i);
            s.logps_rejected += p_l[i];
        }
        Ok(())
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
        let alpha = matches!(self.stage, Stage::Preference { objective, .. } if objective.uses_alpha()).then_some(alpha);
        Ok(sums.row(stage, step, 0.0, 0.0, alpha, None, started.elapsed().as_secs_f64()))
    }
}

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

/// Train, resuming from `out/checkpoint` when it exists; returns the metrics rows.
pub fn run(r: RunInputs) -> Result<Vec<StepMetrics>> {
    let RunInputs { model, config, stage, examples, out, .. } = r;
    let stage_name = match stage {
        Stage::Sft { .. } => "sft".to_string(),
        Stage::Preference { objective, .. } => serde_json::to_value(objective.loss)?.as_str().unwrap_or("wrpo").to_string(),
    };
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
    let hashes = r.inputs.iter().map(|p| wrpo_common::hash::content_sha256(p)).collect::<Result<Vec<_>>>()?;
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
    let alpha_of = |step: u64| matches!(stage, Stage::Preference { objective, .. } if objective.uses_alpha()).then(|| schedule.alpha(step));
    if state.step == 0 && state.metrics.is_empty() {
        if let Some(eval) = r.eval {
            state.metrics.push(trainer.evaluate(eval, alpha_of(0).unwrap_or(0.0), 0, &format!("eval_{stage_name}"))?);
        }
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
        if step == 0 {
            trainer.check_reference_at_start(&micro[0]).with_context(|| format!("step 0; {}", checkpoint::what_is_kept(out)))?;
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
        progress.add(1, sums.tokens as u64);
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
                state.metrics.push(trainer.evaluate(eval, alpha_of(state.step).unwrap_or(0.0), state.step, &format!("eval_{stage_name}"))?);
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
        let done = schedule.total_steps;
        state.metrics.push(trainer.evaluate(eval, alpha_of(done).unwrap_or(0.0), done, &format!("eval_{stage_name}"))?);
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

/// Load the model to train: an HF folder or a GGUF file (dequantized), f32.
pub fn load_model(path: &Path) -> Result<(Model, Tokenizer)> {
    let model = Model::load(path, &LoadOptions::trainable(DType::F32))?;
    if model.has_quantized() {
        bail!("{}: a model loaded for quantized inference cannot be trained", path.display());
    }
    Ok((model, Tokenizer::load(path)?))
}

/// Fill the reference log-probs of every pair with the frozen reference
/// model: the same forward and tokenization as training, computed once.
pub fn reference_logps(model: &Model, examples: &[PairExample], micro_batch: usize) -> Result<Vec<[f64; 3]>> {
    let mut out = Vec::with_capacity(examples.len());
    let mut progress = Progress::new(examples.len() as u64, "pairs");
    progress.set_model("ref-logps");
    for chunk in examples.chunks(micro_batch.max(1)) {
        let seqs: Vec<&Sequence> = [Y::Ws, Y::Wt, Y::L].into_iter().flat_map(|y| chunk.iter().map(move |e| seq_of(&e.seqs, y))).collect();
        let logps = model.response_logprobs(&split(&seqs))?;
        let v = logps.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let n = chunk.len();
        for (i, e) in chunk.iter().enumerate() {
            let row = [v[i], v[n + i], v[2 * n + i]];
            if row.iter().any(|x| !x.is_finite()) {
                bail!("prompt {}: a reference log-prob is not finite ({row:?})", e.prompt_id);
            }
            out.push(row);
        }
        progress.add(n as u64, seqs.iter().map(|s| s.response_len() as u64).sum());
    }
    progress.finish();
    Ok(out)
}
