//! `wrpo-train` end to end, through the binary, on a tiny random Llama with
//! the repo's tiny ChatML tokenizer: learning on a synthetic preference
//! task, exact resume, the HF checkpoint, and errors on bad inputs.

mod common;

use std::{
    path::Path,
    process::{Command, Output},
};

use candle_core::{DType, Device, Tensor};
use serde_json::json;
use wrpo_common::{io::read_file, metrics::StepMetrics, pairs::Pair, read_dataset, sft::SftExample, write_dataset, Message, Provenance, Role};
use wrpo_llm::{LoadOptions, Model};
#[path = "../../common/testutil/run.rs"]
mod run;
use run::{failed, ok};

/// Micro-batches of 4, no accumulation, 3 epochs, no warm-up: a few quick steps.
const SMALL_STEPS: [&str; 8] = ["--micro-batch", "4", "--grad-accum", "1", "--epochs", "3", "--warmup-ratio", "0"];

fn train_bin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wrpo-train")).args(args).output().unwrap()
}

const GOOD: [&str; 3] = ["Sure, here is the answer.", "Sure, here it is.", "Here is the answer, sure."];
const BAD: [&str; 3] = ["No.", "I will not.", "No, never."];

fn question(i: usize) -> Vec<Message> {
    vec![Message::new(Role::User, format!("Question {i}: tell me about topic {}.", i * 7 % 13))]
}

/// Pairs whose chosen responses are polite and rejected ones refuse.
fn pairs(range: std::ops::Range<usize>) -> Vec<Pair> {
    range
        .map(|i| Pair {
            prompt_id: format!("q{i}"),
            messages: question(i),
            y_ws: GOOD[i % 3].into(),
            y_ws_model: "source".into(),
            y_ws_sample_index: 0,
            y_ws_reward: 1.0,
            y_wt: GOOD[(i + 1) % 3].into(),
            y_wt_model: "target-sft".into(),
            y_wt_sample_index: 0,
            y_wt_reward: 0.8,
            y_l: BAD[i % 3].into(),
            y_l_model: "target-sft".into(),
            y_l_sample_index: 1,
            y_l_reward: 0.1,
            ref_logp_y_ws: None,
            ref_logp_y_wt: None,
            ref_logp_y_l: None,
            ref_tokens_y_ws: None,
            ref_tokens_y_wt: None,
            ref_tokens_y_l: None,
        })
        .collect()
}

struct Setup {
    dir: tempfile::TempDir,
    model: String,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let model = wrpo_llm::tiny::tiny_llama(dir.path(), &common::fixtures("tokenizer/tiny-bpe"), 128, 11).unwrap();
        let s = Setup { model: model.display().to_string(), dir };
        let prov = Provenance::new("test", &json!({})).unwrap();
        write_dataset(Path::new(&s.path("pairs.parquet")), &pairs(0..16), &prov).unwrap();
        write_dataset(Path::new(&s.path("eval-pairs.parquet")), &pairs(100..108), &prov).unwrap();
        for (name, range) in [("sft.parquet", 0..16), ("eval-sft.parquet", 100..108)] {
            let rows: Vec<SftExample> = range
                .map(|i| SftExample {
                    prompt_id: format!("q{i}"),
                    messages: question(i),
                    response: GOOD[i % 3].into(),
                    source_model: "source".into(),
                    source_sample_index: 0,
                    reward: Some(1.0),
                })
                .collect();
            write_dataset(Path::new(&s.path(name)), &rows, &prov).unwrap();
        }
        for (pairs, out) in [("pairs.parquet", "pairs-ref.parquet"), ("eval-pairs.parquet", "eval-ref.parquet")] {
            ok(train_bin(&["ref-logps", "--model", &s.model, "--pairs", &s.path(pairs), "--out", &s.path(out)]));
        }
        s
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn wrpo(&self, out: &str, extra: &[&str]) -> Output {
        self.wrpo_on("pairs-ref.parquet", out, extra)
    }

