//! The evaluation datasets `wrpo-score report` and `dose` write: per model
//! (`eval_report`), per prompt, paired comparisons, the judge's verdicts and
//! tallies, and the dose-response's points and slopes.

use arrow::datatypes::{DataType, FieldRef};
use serde::{Deserialize, Serialize};

use crate::dataset::{field, opt_utf8, required, Dataset};

/// One model's row of the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelReport {
    pub model: String,
    pub prompts: u32,
    pub samples: u32,
    pub reward_mean: f64,
    pub reward_low: f64,
    pub reward_high: f64,
    /// Against the baseline; null for the baseline itself.
    pub win_rate: Option<f64>,
    pub win_low: Option<f64>,
    pub win_high: Option<f64>,
    /// Numeric answers equal to the reference's number, over the prompts that have one.
    pub verifier_accuracy: Option<f64>,
    pub verifier_prompts: u32,
    pub rouge_l: f64,
}

impl Dataset for ModelReport {
    const NAME: &'static str = "eval_report";
    const VERSION: u32 = 1;
    fn fields() -> Vec<FieldRef> {
        vec![
            field("model", DataType::Utf8, false),
            field("prompts", DataType::UInt32, false),
            field("samples", DataType::UInt32, false),
            field("reward_mean", DataType::Float64, false),
            field("reward_low", DataType::Float64, false),
            field("reward_high", DataType::Float64, false),
            field("win_rate", DataType::Float64, true),
            field("win_low", DataType::Float64, true),
            field("win_high", DataType::Float64, true),
            field("verifier_accuracy", DataType::Float64, true),
            field("verifier_prompts", DataType::UInt32, false),
            field("rouge_l", DataType::Float64, false),
        ]
    }
}

/// `eval_prompt_scores`: one row per (model, prompt) of `wrpo-score
/// report`, the per-prompt means every summary and paired comparison of the
/// report is computed from, so DuckDB can redo any of them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromptScore {
    /// A model alias, or a pooled model: NAME for the aliases NAME@SEED.
    pub model: String,
    pub prompt_id: String,
    pub samples: u32,
    /// Training seeds pooled into this row (1 for a single model).
    pub seeds: u32,
    /// Mean reward of the prompt's samples (pooled: the mean over seeds).
    pub reward_mean: f64,
    /// Share of samples whose last number equals the reference's, for prompts whose reference is a number.
    pub numeric_accuracy: Option<f64>,
    /// Mean ROUGE-L F1 against the reference, for prompts with one.
    pub rouge_l: Option<f64>,
}

impl Dataset for PromptScore {
    const NAME: &'static str = "eval_prompt_scores";
    const VERSION: u32 = 1;
    fn fields() -> Vec<FieldRef> {
        vec![
            field("model", DataType::Utf8, false),
            field("prompt_id", DataType::Utf8, false),
            field("samples", DataType::UInt32, false),
            field("seeds", DataType::UInt32, false),
            field("reward_mean", DataType::Float64, false),
            field("numeric_accuracy", DataType::Float64, true),
            field("rouge_l", DataType::Float64, true),
        ]
    }
}

/// `eval_paired`: `model` against `against` on the prompts both answered,
/// per-prompt differences of one measure: their mean with a 95% paired
/// bootstrap interval, the paired win rate with its interval, and a
/// two-sided sign-flip permutation p-value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairedComparison {
    pub model: String,
    pub against: String,
    /// reward, numeric_accuracy or rouge_l.
    pub measure: String,
    pub prompts: u32,
    pub mean_diff: f64,
    pub diff_low: f64,
    pub diff_high: f64,
    /// Per prompt 1 if `model` is higher, 1/2 on a tie, 0 below.
    pub win_rate: f64,
    pub win_low: f64,
    pub win_high: f64,
    pub p_value: f64,
}

impl Dataset for PairedComparison {
    const NAME: &'static str = "eval_paired";
    const VERSION: u32 = 1;
    fn fields() -> Vec<FieldRef> {
        [
            required(&["model", "against", "measure"], DataType::Utf8),
            required(&["prompts"], DataType::UInt32),
            required(&["mean_diff", "diff_low", "diff_high", "win_rate", "win_low", "win_high", "p_value"], DataType::Float64),
        ]
        .concat()
    }
}

/// `eval_judgements`: one verdict of `wrpo-score report --judge`: the judge
/// shown `model`'s and `baseline`'s answers (sample `sample_index` of each)
/// to a prompt, in one order. Kept so a rerun asks only what is missing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    pub prompt_id: String,
    pub model: String,
    pub baseline: String,
    pub sample_index: u32,
    /// Which answer the judge saw first: 'model' or 'baseline'.
    pub shown_first: String,
    /// 'model', 'baseline', 'tie', or 'unreadable' (no verdict after the retries).
    pub verdict: String,
    /// What the judge wrote (for 'unreadable', why it could not be read).
    pub judgement: String,
    /// Characters of the model's answer minus the baseline's.
    pub length_diff: i64,
    /// What the verdict is about: SHA-256 of the prompt id, its reference and
    /// the two answers, so that a rerun reuses exactly the verdicts whose
    /// answers are unchanged, whatever the paths or the other models (null in
    /// files from before version 2: those verdicts are asked again).
    pub answers_sha256: Option<String>,
}

