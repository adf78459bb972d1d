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

/// A `trainer_state.json`'s text as JSON. Python's `json` writes a diverged
/// run's NaN and infinite values as the bare words `NaN`, `Infinity` and
/// `-Infinity`, which JSON has not: outside strings they become the strings
/// "NaN", "Infinity" and "-Infinity", which [`metrics_from_log`] reads as
/// those numbers.
pub fn parse_state(text: &str, file: &Path) -> Result<Value> {
    let mut out = String::with_capacity(text.len() + 16);
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            (in_string, escaped) = (escaped || c != '"', !escaped && c == '\\');
        } else if c == '"' {
            in_string = true;
        } else if let Some(word) = ["-Infinity", "Infinity", "NaN"].into_iter().find(|w| rest.starts_with(w)) {
            out.push_str(&format!("\"{word}\""));
            rest = &rest[word.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    serde_json::from_str(&out).map_err(|e| anyhow!("{} is not valid JSON: {e}", file.display()))
}

/// Refuse a stage name that would make training rows read as evaluation rows.
pub fn check_stage(stage: &str) -> Result<()> {
    if stage.is_empty() || stage.starts_with("eval") {
        bail!("--stage '{stage}': a training stage's name (sft, wrpo, dpo, ...); evaluation rows are named eval_<stage> from it");
    }
    Ok(())
}

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
    // The last training and eval step seen, and where.
    let (mut last_train, mut last_eval) = (None::<(u64, usize)>, None::<(u64, usize)>);
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
        let step = required(plain("step")?, "step")?;
        // A step is a count: a negative, fractional or huge one would be cast to another number.
        if !(step >= 0.0 && step.fract() == 0.0 && step < 1e15) {
            bail!("{}: log_history[{i}] has step {step}; expected a whole number of optimizer steps", file.display());
        }
        let step = step as u64;
        let step = if eval { step } else { step.checked_sub(1).ok_or_else(|| anyhow!("{}: log_history[{i}] has step 0", file.display()))? };
        // Each kind of row in the order the run logged them, each step once.
        let last = if eval { &mut last_eval } else { &mut last_train };
        if let Some((before, j)) = *last {
            if step <= before {
                bail!(
                    "{}: log_history[{i}] is a{} entry for step {} after log_history[{j}]'s for step {}; expected one entry per step, in order",
                    file.display(),
                    if eval { "n eval" } else { " training" },
                    step + u64::from(!eval),
                    before + u64::from(!eval)
                );
            }
        }
        *last = Some((step, i));
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

/// Entry `i`'s number under `key`, None when absent or null; the strings
/// [`parse_state`] made of NaN and the infinities are those numbers.
fn number_in(e: &Map<String, Value>, key: &str, i: usize, file: &Path) -> Result<Option<f64>> {
    match e.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s == "NaN" => Ok(Some(f64::NAN)),
        Some(Value::String(s)) if s == "Infinity" => Ok(Some(f64::INFINITY)),
        Some(Value::String(s)) if s == "-Infinity" => Ok(Some(f64::NEG_INFINITY)),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| anyhow!("{}: log_history[{i}]: '{key}' is {v}, not a number", file.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(text: &str) -> Result<Vec<StepMetrics>> {
        let file = Path::new("trainer_state.json");
        let state = parse_state(text, file)?;
        metrics_from_log(&log_history(&state, file)?, "wrpo", file)
    }

    #[test]
    fn python_json_nan_and_infinities_are_read_outside_strings_only() {
        let text = r#"{"note": "NaN \" Infinity", "log_history": [
            {"step": 1, "loss": NaN, "learning_rate": 1e-6, "grad_norm": Infinity, "rewards/margins": -Infinity},
            {"step": 2, "loss": 0.5, "learning_rate": 1e-6}]}"#;
        let state = parse_state(text, Path::new("s.json")).unwrap();
        assert_eq!(state["note"], "NaN \" Infinity", "a string keeps its words");
        let r = rows(text).unwrap();
        assert!(r[0].loss.is_nan() && r[0].grad_norm == Some(f64::INFINITY) && r[0].rewards_margins == Some(f64::NEG_INFINITY));
        assert_eq!(r[1].loss, 0.5);
        let err = parse_state("{\"a\": nan}", Path::new("s.json")).unwrap_err().to_string();
        assert!(err.contains("s.json is not valid JSON: ") && err.contains("line 1 column 8"), "{err}");
    }

    #[test]
    fn steps_must_be_whole_in_order_and_once() {
        let entry = |step: &str| format!(r#"{{"step": {step}, "loss": 0.5, "learning_rate": 1e-6}}"#);
        let log = |steps: &[&str]| format!(r#"{{"log_history": [{}]}}"#, steps.iter().map(|s| entry(s)).collect::<Vec<_>>().join(","));
        for bad in ["-1", "1.5", "1e20"] {
            let err = rows(&log(&["1", bad])).unwrap_err().to_string();
            assert!(err.contains("log_history[1] has step") && err.contains("whole number"), "{bad}: {err}");
        }
        let err = rows(&log(&["1", "3", "2"])).unwrap_err().to_string();
        assert!(err.contains("log_history[2] is a training entry for step 2 after log_history[1]'s for step 3"), "{err}");
        let err = rows(&log(&["1", "1"])).unwrap_err().to_string();
        assert!(err.contains("for step 1 after log_history[0]'s for step 1"), "{err}");
        // An evaluation at a step beside that step's training entry is fine; two at one step are not.
        let eval = |step: u64| format!(r#"{{"step": {step}, "eval_loss": 0.4}}"#);
        let text = format!(r#"{{"log_history": [{}, {}, {}, {}]}}"#, entry("1"), eval(1), entry("2"), eval(2));
        assert_eq!(rows(&text).unwrap().len(), 4);
        let text = format!(r#"{{"log_history": [{}, {}, {}]}}"#, entry("1"), eval(1), eval(1));
        assert!(rows(&text).unwrap_err().to_string().contains("an eval entry for step 1"));
    }

    #[test]
    fn an_eval_stage_name_is_refused() {
        for bad in ["eval", "eval_wrpo", ""] {
            assert!(check_stage(bad).unwrap_err().to_string().contains("eval_<stage>"), "{bad}");
        }
        check_stage("dpo").unwrap();
    }
}