    /// `wrpo-train wrpo` on the pairs file `pairs` of the setup's folder.
    fn wrpo_on(&self, pairs: &str, out: &str, extra: &[&str]) -> Output {
        let out = self.path(out);
        let mut args = vec!["wrpo", "--model", &self.model, "--pairs", self.dir.path().join(pairs).to_str().unwrap()]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        args.extend(["--out", &out, "--lr", "5e-3", "--beta", "0.1", "--alpha-max", "0.5"].map(String::from));
        args.extend(SMALL_STEPS.map(String::from));
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        train_bin(&args)
    }
}

fn metrics(dir: &str) -> Vec<StepMetrics> {
    read_dataset::<StepMetrics>(&Path::new(dir).join("metrics.parquet")).unwrap()
}

#[test]
fn wrpo_learns_held_out_preferences_and_resumes_exactly() {
    let s = Setup::new();
    // Reference log-probs are those of the model itself.
    let refs = read_dataset::<Pair>(Path::new(&s.path("pairs-ref.parquet"))).unwrap();
    assert!(refs.iter().all(|p| p.ref_logp_y_ws.unwrap() < 0.0 && p.ref_logp_y_l.unwrap() < 0.0));

    ok(s.wrpo("whole", &["--eval-pairs", &s.path("eval-ref.parquet"), "--save-every", "4"]));
    let m = metrics(&s.path("whole"));
    let train: Vec<&StepMetrics> = m.iter().filter(|r| r.stage == "wrpo").collect();
    let eval: Vec<&StepMetrics> = m.iter().filter(|r| r.stage == "eval_wrpo").collect();
    assert_eq!(train.len(), 12, "16 pairs / 4 per step x 3 epochs");
    assert_eq!(train[0].alpha, Some(0.0));
    assert!((train[11].alpha.unwrap() - 0.5 * 11.0 / 12.0).abs() < 1e-12, "alpha_max * t / T at the last step, as the official trainer");
    assert!(train.windows(2).all(|w| w[1].alpha >= w[0].alpha));
    let (first, last) = (eval.first().unwrap(), eval.last().unwrap());
    // Before training the policy is the reference, whose log-probs the
    // inference kernels computed: equal up to rounding.
    for reward in [first.rewards_chosen, first.rewards_rejected] {
        assert!(reward.unwrap().abs() < 1e-3, "implicit reward {reward:?} before training");
    }
    assert!(last.rewards_accuracies.unwrap() >= 0.9, "held-out reward accuracy {:?}", last.rewards_accuracies);
    assert!(last.loss < first.loss - 0.05, "held-out loss {} -> {}", first.loss, last.loss);
    assert!(last.rewards_margins.unwrap() > 0.0);
    for r in &train {
        assert!(r.grad_norm.unwrap().is_finite() && r.logps_rejected.is_some() && r.rewards_pivot_accuracies.is_some());
    }
    assert!(Path::new(&s.path("whole/metrics.png")).exists());
    assert!(!Path::new(&s.path("whole/checkpoint")).exists(), "a finished run keeps no checkpoint");

    // A crash after step 5, then the same command: the same weights and metrics.
    let crashed = s.wrpo("resumed", &["--eval-pairs", &s.path("eval-ref.parquet"), "--save-every", "4", "--abort-after-steps", "5"]);
    assert!(!crashed.status.success());
    assert!(Path::new(&s.path("resumed/checkpoint/state.json")).exists());
    let out = ok(s.wrpo("resumed", &["--eval-pairs", &s.path("eval-ref.parquet"), "--save-every", "4"]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("resuming"), "{}", String::from_utf8_lossy(&out.stderr));
    let load = |d: &str| Model::load(Path::new(&s.path(d)).join("final").as_path(), &LoadOptions::trainable(DType::F32)).unwrap();
    let (a, b) = (load("whole"), load("resumed"));
    for ((n, x), (_, y)) in a.vars().iter().zip(b.vars().iter()) {
        let d = (x.as_tensor() - y.as_tensor()).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(d <= 1e-6, "{n} differs by {d} after resuming");
    }
    let strip = |rows: Vec<StepMetrics>| rows.into_iter().map(|r| StepMetrics { tokens_per_second: 0.0, ..r }).collect::<Vec<_>>();
    assert_eq!(strip(metrics(&s.path("resumed"))), strip(m.clone()));

    // The same folder with other settings is refused; the finished run is left alone.
    let err = failed(s.wrpo("whole", &["--label-smoothing", "0.1"]));
    assert!(err.contains("other settings"), "{err}");
    // So is the same command on changed pairs.
    let mut changed = read_dataset::<Pair>(Path::new(&s.path("pairs-ref.parquet"))).unwrap();
    changed[0].y_ws_reward = 0.5;
    write_dataset(Path::new(&s.path("pairs-ref.parquet")), &changed, &Provenance::new("test", &json!({})).unwrap()).unwrap();
    let err = failed(s.wrpo("whole", &["--eval-pairs", &s.path("eval-ref.parquet"), "--save-every", "4"]));
    assert!(err.contains("other settings"), "{err}");

    // The checkpoint reloads with the same logits as the trained model would give.
    let ids = Tensor::new(&[[1u32, 5, 9, 40, 7]], &Device::Cpu).unwrap();
    let logits = a.forward(&ids, &ids.ones_like().unwrap()).unwrap();
    assert!(logits.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|v| v.is_finite()));
    let tok_cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(&s.path("whole/final/tokenizer_config.json"))).unwrap()).unwrap();
    assert!(tok_cfg["chat_template"].as_str().unwrap().contains("<|im_start|>"));
}

