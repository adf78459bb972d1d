//! Reward models against transformers / sentence-transformers (committed
//! fixtures of scripts/fixtures/make_reward_fixtures.py), and `wrpo-score
//! score` end to end through the binary.

mod common;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use candle_core::DType;
use serde_json::{json, Value};
use wrpo_common::{
    io::{dataset_files, read_file},
    prompts::Prompt,
    read_dataset,
    samples::{FinishReason, Sample},
    scored::ScoredSample,
    write_dataset, Message, Provenance, Role,
};
use wrpo_scorer::reward::{Item, Reward, RewardModel, Similarity};

use common::{failed, ok, train_prompts};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(name: &str) -> PathBuf {
    repo().join("data/fixtures/reward").join(name)
}

fn expected(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("expected.json")).unwrap()).unwrap()
}

fn messages(turns: &Value) -> Vec<Message> {
    turns
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let role = match t["role"].as_str().unwrap() {
                "system" => Role::System,
                "user" => Role::User,
                _ => Role::Assistant,
            };
            Message::new(role, t["content"].as_str().unwrap())
        })
        .collect()
}

#[test]
fn reward_models_equal_transformers_with_padding_in_the_batch() {
    for name in ["llama_seqcls", "qwen2_seqcls", "gemma2_seqcls", "armorm"] {
        let rm = RewardModel::load(&fixture(name), DType::F32).unwrap();
        let e = expected(name);
        let convs: Vec<Vec<Message>> = e["conversations"].as_array().unwrap().iter().map(messages).collect();
        // The conversation's ids, as apply_chat_template gives them.
        let items: Vec<(Vec<Message>, String)> = convs.iter().map(|c| (c[..c.len() - 1].to_vec(), c.last().unwrap().content.clone())).collect();
        let items: Vec<Item> = items.iter().map(|(m, r)| Item { messages: m, response: r, reference: None }).collect();
        for (item, want) in items.iter().zip(e["ids"].as_array().unwrap()) {
            let want: Vec<u32> = serde_json::from_value(want.clone()).unwrap();
            assert_eq!(rm.conversation_ids(item).unwrap(), want, "{name}");
        }
        // All four in one padded batch (lengths differ), as transformers scored them.
        let got = rm.score(&items).unwrap();
        let want: Vec<f64> = serde_json::from_value(e["rewards"].clone()).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-4, "{name}: reward {g} vs transformers' {w}");
        }
        // Alone, each gives the same reward.
        let alone = |item: &Item| rm.score(std::slice::from_ref(item)).unwrap()[0];
        for (item, w) in items.iter().zip(&want) {
            assert!((alone(item) - w).abs() <= 1e-4, "{name}: alone {} vs {w}", alone(item));
        }
        // Two samples per prompt, batched together, share the prompt's
        // prefill (and ArmoRM's gate, read inside it): the same rewards as alone.
        let shared: Vec<Item> = items
            .iter()
            .flat_map(|i| [items[3].response, i.response].map(|response| Item { messages: i.messages, response, reference: None }))
            .collect();
        for (item, together) in shared.iter().zip(rm.score(&shared).unwrap()) {
            assert!((together - alone(item)).abs() <= 1e-5, "{name}: {together} with its prompt's other sample vs {} alone", alone(item));
        }
    }
}

