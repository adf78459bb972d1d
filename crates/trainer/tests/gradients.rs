//! The gradients `wrpo-train` applies, against PyTorch's, on tiny random
//! checkpoints that cover every configuration feature the loader accepts
//! (fixtures of scripts/fixtures/make_gradient_fixtures.py; the table of what
//! each covers is in their cases.json). The path is the real one: the
//! checkpoint saved and reloaded as `wrpo-train sft` leaves it, the family's
//! chat template and tokenizer, three responses sharing each prompt, two
//! prompts per micro-batch and two micro-batches per step, gradients summed
//! in the optimizer's buffers; the reference computed by `ref-logps`' code, so
//! that it equals the policy exactly as at every run's first step, or offset
//! from it.

mod common;

use std::{collections::HashMap, path::PathBuf};

use candle_core::Tensor;
use serde_json::Value;
use wrpo_common::{sft::SftExample, Message};
use wrpo_llm::Model;
use wrpo_trainer::{
    data::{pack_sft, Encoder, Examples, PairExample, SftBlock, SftForm, Truncation},
    loss::{Chosen, LossKind, Objective, PerY},
    optim::AdamW,
    reference::reference_logps,
    train::{load_model, Stage, TrainConfig, Trainer},
};

const CONFIGS: [&str; 8] = [
    "llama_llama3_untied",
    "llama_linear_tied_bias",
    "mistral_sliding_gelu",
    "qwen2_mqa_bias",
    "qwen3_qk_norm",
    "gemma2_softcap",
    "gemma3_local_rope",
    "phi3_fused_partial",
];

const TRUNCATION: Truncation = Truncation { max_length: 1024, max_prompt_length: 512 };

fn fixture(name: &str) -> PathBuf {
    common::fixtures("gradients").join(name)
}

struct Fixture {
    name: &'static str,
    model: Model,
    encoder: Encoder,
    cases: Value,
    expected: HashMap<String, Tensor>,
    /// Keeps the saved checkpoint the model was loaded from.
    _saved: tempfile::TempDir,
}

/// The fixture's checkpoint, saved as the SFT stage saves its result and loaded back.
fn load(name: &'static str) -> Fixture {
    let (model, tokenizer) = load_model(&fixture(name)).unwrap();
    let template = tokenizer.chat_template_for(model.config.family).unwrap();
    let saved = tempfile::tempdir().unwrap();
    let dir = saved.path().join("final");
    wrpo_llm::save_hf_checkpoint(&model, &tokenizer, Some(&template.source), &dir).unwrap();
    let (model, tokenizer) = load_model(&dir).unwrap();
    let template = tokenizer.chat_template_for(model.config.family).unwrap();
    let encoder = Encoder::new(tokenizer, template, TRUNCATION).unwrap();
    let (cases, expected) = common::pytorch_expected(&fixture(name));
    Fixture { name, model, encoder, cases, expected, _saved: saved }
}

const YS: [&str; 3] = ["y_ws", "y_wt", "y_l"];

/// The examples as the trainer encodes them, each checked against the ids
/// transformers gave the same text; reference log-probs computed by the
/// reference code on this model, plus the fixture's offsets if `offset`.
fn examples(f: &Fixture, offset: bool) -> Vec<PairExample> {
    let enc = &f.encoder;
    let mut out = Vec::new();
    for (i, e) in f.cases["examples"].as_array().unwrap().iter().enumerate() {
        let ids = |k: &str| serde_json::from_value::<Vec<u32>>(e[k].clone()).unwrap();
        let messages: Vec<Message> = serde_json::from_value(e["messages"].clone()).unwrap();
        let prompt = enc.prompt_ids(&messages).unwrap();
        assert_eq!(prompt, ids("prompt_ids"), "{}: example {i}: prompt ids differ from apply_chat_template's", f.name);
        let seq = |y: &str| {
            let response = enc.response_ids(&messages, e[y].as_str().unwrap()).unwrap();
            assert_eq!(response, ids(&format!("{y}_ids")), "{}: example {i}: {y} ids differ from transformers'", f.name);
            let s = enc.truncation.sequences(&prompt, &[&response]).remove(0);
            assert!(!s.truncated);
            s
        };
        out.push(PairExample {
            prompt_id: format!("p{i}"),
            seqs: PerY { y_ws: Some(seq("y_ws")), y_wt: Some(seq("y_wt")), y_l: seq("y_l") },
            reference: None,
        });
    }
    // As `wrpo-train ref-logps` computes them: the same forward, micro-batches of 2.
    let reference = reference_logps(&f.model, &out, 2).unwrap();
    for (i, (example, r)) in out.iter_mut().zip(reference).enumerate() {
        let e = &f.cases["examples"][i];
        let shift = |k: usize| if offset { e[format!("ref_offset_{}", YS[k])].as_f64().unwrap() } else { 0.0 };
        example.reference = Some([r[0] + shift(0), r[1] + shift(1), r[2] + shift(2)]);
    }
    out
}