#[test]
fn baselines_run_from_the_same_pairs_and_simpo_needs_no_reference() {
    let s = Setup::new();
    for (name, loss, extra) in
        [("dpo", "dpo", "--dpo-chosen=source"), ("ipo", "ipo", "--label-smoothing=0"), ("mix", "sigmoid-mix", "--static-alpha")]
    {
        ok(s.wrpo(name, &["--loss", loss, extra]));
        let m = metrics(&s.path(name));
        assert_eq!(m.len(), 12);
        assert_eq!(m[0].stage, loss);
        // Pairwise losses do not use alpha; the mix does.
        assert_eq!(m[0].alpha.is_some(), loss == "sigmoid-mix", "{loss}");
        assert!(m.iter().all(|r| r.rewards_accuracies.is_some()));
    }
    // SimPO on pairs without reference columns.
    let out = s.path("simpo");
    ok(train_bin(&[
        "wrpo",
        "--model",
        &s.model,
        "--pairs",
        &s.path("pairs.parquet"),
        "--out",
        &out,
        "--loss",
        "simpo",
        "--micro-batch",
        "8",
        "--grad-accum",
        "1",
        "--beta",
        "2",
    ]));
    // WRPO on them is refused, naming the file and the column.
    let err = failed(train_bin(&["wrpo", "--model", &s.model, "--pairs", &s.path("pairs.parquet"), "--out", &s.path("x")]));
    assert!(err.contains("pairs.parquet") && err.contains("ref_logp_y_ws") && err.contains("ref-logps"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn sft_lowers_the_held_out_loss() {
    let s = Setup::new();
    let out = s.path("sft");
    let (data, eval_data) = (s.path("sft.parquet"), s.path("eval-sft.parquet"));
    let args = ["sft", "--model", &s.model, "--data", &data, "--eval-data", &eval_data, "--out", &out, "--lr", "3e-3"];
    ok(train_bin(&[&args[..], &SMALL_STEPS[..]].concat()));
    let m = metrics(&out);
    let eval: Vec<&StepMetrics> = m.iter().filter(|r| r.stage == "eval_sft").collect();
    assert!(eval.len() >= 2);
    let (first, last) = (eval[0].loss, eval.last().unwrap().loss);
    assert!(last < 0.5 * first, "held-out token loss {first} -> {last}");
    assert!(m.iter().all(|r| r.rewards_accuracies.is_none()));
    // Target-SFT loads back as a model the sampler can use.
    Model::load(&Path::new(&out).join("final"), &LoadOptions::trainable(DType::F32)).unwrap();
    // The recipe's packed form: conversations in blocks of 64 tokens, loss on every token.
    let packed = s.path("sft-packed");
    let args = [
        "sft",
        "--model",
        &s.model,
        "--data",
        &data,
        "--out",
        &packed,
        "--lr",
        "3e-3",
        "--packing",
        "--max-length",
        "64",
        "--max-prompt-length",
        "32",
    ];
    ok(train_bin(&[&args[..], &SMALL_STEPS[..]].concat()));
    let m = metrics(&packed);
    assert!(m.last().unwrap().epoch == 3.0 && m.last().unwrap().loss < 0.7 * m[0].loss, "{m:?}");
    let err = failed(train_bin(&["sft", "--model", &s.model, "--data", &data, "--out", &packed, "--cross-document-attention"]));
    assert!(err.contains("--packing"), "{err}");
}

#[test]
fn bad_inputs_are_named() {
    let s = Setup::new();
    let prov = Provenance::new("test", &json!({})).unwrap();
    // An empty response.
    let mut bad = read_dataset::<Pair>(Path::new(&s.path("pairs-ref.parquet"))).unwrap();
    bad[3].y_l = "  ".into();
    write_dataset(Path::new(&s.path("bad.parquet")), &bad, &prov).unwrap();
    let err = failed(train_bin(&["wrpo", "--model", &s.model, "--pairs", &s.path("bad.parquet"), "--out", &s.path("o1")]));
    assert!(err.contains("row 3") && err.contains("q3") && err.contains("y_l") && err.contains("empty"), "{err}");
    // A NaN reference.
    let mut bad = read_dataset::<Pair>(Path::new(&s.path("pairs-ref.parquet"))).unwrap();
    bad[5].ref_logp_y_wt = Some(f64::NAN);
    write_dataset(Path::new(&s.path("nan.parquet")), &bad, &prov).unwrap();
    let err = failed(train_bin(&["wrpo", "--model", &s.model, "--pairs", &s.path("nan.parquet"), "--out", &s.path("o2")]));
    assert!(err.contains("row 5") && err.contains("ref_logp_y_wt"), "{err}");
    // A subsample larger than the pairs.
    let err =
        failed(train_bin(&["wrpo", "--model", &s.model, "--pairs", &s.path("pairs-ref.parquet"), "--out", &s.path("o4"), "--subsample", "999"]));
    assert!(err.contains("--subsample 999") && err.contains("pairs-ref.parquet") && err.contains("only"), "{err}");
    // A prompt limit that leaves no room for a response.
    let err = failed(train_bin(&[
        "wrpo",
        "--model",
        &s.model,
        "--pairs",
        &s.path("pairs-ref.parquet"),
        "--out",
        &s.path("o3"),
        "--max-length",
        "12",
        "--max-prompt-length",
        "12",
    ]));
    assert!(err.contains("--max-prompt-length (12) must be below --max-length (12)"), "{err}");
    // A model loaded for quantized inference cannot be trained.
    let gguf = common::fixtures("llm/gguf");
    if let Some(q8) = std::fs::read_dir(&gguf).unwrap().filter_map(|e| e.ok()).map(|e| e.path()).find(|p| p.to_string_lossy().contains("q8")) {
        let model = Model::load(&q8, &LoadOptions::quantized(None)).unwrap();
        let err = model.response_logprobs(&[(&[1u32][..], &[2u32, 3][..])]).unwrap_err().to_string();
        assert!(err.contains("quantized"), "{err}");
    }
    for o in ["o1", "o2", "o3"] {
        assert!(!Path::new(&s.path(o)).join("final").exists());
    }
}

/// Reference log-probs computed with another model, template, truncation or
/// tokenization shift every implicit reward silently: `wrpo` refuses each,
/// naming it, and at the first step checks that the policy (which starts as
/// the reference) gives the pairs' reference log-probs.
#[test]
fn reference_log_probs_that_disagree_with_the_run_are_refused() {
    let s = Setup::new();
    let refs = |model: &str, pairs: &str, out: &str, extra: &[&str]| {
        let (pairs, out) = (s.path(pairs), s.path(out));
        let args = [&["ref-logps", "--model", model, "--pairs", &pairs, "--out", &out][..], extra].concat();
        ok(train_bin(&args));
    };
    let wrpo = |pairs: &str, extra: &[&str]| {
        let (pairs, out) = (s.path(pairs), s.path("out"));
        let args = [&["wrpo", "--model", &s.model, "--pairs", &pairs, "--out", &out][..], &SMALL_STEPS[..], extra].concat();
        failed(train_bin(&args))
    };
    // Other length settings.
    let err = wrpo("pairs-ref.parquet", &["--max-length", "1024", "--max-prompt-length", "512"]);
    assert!(err.contains("pairs-ref.parquet") && err.contains("--max-length 2048 --max-prompt-length 1800, this run uses 1024 and 512"), "{err}");
    // Another chat template (same weights).
    let templated = s.dir.path().join("templated");
    std::fs::create_dir(&templated).unwrap();
    for entry in std::fs::read_dir(&s.model).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, templated.join(path.file_name().unwrap())).unwrap();
    }
    let config = templated.join("tokenizer_config.json");
    let text = std::fs::read_to_string(&config).unwrap().replace("'<|im_start|>' + message['role']", "'<|im_start|>' + message['role'] + ' '");
    std::fs::write(&config, text).unwrap();
    refs(templated.to_str().unwrap(), "pairs.parquet", "templated.parquet", &[]);
    let err = wrpo("templated.parquet", &[]);
    assert!(err.contains("another tokenizer or chat template"), "{err}");
    // Another model.
    let other = wrpo_llm::tiny::tiny_llama(&s.dir.path().join("other"), &common::fixtures("tokenizer/tiny-bpe"), 128, 12).unwrap();
    refs(other.to_str().unwrap(), "pairs.parquet", "other.parquet", &[]);
    let err = wrpo("other.parquet", &[]);
    assert!(err.contains("a reference model (sha256") && err.contains("other than the model this run starts from"), "{err}");
    // Another matmul precision: a bf16 forward's log-probs are not an f32 one's. With
    // its own bf16 reference, a bf16 run passes the first step's check and trains
    // (on the emulated kernel where the CPU has no bf16 units).
    let err = wrpo("pairs-ref.parquet", &["--precision", "bf16"]);
    assert!(err.contains("computed with f32 matmuls, this run uses bf16"), "{err}");
    refs(&s.model, "pairs.parquet", "bf16.parquet", &["--precision", "bf16"]);
    ok(s.wrpo_on("bf16.parquet", "bf16-run", &["--precision", "bf16"]));
    let run: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(Path::new(&s.path("bf16-run")).join("run.json")).unwrap()).unwrap();
    assert_eq!(run["train"]["precision"], "bf16", "{run}");
    // A response whose recorded token count is not this run's.
    let file = read_file::<Pair>(Path::new(&s.path("pairs-ref.parquet"))).unwrap();
    let mut rows = file.rows.clone();
    rows[2].ref_tokens_y_l = Some(999);
    write_dataset(Path::new(&s.path("counts.parquet")), &rows, &file.provenance).unwrap();
    let err = wrpo("counts.parquet", &[]);
    assert!(err.contains("row 2") && err.contains("'ref_tokens_y_l'") && err.contains("999"), "{err}");
    // Log-probs that are not the starting policy's, under a record that matches.
    let mut rows = file.rows.clone();
    rows.iter_mut().for_each(|p| p.ref_logp_y_l = p.ref_logp_y_l.map(|v| v + 3.0));
    write_dataset(Path::new(&s.path("shifted.parquet")), &rows, &file.provenance).unwrap();
    let err = wrpo("shifted.parquet", &[]);
    assert!(err.contains("at the first step the policy is the reference") && err.contains("ref-logps"), "{err}");
    assert!(!Path::new(&s.path("out")).join("final").exists());
}