#[test]
fn sentence_embeddings_equal_sentence_transformers() {
    for name in ["bert_mean", "bert_cls"] {
        let sim = Similarity::load(&fixture(name), DType::F32).unwrap();
        let e = expected(name);
        let texts: Vec<&str> = e["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        let want: Vec<Vec<f32>> = serde_json::from_value(e["embeddings"].clone()).unwrap();
        let got = sim.embed(&texts).unwrap();
        for ((g, w), text) in got.iter().zip(&want).zip(&texts) {
            let err = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(err <= 1e-4, "{name}: '{text}' differs by {err}");
        }
        // The reward is the cosine of the two embeddings.
        let m = [Message::new(Role::User, "q")];
        let item = Item { messages: &m, response: texts[0], reference: Some(texts[1]) };
        let dot: f32 = want[0].iter().zip(&want[1]).map(|(a, b)| a * b).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cos = dot / (norm(&want[0]) * norm(&want[1]));
        assert!((sim.score(&[item]).unwrap()[0] - cos as f64).abs() < 1e-4, "{name}");
    }
}

/// A copy of a sentence-transformers fixture with its 1_Pooling/config.json replaced.
fn with_pooling_config(name: &str, config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
    for f in ["config.json", "model.safetensors", "modules.json", "sentence_bert_config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture(name).join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("1_Pooling/config.json"), config).unwrap();
    dir
}

/// sentence-transformers 6 writes `"pooling_mode": "mean"` (this is what its
/// Pooling.save writes) where older versions wrote one bool key per mode:
/// both give the same embeddings; modes we do not implement are named.
#[test]
fn both_pooling_config_formats_are_read_and_unknown_modes_named() {
    let texts = ["The capital of France is Paris.", "Bananas are rich in potassium."];
    for (name, mode) in [("bert_mean", "mean"), ("bert_cls", "cls")] {
        let current = format!("{{\n    \"embedding_dimension\": 32,\n    \"pooling_mode\": \"{mode}\",\n    \"include_prompt\": true\n}}");
        let dir = with_pooling_config(name, &current);
        let (old, new) = (Similarity::load(&fixture(name), DType::F32).unwrap(), Similarity::load(dir.path(), DType::F32).unwrap());
        assert_eq!(old.embed(&texts).unwrap(), new.embed(&texts).unwrap(), "{name}");
    }
    for (config, named) in [
        (r#"{"embedding_dimension": 32, "pooling_mode": "lasttoken"}"#, "'pooling_mode' is \"lasttoken\", which is not implemented"),
        (r#"{"embedding_dimension": 32, "pooling_mode": ["cls", "max"]}"#, "'pooling_mode' is [\"cls\",\"max\"]"),
        (r#"{"word_embedding_dimension": 32, "pooling_mode_weightedmean_tokens": true}"#, "'pooling_mode_weightedmean_tokens' is on"),
        (r#"{"word_embedding_dimension": 32, "pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true}"#, "exactly one pooling mode"),
        (r#"{"word_embedding_dimension": 32}"#, "exactly one pooling mode"),
    ] {
        let dir = with_pooling_config("bert_mean", config);
        let err = format!("{:#}", Similarity::load(dir.path(), DType::F32).err().expect("refused"));
        assert!(err.contains(named) && err.contains("1_Pooling/config.json"), "{config}: {err}");
    }
}

#[test]
fn an_unsupported_reward_architecture_is_named() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture("llama_seqcls").join(f), dir.path().join(f)).unwrap();
    }
    let path = dir.path().join("config.json");
    let text = std::fs::read_to_string(&path).unwrap().replace("LlamaForSequenceClassification", "LlamaForCausalLM");
    std::fs::write(&path, text).unwrap();
    let err = RewardModel::load(dir.path(), DType::F32).err().unwrap().to_string();
    assert!(err.contains("'LlamaForCausalLM'") && err.contains("Gemma2ForSequenceClassification"), "{err}");
}

#[test]
#[ignore = "needs the demo reward model: make models"]
fn minilm_scores_a_correct_answer_above_an_unrelated_one() {
    let sim = Similarity::load(&repo().join("models/all-minilm-l6-v2"), DType::F32).unwrap();
    let m = [Message::new(Role::User, "q")];
    for (reference, right, wrong) in [
        ("Paris", "The capital of France is Paris.", "Bananas are rich in potassium."),
        ("Water boils at 100 degrees Celsius at sea level.", "At sea level, water boils at 100 °C.", "The Great Wall is in China."),
        ("Jupiter is the largest planet in the solar system.", "The biggest planet is Jupiter.", "Photosynthesis happens in leaves."),
    ] {
        let score = |r: &str| sim.score(&[Item { messages: &m, response: r, reference: Some(reference) }]).unwrap()[0];
        assert!(score(right) > score(wrong) + 0.2, "{reference}: {} vs {}", score(right), score(wrong));
    }
}

// ---- the binary ----

struct Run {
    dir: tempfile::TempDir,
}

impl Run {
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

const ANSWERS: &[(&str, &str, &[&str])] = &[
    ("What is 2+2?", "4", &["4", "It is 4.", "5", "four"]),
    ("Capital of France?", "Paris", &["Paris", "Lyon", "paris.", "It is Paris, of course, the largest city of France."]),
    ("Name a colour.", "red", &["red", "blue", "Red!", "green"]),
    ("Square root of 81?", "9", &["9", "nine", "It is 9", "3"]),
    ("Largest planet?", "Jupiter", &["Jupiter", "Saturn", "jupiter", "It's Jupiter"]),
];

/// A prompts file and two models' samples (one skipped sample among them).
fn setup() -> Run {
    let run = Run { dir: tempfile::tempdir().unwrap() };
    let prov = Provenance::new("test", &json!({})).unwrap();
    let prompts = train_prompts(ANSWERS.iter().map(|(q, r, _)| (*q, *r)));
    write_dataset(Path::new(&run.path("prompts.parquet")), &prompts, &prov).unwrap();
    for model in ["a", "b"] {
        let mut samples = vec![];
        for (i, (_, _, responses)) in ANSWERS.iter().enumerate() {
            for (k, r) in responses.iter().enumerate() {
                let skipped = model == "b" && i == 0 && k == 3;
                samples.push(Sample {
                    prompt_id: format!("p{i}"),
                    model: model.into(),
                    sample_index: k as u32,
                    prompt_text: String::new(),
                    response: if skipped { String::new() } else { format!("{r}{}", if model == "b" { " (b)" } else { "" }) },
                    prompt_tokens: 3,
                    response_tokens: 2,
                    finish_reason: if skipped { FinishReason::Skipped } else { FinishReason::Stop },
                    skip_reason: skipped.then(|| "too long".into()),
                    temperature: 0.8,
                    top_p: 0.95,
                    top_k: 0,
                    seed: 42,
                    generation_seconds: 0.1,
                });
            }
        }
        write_dataset(Path::new(&run.path(&format!("samples/{model}/part-00000.parquet"))), &samples, &prov).unwrap();
    }
    run
}

fn score_bin(run: &Run, out: &str, reward: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wrpo-score"))
        .args(["score", "--prompts", &run.path("prompts.parquet"), "--samples", &run.path("samples"), "--reward", reward, "--out", out])
        .args(extra)
        .output()
        .unwrap()
}

fn rows(dir: &str) -> BTreeMap<(String, String, u32), ScoredSample> {
    let mut map = BTreeMap::new();
    for s in read_dataset::<ScoredSample>(Path::new(dir)).unwrap() {
        let key = (s.prompt_id.clone(), s.model.clone(), s.sample_index);
        assert!(map.insert(key.clone(), s).is_none(), "duplicate row {key:?}");
    }
    map
}

#[test]
fn verifiers_score_every_sample_and_write_a_summary() {
    let run = setup();
    let out = run.path("exact");
    // A served reward's flag on a verifier is said to change nothing, not silently dropped.
    let printed = String::from_utf8_lossy(&ok(score_bin(&run, &out, "exact", &["--timeout", "30", "--concurrency", "2"])).stderr).into_owned();
    assert!(printed.contains("warning: --concurrency, --timeout applies to served models"), "{printed}");
    let got = rows(&out);
    assert_eq!(got.len(), 39, "40 samples, one skipped");
    assert_eq!(got[&("p1".into(), "a".into(), 2)].reward, 1.0); // "paris." vs "Paris"
    assert_eq!(got[&("p1".into(), "a".into(), 1)].reward, 0.0);
    assert!(got.values().all(|r| r.reward_model == "exact"));
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(Path::new(&out).join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["models"]["b"]["skipped"], 1);
    assert_eq!(summary["models"]["a"]["scored"], 20);
    // Prompts whose reference holds no number cannot be checked by `numeric`.
    let numeric = run.path("numeric");
    let err = failed(score_bin(&run, &numeric, "numeric", &[]));
    assert!(err.contains("prompt p1 has no reference answer numeric:0.000001 can check") && err.contains("Paris"), "{err}");
    ok(score_bin(&run, &numeric, "numeric", &["--skip-unreferenced"]));
    let got = rows(&numeric);
    assert_eq!(got.len(), 15, "p0 and p3 only");
    assert_eq!(got[&("p0".into(), "a".into(), 1)].reward, 1.0); // "It is 4."
    assert_eq!(got[&("p0".into(), "a".into(), 3)].reward, 0.0); // "four"
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(Path::new(&numeric).join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["models"]["a"]["unreferenced"], 12);
    let file = read_file::<ScoredSample>(&dataset_files(Path::new(&numeric)).unwrap()[0]).unwrap();
    assert_eq!(file.provenance.config["settings"]["reward"]["kind"], "numeric");
    assert_eq!(file.provenance.inputs.len(), 2);
}

#[test]
fn a_killed_run_rerun_ends_with_the_rows_of_an_uninterrupted_run() {
    let run = setup();
    let rm = format!("rm:{}", fixture("llama_seqcls").display());
    let whole = run.path("whole");
    ok(score_bin(&run, &whole, &rm, &["--batch-tokens", "64"]));
    let partial = run.path("partial");
    let crashed = score_bin(&run, &partial, &rm, &["--batch-tokens", "64", "--shard-rows", "4", "--abort-after-shards", "2"]);
    assert!(!crashed.status.success());
    let before = rows(&partial).len();
    assert!(before > 0 && before < 39, "{before} rows after the crash");
    ok(score_bin(&run, &partial, &rm, &["--batch-tokens", "64", "--shard-rows", "4"]));
    assert_eq!(rows(&partial), rows(&whole));
    // The same reward model named by another path: the same run (compared by content), nothing to redo.
    let respelled = format!("rm:{}", fixture("llama_seqcls").join(".").display());
    ok(score_bin(&run, &partial, &respelled, &["--batch-tokens", "64"]));
    assert_eq!(rows(&partial), rows(&whole));
    // Resumed with other batches: no row twice, none missing.
    let other = run.path("other");
    assert!(!score_bin(&run, &other, &rm, &["--batch-tokens", "64", "--shard-rows", "4", "--abort-after-shards", "2"]).status.success());
    ok(score_bin(&run, &other, &rm, &["--batch-tokens", "150"]));
    let (a, b) = (rows(&other), rows(&whole));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    assert!(a.iter().all(|(k, v)| (v.reward - b[k].reward).abs() < 1e-4));
    // Another reward into the same folder is refused.
    let err = failed(score_bin(&run, &partial, "exact", &[]));
    assert!(err.contains("other settings"), "{err}");
    // --shard i/n: disjoint parts whose union is the whole run.
    let (s0, s1) = (run.path("s0"), run.path("s1"));
    ok(score_bin(&run, &s0, &rm, &["--shard", "0/2"]));
    ok(score_bin(&run, &s1, &rm, &["--shard", "1/2"]));
    let (r0, r1) = (rows(&s0), rows(&s1));
    assert!(!r0.is_empty() && !r1.is_empty());
    assert!(r0.keys().all(|k| !r1.contains_key(k)));
    assert_eq!(r0.len() + r1.len(), 39);
    for (k, v) in r0.iter().chain(&r1) {
        assert!((v.reward - rows(&whole)[k].reward).abs() < 1e-4);
    }
    // Another shard into a shard's folder: the message names the shard, not the reward.
    let err = failed(score_bin(&run, &s0, &rm, &["--shard", "1/2"]));
    assert!(err.contains("with other settings (shard: [0,2] there, [1,2] here)"), "{err}");
    // --precision bf16 (emulated where the CPU has no bf16 units): the same rows, rewards
    // within bf16's rounding of the f32 ones; a folder scored in f32 is not resumed in bf16.
    let bf16 = run.path("bf16");
    ok(score_bin(&run, &bf16, &rm, &["--precision", "bf16"]));
    let (a, b) = (rows(&bf16), rows(&whole));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    let worst = a.iter().map(|(k, v)| (v.reward - b[k].reward).abs()).fold(0.0, f64::max);
    let scale = b.values().map(|v| v.reward.abs()).fold(0.0, f64::max);
    assert!(worst > 0.0 && worst <= 0.05 * scale.max(1.0), "bf16 rewards off by {worst} (largest reward {scale})");
    let err = failed(score_bin(&run, &whole, &rm, &["--precision", "bf16"]));
    assert!(err.contains("other settings"), "{err}");
    let err = failed(score_bin(&run, &run.path("x"), "exact", &["--precision", "bf16"]));
    assert!(err.contains("--precision bf16: it applies to a reward model of ours"), "{err}");
}

#[test]
fn bad_inputs_are_one_line_errors_naming_the_culprit() {
    let run = setup();
    // A sample whose prompt is missing.
    let prov = Provenance::new("test", &json!({})).unwrap();
    let mut stray = read_dataset::<Sample>(Path::new(&run.path("samples/a"))).unwrap();
    stray.truncate(1);
    stray[0].prompt_id = "nope".into();
    write_dataset(Path::new(&run.path("samples/c/part-00000.parquet")), &stray, &prov).unwrap();
    let err = failed(score_bin(&run, &run.path("o1"), "exact", &[]));
    assert!(err.contains("samples/c/part-00000.parquet") && err.contains("prompt_id nope"), "{err}");
    // A duplicated key.
    stray[0].prompt_id = "p0".into();
    write_dataset(Path::new(&run.path("samples/c/part-00000.parquet")), &stray, &prov).unwrap();
    let mut dup = stray.clone();
    dup[0].model = "c".into();
    write_dataset(Path::new(&run.path("samples/c/part-00000.parquet")), &dup, &prov).unwrap();
    write_dataset(Path::new(&run.path("samples/c/part-00001.parquet")), &dup, &prov).unwrap();
    let err = failed(score_bin(&run, &run.path("o2"), "exact", &[]));
    assert!(err.contains("as row 0 of") && err.contains("part-00000.parquet") && err.contains("sample_index) = (p0, c, 0)"), "{err}");
    assert!(!Path::new(&run.path("o2")).join("a").exists(), "nothing is written before the inputs are checked");
    std::fs::remove_dir_all(run.path("samples/c")).unwrap();
    // A prompt without a reference, for a reward that needs one.
    let mut prompts = read_dataset::<Prompt>(Path::new(&run.path("prompts.parquet"))).unwrap();
    prompts[2].reference = None;
    write_dataset(Path::new(&run.path("prompts.parquet")), &prompts, &prov).unwrap();
    let err = failed(score_bin(&run, &run.path("o3"), "exact", &[]));
    assert!(err.contains("prompt p2 has no reference answer exact can check") && err.contains("--skip-unreferenced"), "{err}");
    ok(score_bin(&run, &run.path("o4"), "exact", &["--skip-unreferenced"]));
    assert_eq!(rows(&run.path("o4")).len(), 39 - 8);
    // An unsupported reward folder.
    let err = failed(score_bin(&run, &run.path("o5"), &format!("rm:{}", repo().join("data/fixtures/llm/llama").display()), &[]));
    assert!(err.contains("LlamaForCausalLM") && err.lines().count() == 1, "{err}");
}

/// Outputs that would overwrite each other or an input are refused before
/// any work, and nothing is written (sft-set used to keep only the
/// preference prompts in X when both outputs were X).
#[test]
fn outputs_at_one_path_or_over_an_input_are_refused_before_work() {
    let run = setup();
    let wrpo_score = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_wrpo-score")).args(args).output().unwrap();
    let (prompts, x) = (run.path("prompts.parquet"), run.path("x.parquet"));
    let err = failed(wrpo_score(&["sft-set", "--prompts", &prompts, "--source-scores", &run.path("samples"), "--out", &x, "--out-preference", &x]));
    assert!(err.contains("--out and --out-preference are both"), "{err}");
    assert!(!Path::new(&x).exists());
    let err = failed(score_bin(&run, &run.path("samples"), "exact", &[]));
    assert!(err.contains("--out") && err.contains("the input --samples"), "{err}");
    for flag in ["--batch-tokens", "--shard-rows"] {
        let err = failed(score_bin(&run, &run.path("o3"), "exact", &[flag, "0"]));
        assert!(err.contains(&format!("{flag} must be at least 1, got 0")), "{err}");
    }
}

#[test]
fn a_report_over_rewards_of_two_reward_models_is_refused() {
    let run = setup();
    let exact = run.path("exact");
    ok(score_bin(&run, &exact, "exact", &[]));
    // Model b's rows again, as another reward model scored them: one folder, two scales.
    let prov = Provenance::new("test", &json!({})).unwrap();
    let mut other = read_dataset::<ScoredSample>(Path::new(&run.path("exact/b"))).unwrap();
    for r in &mut other {
        r.model = "c".into();
        r.reward_model = "rm:other".into();
    }
    write_dataset(Path::new(&run.path("exact/c/part-00000.parquet")), &other, &prov).unwrap();
    let report = |out: &str| {
        Command::new(env!("CARGO_BIN_EXE_wrpo-score"))
            .args(["report", "--prompts", &run.path("prompts.parquet"), "--scores", &exact, "--baseline", "a", "--out", out])
            .output()
            .unwrap()
    };
    let err = failed(report(&run.path("r1")));
    assert!(err.contains("'rm:other'") && err.contains("'exact'") && err.contains("cannot be compared"), "{err}");
    assert!(!Path::new(&run.path("r1/report.md")).exists());
    std::fs::remove_dir_all(run.path("exact/c")).unwrap();
    ok(report(&run.path("r2")));
    // A name in --order or --sweep that no scored model has is refused, naming the models;
    // a sweep value the plot could not span is refused when parsed.
    let with = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_wrpo-score"))
            .args(["report", "--prompts", &run.path("prompts.parquet"), "--scores", &exact, "--baseline", "a", "--out", &run.path("r3")])
            .args(extra)
            .output()
            .unwrap()
    };
    let err = failed(with(&["--order", "b,nosuch"]));
    assert!(err.contains("--order nosuch: no model of that name was scored (models: a, b)"), "{err}");
    let err = failed(with(&["--sweep", "nosuch=1"]));
    assert!(err.contains("--sweep nosuch: no model of that name"), "{err}");
    let err = failed(with(&["--sweep", "b=9e307"]));
    assert!(err.contains("at most 1e12 in size"), "{err}");
}

#[test]
fn a_folder_another_scorer_holds_is_refused_before_any_model_is_scored() {
    let run = setup();
    let out = run.path("held");
    // Another live process writes model b's folder (this test's own PID stands for it).
    std::fs::create_dir_all(Path::new(&out).join("b")).unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    std::fs::write(Path::new(&out).join("b/.lock"), format!("{} {}", host.trim(), std::process::id())).unwrap();
    let err = failed(score_bin(&run, &out, "exact", &[]));
    assert!(err.contains("is being written by process") && err.contains("held/b"), "{err}");
    // Model a was not scored either: no scorer plans from a folder another one holds.
    assert!(dataset_files(&Path::new(&out).join("a")).is_err(), "model a was scored beside a held folder");
    std::fs::remove_file(Path::new(&out).join("b/.lock")).unwrap();
    ok(score_bin(&run, &out, "exact", &[]));
    assert_eq!(rows(&out).len(), 39);
}

#[test]
fn samples_made_again_under_the_same_keys_are_not_resumed_with_old_rewards() {
    let run = setup();
    let out = run.path("resumed");
    ok(score_bin(&run, &out, "exact", &[]));
    let before = rows(&out);
    // Model a's samples made again: one response differs under the same (prompt_id, sample_index).
    let prov = Provenance::new("test", &json!({})).unwrap();
    let mut samples = read_dataset::<Sample>(Path::new(&run.path("samples/a"))).unwrap();
    samples[5].response = "another answer".into();
    write_dataset(Path::new(&run.path("samples/a/part-00000.parquet")), &samples, &prov).unwrap();
    let err = failed(score_bin(&run, &out, "exact", &[]));
    let (id, k) = (&samples[5].prompt_id, samples[5].sample_index);
    assert!(err.contains(&format!("(prompt_id {id}, sample_index {k})")) && err.contains("resumed/a") && err.contains("made again"), "{err}");
    assert_eq!(rows(&out), before, "nothing was written");
}
