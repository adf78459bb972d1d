//! Every loss form and its gradients against PyTorch's evaluation of the
//! formulas (fixtures of scripts/fixtures/make_trainer_fixtures.py), and two
//! AdamW steps against torch.optim.AdamW.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use serde_json::Value;
use wrpo_llm::{LoadOptions, Model};
use wrpo_trainer::{
    data::{Examples, PairExample, Sequence, SftBlock, SftForm, Truncation},
    loss::{Chosen, LossKind, Objective, PerY},
    optim::{AdamW, AdamWConfig},
    train::{Stage, TrainConfig, Trainer},
};

struct Fixture {
    model: Model,
    cases: Value,
    expected: HashMap<String, Tensor>,
}

fn load() -> Fixture {
    let dir = common::fixtures("trainer/gemma3");
    let model = Model::load(&dir, &LoadOptions::trainable(DType::F32)).unwrap();
    let (cases, expected) = common::pytorch_expected(&dir);
    Fixture { model, cases, expected }
}

fn ids(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

fn seq(prompt: &[u32], response: &[u32]) -> Sequence {
    Sequence { ids: [prompt, response].concat(), prompt_len: prompt.len(), truncated: false }
}

fn pairs(f: &Fixture) -> Examples {
    let pairs = f.cases["examples"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let p = ids(&e["prompt"]);
            let r = |k: &str| e[k].as_f64().unwrap();
            PairExample {
                prompt_id: format!("e{i}"),
                seqs: PerY { y_ws: Some(seq(&p, &ids(&e["y_ws"]))), y_wt: Some(seq(&p, &ids(&e["y_wt"]))), y_l: seq(&p, &ids(&e["y_l"])) },
                reference: Some([r("ref_y_ws"), r("ref_y_wt"), r("ref_y_l")]),
            }
        })
        .collect();
    Examples::Pairs(pairs)
}

fn config(lr: f64, weight_decay: f64) -> TrainConfig {
    let base = common::train_config(Truncation { max_length: 64, max_prompt_length: 32 });
    TrainConfig { lr, micro_batch: 3, max_grad_norm: Some(1.0), adamw: AdamWConfig { weight_decay, ..base.adamw }, ..base }
}

fn objective(f: &Fixture, loss: LossKind, chosen: Chosen, smoothing: bool) -> Objective {
    let c = &f.cases;
    Objective {
        loss,
        chosen,
        beta: c["beta"].as_f64().unwrap(),
        label_smoothing: if smoothing { c["label_smoothing"].as_f64().unwrap() } else { 0.0 },
        gamma: c["simpo_gamma"].as_f64().unwrap(),
    }
}

/// max |a - b| relative to max |b| (plus a floor for all-zero tensors).
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let diff = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    diff / scale.max(1e-6)
}

fn check_loss_and_grads(f: &Fixture, case: &str, stage: Stage, examples: &Examples, alpha: f64) {
    let config = config(0.0, 0.0);
    let trainer = Trainer { model: &f.model, stage: &stage, config: &config };
    let batch = examples.batch(&(0..examples.len()).collect::<Vec<_>>());
    let loss = trainer.batch_loss(&batch, alpha).unwrap();
    let want = &f.expected[&format!("{case}.loss")];
    let err = rel_err(&loss.reshape(1).unwrap(), want);
    assert!(err <= 1e-4, "{case}: loss {loss} vs PyTorch {want} (relative error {err})");
    let grads = loss.backward().unwrap();
    let vars = f.model.vars();
    assert_eq!(vars.len(), f.expected.keys().filter(|k| k.starts_with(&format!("{case}.grad."))).count(), "{case}: parameter count");
    for (name, var) in vars {
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{case}: {name} has no gradient"));
        let want = &f.expected[&format!("{case}.grad.{name}")];
        let err = rel_err(g, want);
        assert!(err <= 1e-4, "{case}: gradient of {name} differs (relative error {err})");
        let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(norm > 0.0, "{case}: gradient of {name} is zero");
    }
}