/// Every training setting is range-checked before the model loads (the
/// model path here does not exist, so only a check that comes first can
/// answer), and a run that failed before its first checkpoint neither
/// claims one nor blocks its corrected rerun.
#[test]
fn bad_settings_are_refused_first_and_a_failed_run_does_not_block_its_rerun() {
    let s = Setup::new();
    let pairs = s.path("pairs-ref.parquet");
    for (flag, value, expected) in [
        ("--lr", "nan", "--lr must be a positive number, got NaN"),
        ("--lr", "-1", "--lr must be a positive number, got -1"),
        ("--beta", "0", "--beta must be a positive number, got 0"),
        ("--beta", "-0.1", "--beta must be a positive number"),
        ("--alpha-max", "2", "--alpha-max must be in [0, 1], got 2"),
        ("--alpha-max", "-0.5", "--alpha-max must be in [0, 1]"),
        ("--warmup-ratio", "1", "--warmup-ratio must be in [0, 1)"),
        ("--label-smoothing", "0.5", "--label-smoothing must be in [0, 0.5)"),
        ("--epochs", "0", "--epochs must be a positive number"),
        ("--micro-batch", "0", "--micro-batch must be at least 1"),
        ("--grad-accum", "0", "--grad-accum must be at least 1"),
        ("--adam-eps", "0", "--adam-eps must be a positive number"),
    ] {
        let arg = format!("{flag}={value}");
        let err = failed(train_bin(&["wrpo", "--model", "/no/such/model", "--pairs", &pairs, "--out", &s.path("never"), &arg]));
        assert!(err.contains(expected), "{arg}: {err}");
    }
    assert!(!Path::new(&s.path("never")).exists());
    // An output that cannot be written is found out before the reference log-probs are computed.
    let err = failed(train_bin(&["ref-logps", "--model", "/no/such/model", "--pairs", &s.path("pairs.parquet"), "--out", "/proc/nope/refs.parquet"]));
    assert!(err.contains("--out /proc/nope/refs.parquet: cannot write in /proc"), "{err}");
    // A reference that does not match stops the run at step 0, before any checkpoint.
    let file = read_file::<Pair>(Path::new(&pairs)).unwrap();
    let mut rows = file.rows.clone();
    rows.iter_mut().for_each(|p| p.ref_logp_y_l = p.ref_logp_y_l.map(|v| v + 3.0));
    write_dataset(Path::new(&s.path("shifted.parquet")), &rows, &file.provenance).unwrap();
    let err = failed(s.wrpo_on("shifted.parquet", "rerun", &[]));
    assert!(err.contains("no checkpoint was saved yet") && !err.contains("is kept in"), "{err}");
    // The corrected command, with other settings too, runs in the same folder.
    ok(s.wrpo_on("pairs-ref.parquet", "rerun", &["--label-smoothing", "0.1"]));
    assert!(Path::new(&s.path("rerun/final")).exists());
}