fn sft_examples(pairs: &[PairExample]) -> Vec<SftBlock> {
    pairs.iter().map(|e| SftBlock { prompt_id: e.prompt_id.clone(), seqs: vec![e.seqs.y_ws.clone().unwrap()] }).collect()
}

fn config() -> TrainConfig {
    TrainConfig { micro_batch: 2, grad_accum: 2, ..common::train_config(TRUNCATION) }
}

/// How far a step's results may be from PyTorch's f32 ones.
#[derive(Clone, Copy, Debug)]
struct Bounds {
    /// The mean loss, relative (to at least 1).
    loss: f64,
    /// Each parameter's gradient norm and the global norm, relative.
    norm_rel: f64,
    /// Each parameter's largest element error, relative to its largest element.
    max_abs: f64,
}

/// f32 against f32: summation order only.
const F32: Bounds = Bounds { loss: 1e-5, norm_rel: 1e-4, max_abs: 1e-5 };

/// bf16 matmuls against PyTorch's f32, to first order in the rounding: each
/// matmul operand rounded to bf16 is off by at most u = 2^-9 relative, a
/// product of two by 2u, and the errors of the matmuls chained along a path
/// add up. The longest path of a fixture (2 layers) runs through 13 matmuls
/// forward (q/k/v, QKᵀ, PV, o, gate/up and down per layer, the LM head) and
/// as many backward plus the weight gradient's own: 27. So the loss is within
/// 13 x 2u = 0.051 relative, a gradient within 27 x 2u = 0.105; an element,
/// small beside the largest, is held to the same fraction of the largest.
const BF16: Bounds = Bounds { loss: 13.0 * 2.0 / 512.0, norm_rel: 27.0 * 2.0 / 512.0, max_abs: 27.0 * 2.0 / 512.0 };

/// Worst errors over a configuration's parameters, for the report (read
/// through `Debug` only).
#[derive(Default, Debug)]
#[allow(dead_code)]
struct Worst {
    loss_rel: f64,
    norm_rel: f64,
    max_abs_scaled: f64,
}

/// One optimizer step's summed gradients (two micro-batches of two
/// examples) against PyTorch's: the mean loss, the global norm, and for
/// every parameter its norm and its largest element error, within `bounds`.
fn check(f: &Fixture, case: &str, stage: Stage, examples: &Examples, alpha: f64, bounds: Bounds) -> Worst {
    let config = config();
    let trainer = Trainer { model: &f.model, stage: &stage, config: &config };
    let vars = f.model.vars();
    let mut optimizer = AdamW::new(f.model.trainable(), config.adamw.clone()).unwrap();
    let micro = examples.batches(2);
    let sums = trainer.step_gradients(&micro, alpha, &mut optimizer).unwrap();
    let scalar = |k: &str| f.expected[&format!("{case}.{k}")].to_vec1::<f32>().unwrap()[0] as f64;
    let what = format!("{}: {case}", f.name);
    let (loss, want_loss) = (sums.mean_loss(), scalar("loss"));
    let loss_rel = (loss - want_loss).abs() / want_loss.abs().max(1.0);
    assert!(loss_rel <= bounds.loss, "{what}: loss {loss} vs PyTorch {want_loss}");
    let (norm, want_norm) = (optimizer.grad_norm(), scalar("grad_norm"));
    assert!((norm - want_norm).abs() <= bounds.norm_rel * want_norm, "{what}: gradient norm {norm} vs PyTorch {want_norm}");
    let grads = f.expected.keys().filter(|k| k.starts_with(&format!("{case}.grad."))).count();
    assert_eq!(vars.len(), grads, "{what}: {} trainable tensors, PyTorch has {grads}", vars.len());
    let mut worst = Worst { loss_rel, ..Worst::default() };
    for (name, _) in &vars {
        let got = optimizer.gradient(name).unwrap();
        let want = f.expected[&format!("{case}.grad.{name}")].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let l2 = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        let (n_got, n_want) = (l2(&got), l2(&want));
        assert!(n_got > 0.0, "{what}: {name} got no gradient");
        let norm_rel = (n_got - n_want).abs() / n_want;
        let scale = want.iter().fold(0f64, |m, &x| m.max(x.abs() as f64));
        let max_abs = got.iter().zip(&want).fold(0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs())) / scale;
        assert!(norm_rel <= bounds.norm_rel, "{what}: the gradient of {name} has norm {n_got}, PyTorch's {n_want}");
        assert!(max_abs <= bounds.max_abs, "{what}: the gradient of {name} differs from PyTorch's by {max_abs} of its largest element");
        worst.norm_rel = worst.norm_rel.max(norm_rel);
        worst.max_abs_scaled = worst.max_abs_scaled.max(max_abs);
    }
    worst
}