#[test]
fn every_loss_form_and_its_gradients_equal_pytorch() {
    let f = load();
    let examples = pairs(&f);
    let alpha = f.cases["alpha"].as_f64().unwrap();
    for (case, loss, chosen, smoothing) in [
        ("wrpo", LossKind::Wrpo, Chosen::Target, false),
        ("wrpo_smoothed", LossKind::Wrpo, Chosen::Target, true),
        ("dpo_source", LossKind::Dpo, Chosen::Source, false),
        ("dpo_target", LossKind::Dpo, Chosen::Target, false),
        ("simpo", LossKind::Simpo, Chosen::Target, false),
        ("wrpo_simpo", LossKind::WrpoSimpo, Chosen::Target, false),
        ("ipo", LossKind::Ipo, Chosen::Target, false),
        ("wrpo_ipo", LossKind::WrpoIpo, Chosen::Target, false),
        ("sigmoid_mix", LossKind::SigmoidMix, Chosen::Target, false),
    ] {
        let stage = Stage::Preference { objective: objective(&f, loss, chosen, smoothing), alpha_max: alpha, static_alpha: true };
        check_loss_and_grads(&f, case, stage, &examples, alpha);
    }
}

#[test]
fn the_sft_loss_and_its_gradients_equal_pytorch() {
    let f = load();
    let blocks: Vec<SftBlock> = f.cases["examples"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, e)| SftBlock { prompt_id: format!("e{i}"), seqs: vec![seq(&ids(&e["prompt"]), &ids(&e["y_ws"]))] })
        .collect();
    check_loss_and_grads(&f, "sft", Stage::Sft { form: SftForm::Response }, &Examples::Sft(blocks), 0.0);
}

#[test]
fn two_adamw_steps_equal_torch_optim_adamw() {
    let f = load();
    let examples = pairs(&f);
    let batch = examples.batch(&(0..examples.len()).collect::<Vec<_>>());
    let alpha = f.cases["alpha"].as_f64().unwrap();
    let a = &f.cases["adamw"];
    let (lr, wd) = (a["lr"].as_f64().unwrap(), a["weight_decay"].as_f64().unwrap());
    let config = config(lr, wd);
    let stage = Stage::Preference { objective: objective(&f, LossKind::Wrpo, Chosen::Target, false), alpha_max: alpha, static_alpha: true };
    let trainer = Trainer { model: &f.model, stage: &stage, config: &config };
    let mut opt = AdamW::new(f.model.trainable(), config.adamw.clone()).unwrap();
    let mut trace = vec![];
    for _ in 0..2 {
        let loss = trainer.batch_loss(&batch, alpha).unwrap();
        trace.push(loss.to_scalar::<f32>().unwrap());
        opt.accumulate(&loss.backward().unwrap()).unwrap();
        opt.step(lr, Some(1.0)).unwrap();
    }
    trace.push(trainer.batch_loss(&batch, alpha).unwrap().to_scalar::<f32>().unwrap());
    let want = f.expected["adamw.loss"].to_vec1::<f32>().unwrap();
    for (got, want) in trace.iter().zip(&want) {
        assert!((got - want).abs() <= 1e-4 * want.abs(), "loss {got} vs torch {want} ({trace:?} vs {want:?})");
    }
    assert!(want[2] < want[0], "the fixture's steps lower the loss");
    // Adam's first steps move each weight by about lr * sign(gradient); where a
    // gradient is ~0, rounding noise picks the sign, so a few such weights may
    // differ by up to 2 lr. Every other weight must equal torch's.
    let (mut off, mut total) = (0, 0);
    for (name, var) in f.model.vars() {
        let got = var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = f.expected[&format!("adamw.param.{name}")].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (g, w) in got.iter().zip(&want) {
            let d = (g - w).abs();
            assert!(d <= 2.0 * lr as f32 + 1e-6, "{name}: a weight differs from torch's by {d}");
            off += usize::from(d > 1e-5);
        }
        total += got.len();
    }
    assert!(off * 1000 <= total, "{off} of {total} weights differ from torch's by more than 1e-5");
}