/// A GGUF file cut short (in its header, or in its tensors) is named as such
/// by the trainer too, in one line even with RUST_BACKTRACE=1 (candle then
/// captures backtraces, which `-v` would print).
#[test]
fn a_cut_gguf_is_named_in_one_line_even_with_backtraces_on() {
    let s = Setup::new();
    let whole = std::fs::read(common::fixtures("llm/gguf/llama.q8_0.gguf")).unwrap();
    for (name, keep) in [("header.gguf", 200), ("tensors.gguf", whole.len() / 2)] {
        let cut = s.dir.path().join(name);
        std::fs::write(&cut, &whole[..keep]).unwrap();
        let run = |verbose: bool| {
            let mut args = vec!["sft", "--model", cut.to_str().unwrap(), "--data", &s.path("sft.parquet"), "--out", &s.path("o")]
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>();
            if verbose {
                args.push("-v".into());
            }
            Command::new(env!("CARGO_BIN_EXE_wrpo-train")).args(&args).env("RUST_BACKTRACE", "1").output().unwrap()
        };
        let err = failed(run(false));
        assert!(err.contains(name) && err.contains("cut short"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(failed(run(true)).contains("cut short"), "-v says the same, with whatever backtrace there is");
    }
}

/// A real TRL log (`data/fixtures/trl/trainer_state.json`: wrpo_trl's three
/// WRPO steps with an evaluation after each, written by `make
/// test-gpu-path`) becomes our metrics dataset, numbered as our runs number
/// their rows, and its plot.
#[test]
fn a_trl_runs_log_becomes_a_metrics_dataset_and_its_plot() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gpu/metrics.parquet");
    let state = common::fixtures("trl/trainer_state.json");
    ok(train_bin(&["import-metrics", state.to_str().unwrap(), "--out", out.to_str().unwrap()]));
    let file = read_file::<StepMetrics>(&out).unwrap();
    let log: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let logged: Vec<&serde_json::Value> = log["log_history"].as_array().unwrap().iter().filter(|e| e.get("loss").is_some()).collect();
    let train: Vec<&StepMetrics> = file.rows.iter().filter(|m| m.stage == "wrpo").collect();
    let eval: Vec<&StepMetrics> = file.rows.iter().filter(|m| m.stage == "eval_wrpo").collect();
    assert_eq!((train.len(), eval.len(), file.rows.len()), (3, 3, 6), "{:?}", file.rows);
    for (k, (m, e)) in train.iter().zip(&logged).enumerate() {
        // TRL's step t (1-based, after the update) is our step index t - 1.
        assert_eq!(m.step, k as u64);
        assert_eq!((m.loss, m.lr, m.grad_norm), (e["loss"].as_f64().unwrap(), e["learning_rate"].as_f64().unwrap(), e["grad_norm"].as_f64()));
        // The run's alpha rose as alpha_max * t / T with alpha_max 0.5 and T = 3.
        assert!((m.alpha.unwrap() - 0.5 * k as f64 / 3.0).abs() < 1e-12, "{m:?}");
        assert_eq!(m.rewards_source_chosen, e["rewards/source_chosen"].as_f64());
        assert_eq!(m.rewards_pivot_accuracies, e["rewards/pivot_accuracies"].as_f64());
        assert_eq!(m.logps_target_chosen, e["logps/target_chosen"].as_f64());
        assert!(m.tokens_per_second.is_nan(), "TRL logs no throughput");
    }
    // Evaluations are numbered by the steps done before them, with no learning rate or gradient.
    assert_eq!(eval.iter().map(|m| m.step).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(eval.iter().all(|m| m.grad_norm.is_none() && m.rewards_margins.is_some()));
    assert_eq!(file.provenance.inputs[0].sha256, wrpo_common::io::content_sha256(&state).unwrap());
    let png = std::fs::read(out.with_extension("png")).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "the plot is a PNG with something drawn");

    // A file that is not a Trainer's state is named, and nothing is written.
    std::fs::write(dir.path().join("other.json"), "{\"epoch\": 1}").unwrap();
    let bad = dir.path().join("bad/metrics.parquet");
    let err = failed(train_bin(&["import-metrics", dir.path().join("other.json").to_str().unwrap(), "--out", bad.to_str().unwrap()]));
    assert!(err.contains("other.json") && err.contains("log_history"), "{err}");
    assert!(!bad.exists());
    // --out ending in .png: the dataset and its plot would be one file.
    let png_out = dir.path().join("m.png");
    let err = failed(train_bin(&["import-metrics", state.to_str().unwrap(), "--out", png_out.to_str().unwrap()]));
    assert!(err.contains("--out and its plot") && err.contains("m.png"), "{err}");
    assert!(!png_out.exists());
}

/// An ablation's subsample: the same pairs whatever the file's order, kept in
/// that order, spread over the file rather than its first rows.
#[test]
fn a_subsample_is_fixed_by_the_prompt_ids() {
    let all = pairs(0..40);
    let ids = |rows: &[Pair]| rows.iter().map(|p| p.prompt_id.clone()).collect::<Vec<_>>();
    let picked = wrpo_trainer::data::subsample(all.clone(), 10);
    assert_eq!(picked.len(), 10);
    let order: Vec<usize> = picked.iter().map(|p| p.prompt_id[1..].parse().unwrap()).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "not in the file's order: {order:?}");
    assert!(*order.last().unwrap() >= 20, "only the first rows were taken: {order:?}");
    let mut reversed = all.clone();
    reversed.reverse();
    let mut again = ids(&wrpo_trainer::data::subsample(reversed, 10));
    again.sort();
    let mut want = ids(&picked);
    want.sort();
    assert_eq!(again, want);
    assert_eq!(wrpo_trainer::data::subsample(all.clone(), 40).len(), 40);
}