impl Dataset for Judgement {
    const NAME: &'static str = "eval_judgements";
    const VERSION: u32 = 2;
    const KEY: &'static str = "(prompt_id, model, baseline, sample_index, shown_first)";
    fn key(&self) -> Option<String> {
        Some(format!("({}, {}, {}, {}, {})", self.prompt_id, self.model, self.baseline, self.sample_index, self.shown_first))
    }
    fn fields() -> Vec<FieldRef> {
        [
            required(&["prompt_id", "model", "baseline"], DataType::Utf8),
            required(&["sample_index"], DataType::UInt32),
            required(&["shown_first", "verdict", "judgement"], DataType::Utf8),
            required(&["length_diff"], DataType::Int64),
            vec![opt_utf8("answers_sha256")],
        ]
        .concat()
    }
    fn check(&self) -> Result<(), String> {
        match (self.shown_first.as_str(), self.verdict.as_str()) {
            ("model" | "baseline", "model" | "baseline" | "tie" | "unreadable") => Ok(()),
            (first, verdict) => Err(format!("shown_first '{first}' / verdict '{verdict}': expected model|baseline / model|baseline|tie|unreadable")),
        }
    }
}

/// `eval_judge`: `model` against `baseline` by an LLM judge, per prompt
/// whose verdicts in both orders could be read: a win (1) or a loss (0) when
/// both orders agree, else a tie (1/2), MT-Bench's rule; the win rate with a
/// 95% bootstrap interval, and the length-adjusted win rate `lc_win_rate` (a
/// two-parameter logistic model of the outcome on the standardised length
/// difference, read at zero difference: closest to AlpacaEval's
/// `length_controlled_minimal` without its tanh, not AlpacaEval 2's
/// `length_controlled_v1`, which also models each prompt's difficulty).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JudgeComparison {
    pub model: String,
    pub baseline: String,
    pub judge: String,
    /// Prompts whose verdicts in both orders could be read.
    pub prompts: u32,
    pub wins: u32,
    pub ties: u32,
    pub losses: u32,
    /// Verdicts that stayed unreadable.
    pub unreadable: u32,
    /// Prompts whose verdict changed with the order (a tie by the rule above).
    pub position_splits: u32,
    pub win_rate: f64,
    pub win_low: f64,
    pub win_high: f64,
    pub lc_win_rate: f64,
    pub lc_low: f64,
    pub lc_high: f64,
}

impl Dataset for JudgeComparison {
    const NAME: &'static str = "eval_judge";
    const VERSION: u32 = 2;
    fn fields() -> Vec<FieldRef> {
        [
            required(&["model", "baseline", "judge"], DataType::Utf8),
            required(&["prompts", "wins", "ties", "losses", "unreadable", "position_splits"], DataType::UInt32),
            required(&["win_rate", "win_low", "win_high", "lc_win_rate", "lc_low", "lc_high"], DataType::Float64),
        ]
        .concat()
    }
}

/// `dose_points`: one point of `wrpo-score dose`, the held-out gain against
/// what the source brought. A level is one choice of y_ws with the same y_wt
/// and y_l; its x is the training pairs' mean gap y_ws - y_wt (and the win
/// rate, a tie counting half); an arm is one training recipe at that level
/// (WRPO, DPO on y_ws, ...), compared per prompt with `against` (DPO on y_wt).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DosePoint {
    pub level: String,
    pub arm: String,
    pub model: String,
    pub against: String,
    /// Prompt family (the prompt_id without its trailing -NUMBER), or 'all'.
    pub family: String,
    /// reward, or numeric_accuracy (on the numeric families only).
    pub measure: String,
    pub pairs: u32,
    pub mean_gap: f64,
    pub pair_win_rate: f64,
    pub prompts: u32,
    pub mean_diff: f64,
    pub diff_low: f64,
    pub diff_high: f64,
    pub p_value: f64,
}

impl Dataset for DosePoint {
    const NAME: &'static str = "dose_points";
    const VERSION: u32 = 1;
    fn fields() -> Vec<FieldRef> {
        [
            required(&["level", "arm", "model", "against", "family", "measure"], DataType::Utf8),
            required(&["pairs"], DataType::UInt32),
            required(&["mean_gap", "pair_win_rate"], DataType::Float64),
            required(&["prompts"], DataType::UInt32),
            required(&["mean_diff", "diff_low", "diff_high", "p_value"], DataType::Float64),
        ]
        .concat()
    }
}

/// `dose_slopes`: per arm and measure, the least-squares slope of the
/// held-out difference against the levels' mean training gap, with a 95%
/// percentile interval from resampling the prompts jointly across levels
/// (one draw of prompts serves every level, as the levels answer the same
/// prompts).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DoseSlope {
    pub arm: String,
    pub measure: String,
    pub levels: u32,
    pub prompts: u32,
    pub slope: f64,
    pub slope_low: f64,
    pub slope_high: f64,
}

impl Dataset for DoseSlope {
    const NAME: &'static str = "dose_slopes";
    const VERSION: u32 = 1;
    fn fields() -> Vec<FieldRef> {
        [
            required(&["arm", "measure"], DataType::Utf8),
            required(&["levels", "prompts"], DataType::UInt32),
            required(&["slope", "slope_low", "slope_high"], DataType::Float64),
        ]
        .concat()
    }
}
