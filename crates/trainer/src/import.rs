//! `wrpo-train import-metrics`: a Hugging Face Trainer run's log history
//! (`trainer_state.json`, as TRL and wrpo_trl write it) as our `metrics`
//! dataset, so that GPU runs get the same DuckDB queries and plots.
//!
//! TRL logs a row after each optimizer step t (1-based) with the learning
//! rate and alpha that step used; our rows are numbered by the step index
//! (t - 1), and eval rows by the steps done before them, as `wrpo-train`
//! numbers its own. Keys map as `rewards/chosen` -> `rewards_chosen`,
//! `learning_rate` -> `lr`; TRL logs no per-step throughput, so
//! `tokens_per_second` is NaN.

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use serde_json::{Map, Value};
use wrpo_common::metrics::StepMetrics;

/// The stage of a run whose log has preference rewards, else `sft`.
pub fn default_stage(log: &[Value]) -> &'static str {
    if log.iter().any(|e| e.get("rewards/chosen").or_else(|| e.get("eval_rewards/chosen")).is_some()) {
        "wrpo"
    } else {
        "sft"
    }
}

/// The log history of a `trainer_state.json`.
pub fn log_history(state: &Value, file: &Path) -> Result<Vec<Value>> {
    state
        .get("log_history")
        .and_then(Value::as_array)
        .cloned()
        .ok_or_else(|| anyhow!("{}: no 'log_history' list; expected a trainer_state.json of a Hugging Face Trainer run", file.display()))
}

/// Our metrics rows of a log history: one per training entry (those with
/// `loss`) and one per evaluation (those with `eval_loss`), under `stage`
/// and `eval_<stage>`. The final summary entry (`train_runtime`) is left out.
pub fn metrics_from_log(log: &[Value], stage: &str, file: &Path) -> Result<Vec<StepMetrics>> {
    let mut rows = Vec::new();
    for (i, entry) in log.iter().enumerate() {
        let Some(e) = entry.as_object() else { bail!("{}: log_history[{i}] is not an object", file.display()) };
        let (prefix, eval) = if e.contains_key("eval_loss") {
            ("eval_", true)
        } else if e.contains_key("loss") && !e.contains_key("train_runtime") {
            ("", false)
        } else {
            continue;
        };
        // Metrics carry the entry's prefix; step, epoch, learning rate and gradient norm do not.
        let number = |key: &str| number_in(e, &format!("{prefix}{key}"), i, file);
        let plain = |key: &str| number_in(e, key, i, file);
        let required = |value: Option<f64>, key: &str| value.ok_or_else(|| anyhow!("{}: log_history[{i}] has no '{key}'", file.display()));
        let step = required(plain("step")?, "step")? as u64;
        let step = if eval { step } else { step.checked_sub(1).ok_or_else(|| anyhow!("{}: log_history[{i}] has step 0", file.display()))? };
        rows.push(StepMetrics {
            stage: if eval { format!("eval_{stage}") } else { stage.to_string() },
            step,
            epoch: plain("epoch")?.unwrap_or(0.0),
            loss: required(number("loss")?, "loss")?,
            lr: if eval { 0.0 } else { required(plain("learning_rate")?, "learning_rate")? },
            alpha: number("alpha")?,
            grad_norm: if eval { None } else { plain("grad_norm")? },
            tokens_per_second: f64::NAN,
            rewards_chosen: number("rewards/chosen")?,
            rewards_source_chosen: number("rewards/source_chosen")?,
            rewards_target_chosen: number("rewards/target_chosen")?,
            rewards_rejected: number("rewards/rejected")?,
            rewards_accuracies: number("rewards/accuracies")?,
            rewards_source_accuracies: number("rewards/source_accuracies")?,
            rewards_pivot_accuracies: number("rewards/pivot_accuracies")?,
            rewards_margins: number("rewards/margins")?,
            logps_chosen: number("logps/chosen")?,
            logps_source_chosen: number("logps/source_chosen")?,
            logps_target_chosen: number("logps/target_chosen")?,
            logps_rejected: number("logps/rejected")?,
        });
    }
    if rows.is_empty() {
        bail!("{}: the log history has no training or eval entry (nothing was logged: set logging_steps)", file.display());
    }
    Ok(rows)
}

/// Entry `i`'s number under `key`, None when absent or null.
fn number_in(e: &Map<String, Value>, key: &str, i: usize, file: &Path) -> Result<Option<f64>> {
    match e.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| anyhow!("{}: log_history[{i}]: '{key}' is {v}, not a number", file.display())),
    }
}
