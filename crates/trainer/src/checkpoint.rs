//! Resumable training state in OUT/: `run.json` (the settings that fix the
//! result; another run's settings are refused), and `checkpoint/` (weights,
//! AdamW moments, step and metrics so far). The data order is a function of
//! (seed, epoch), so the step number is all a resumed run needs to see the
//! same batches. A checkpoint is replaced atomically: a crash at any point
//! leaves the old or the new one whole.

use std::{collections::HashMap, fs, path::Path};

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use wrpo_common::{io::write_text, metrics::StepMetrics};
use wrpo_llm::Model;

use crate::optim::AdamW;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// The next optimizer step to run.
    pub step: u64,
    pub optimizer_t: u64,
    pub metrics: Vec<StepMetrics>,
}

/// Check (or record) the run's settings in OUT/run.json.
pub fn prepare(out: &Path, config: &Value) -> Result<State> {
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let path = out.join("run.json");
    if path.exists() {
        let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let before: Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
        // A run that saved nothing (it failed before its first checkpoint)
        // leaves only run.json behind, which must not block its corrected rerun.
        let saved_something = out.join("checkpoint").exists() || out.join("checkpoint.old").exists() || out.join("final").exists();
        if &before != config && !saved_something {
            eprintln!("{} holds the settings of a run that saved nothing; starting over with these", out.display());
            write_text(&path, &(serde_json::to_string_pretty(config)? + "\n"))?;
        } else if &before != config {
            bail!(
                "{} holds a run with other settings ({}); give this run another --out, or delete that folder to start over",
                out.display(),
                path.display()
            );
        }
    } else {
        write_text(&path, &(serde_json::to_string_pretty(config)? + "\n"))?;
    }
    Ok(State::default())
}

pub fn save(out: &Path, model: &Model, optimizer: &AdamW, state: &State) -> Result<()> {
    let tmp = out.join(format!(".checkpoint.{}.tmp", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let weights: HashMap<String, Tensor> = model.vars().into_iter().map(|(n, v)| (n.to_string(), v.as_tensor().detach())).collect();
    candle_core::safetensors::save(&weights, tmp.join("model.safetensors")).context("cannot write the checkpoint's weights")?;
    optimizer.save(&tmp.join("optimizer.safetensors"))?;
    let state = State { optimizer_t: optimizer.t, ..state.clone() };
    fs::write(tmp.join("state.json"), serde_json::to_string(&state)?).context("cannot write the checkpoint's state")?;
    for f in ["model.safetensors", "optimizer.safetensors", "state.json"] {
        fs::File::open(tmp.join(f))?.sync_all()?;
    }
    wrpo_llm::save::replace_dir(&tmp, &out.join("checkpoint"))
}

/// What a failed run leaves to resume from, in words for its error message.
pub fn what_is_kept(out: &Path) -> String {
    let dir = [out.join("checkpoint"), out.join("checkpoint.old")].into_iter().find(|d| d.join("state.json").exists());
    let step = dir.as_ref().and_then(|d| fs::read_to_string(d.join("state.json")).ok()).and_then(|t| serde_json::from_str::<State>(&t).ok());
    match (dir, step) {
        (Some(d), Some(s)) => format!("the last good checkpoint (step {}) is kept in {}", s.step, d.display()),
        _ => "no checkpoint was saved yet, so the same command (or a corrected one) starts over".into(),
    }
}

/// The last checkpoint in OUT, loaded into `model` and `optimizer`.
pub fn load(out: &Path, model: &Model, optimizer: &mut AdamW) -> Result<Option<State>> {
    let dir = [out.join("checkpoint"), out.join("checkpoint.old")].into_iter().find(|d| d.join("state.json").exists());
    let Some(dir) = dir else { return Ok(None) };
    let text = fs::read_to_string(dir.join("state.json")).with_context(|| format!("cannot read {}/state.json", dir.display()))?;
    let state: State = serde_json::from_str(&text).with_context(|| format!("{}/state.json is not a checkpoint state", dir.display()))?;
    let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), model.device())
        .with_context(|| format!("cannot read {}/model.safetensors", dir.display()))?;
    for (name, var) in model.vars() {
        let t = tensors.get(name).with_context(|| format!("{}: tensor '{name}' is missing", dir.display()))?;
        var.set(t).with_context(|| format!("{}: tensor '{name}' does not fit the model", dir.display()))?;
    }
    optimizer.load(&dir.join("optimizer.safetensors"), state.optimizer_t)?;
    Ok(Some(state))
}

/// The run is complete: the checkpoint is no longer needed.
pub fn finish(out: &Path, state: &State) -> Result<()> {
    write_text(&out.join("state.json"), &serde_json::to_string(state)?)?;
    let _ = fs::remove_dir_all(out.join("checkpoint"));
    let _ = fs::remove_dir_all(out.join("checkpoint.old"));
    Ok(())
}

/// The state of a run that already finished, if OUT holds one.
pub fn finished(out: &Path) -> Result<Option<State>> {
    let path = out.join("state.json");
    if !path.exists() || !out.join("final").exists() {
        return Ok(None);
    }
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| format!("{} is not a run state", path.display()))?))
}