/// Both precisions in one test: the matmul precision is the process's.
#[test]
fn wrpo_dpo_and_sft_gradients_equal_pytorch_on_every_configuration() {
    check_every_configuration(F32);
    if wrpo_llm::bf16::has_bf16_units() {
        wrpo_llm::bf16::set_matmuls_bf16(true).unwrap();
        check_every_configuration(BF16);
        wrpo_llm::bf16::set_matmuls_bf16(false).unwrap();
    } else {
        eprintln!("this CPU has no bf16 units: bf16 gradients not checked");
    }
}

fn check_every_configuration(bounds: Bounds) {
    eprintln!("matmuls in {}", if wrpo_llm::bf16::matmuls_bf16() { "bf16" } else { "f32" });
    for name in CONFIGS {
        let f = load(name);
        let (alpha, beta) = (f.cases["alpha"].as_f64().unwrap(), f.cases["beta"].as_f64().unwrap());
        let objective = |loss, chosen| Objective { loss, chosen, beta, label_smoothing: 0.0, gamma: 0.0 };
        let preference = |loss, chosen| Stage::Preference { objective: objective(loss, chosen), alpha_max: alpha, static_alpha: true };
        let (equal, offset) = (Examples::Pairs(examples(&f, false)), examples(&f, true));
        let (sft, offset) = (Examples::Sft(sft_examples(&offset)), Examples::Pairs(offset));
        let report = [
            ("wrpo_ref_policy", check(&f, "wrpo_ref_policy", preference(LossKind::Wrpo, Chosen::Target), &equal, alpha, bounds)),
            ("wrpo", check(&f, "wrpo", preference(LossKind::Wrpo, Chosen::Target), &offset, alpha, bounds)),
            ("dpo", check(&f, "dpo", preference(LossKind::Dpo, Chosen::Target), &offset, alpha, bounds)),
            ("sft", check(&f, "sft", Stage::Sft { form: SftForm::Response }, &sft, 0.0, bounds)),
        ];
        eprintln!("{name} ({}): {report:?}", f.cases["covers"].as_str().unwrap());
        if let Some(block) = f.cases["packed_block"].as_u64() {
            let rows: Vec<SftExample> = f.cases["examples"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
                .map(|(i, e)| SftExample {
                    prompt_id: format!("p{i}"),
                    messages: serde_json::from_value(e["messages"].clone()).unwrap(),
                    response: e["y_ws"].as_str().unwrap().into(),
                    source_model: "source".into(),
                    source_sample_index: 0,
                    reward: Some(1.0),
                })
                .collect();
            let mut packed = Vec::new();
            for (case, cross_document) in [("sft_packed", false), ("sft_packed_cross", true)] {
                let examples = Examples::Sft(pack_sft(&f.encoder, &rows, block as usize, cross_document).unwrap());
                packed.push((case, check(&f, case, Stage::Sft { form: SftForm::Packed { cross_document } }, &examples, 0.0, bounds)));
            }
            eprintln!("{name}, packed SFT in blocks of {block}: {packed:?}");
        }
    }
}
