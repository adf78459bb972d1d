//! Served rewards (`src/served.rs`) and judges against loopback stub
//! servers that answer as each engine's documentation (and, for SGLang's
//! softmax, its code) shows: vLLM `/classify` (with `messages` and with
//! `input`), SGLang `/v1/classify`, `/v1/embeddings`, and a chat judge; the
//! stubs' scores come from our own local reward model, so a served run must
//! give a local run's rows.

mod common;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use candle_core::DType;
use serde_json::{json, Value};
use wrpo_common::{
    eval::{JudgeComparison, Judgement, PairedComparison},
    read_dataset,
    samples::{FinishReason, Sample},
    scored::ScoredSample,
    write_dataset, Message, Provenance,
};
use wrpo_llm::Tokenizer;
use wrpo_remote::stub::{serve, Reply, Request};
use wrpo_scorer::reward::{Item, Reward, RewardModel};

use common::{failed, ok, train_prompts};

fn rm_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/fixtures/reward/llama_seqcls")
}

const QUESTIONS: [(&str, &str); 3] = [("What is 2 + 2?", "It is four"), ("Name the capital of France.", "Paris"), ("Say hello.", "Hello!")];
const ANSWERS: [&str; 4] = ["It is 4.", "Paris, I think.", "Hello there!", "No idea, sorry."];

/// Prompts and 4 samples of model "m" per prompt; `special` replaces one sample's text.
fn setup(dir: &Path, special: &[&str]) -> (String, String) {
    setup_n(dir, special, ANSWERS.len())
}

fn setup_n(dir: &Path, special: &[&str], per_prompt: usize) -> (String, String) {
    let prov = Provenance::new("test", &json!({})).unwrap();
    let prompts = train_prompts(QUESTIONS);
    let prompts_path = dir.join("prompts.parquet");
    write_dataset(&prompts_path, &prompts, &prov).unwrap();
    let mut samples = vec![];
    for i in 0..QUESTIONS.len() {
        for (k, a) in ANSWERS.iter().enumerate().take(per_prompt) {
            let response = special.get(i * per_prompt + k).filter(|s| !s.is_empty()).copied().unwrap_or(a);
            samples.push(Sample {
                prompt_id: format!("p{i}"),
                model: "m".into(),
                sample_index: k as u32,
                prompt_text: String::new(),
                response: response.into(),
                prompt_tokens: 3,
                response_tokens: 3,
                finish_reason: FinishReason::Stop,
                skip_reason: None,
                temperature: 0.8,
                top_p: 0.95,
                top_k: 0,
                seed: 1,
                generation_seconds: 0.1,
            });
        }
    }
    let samples_path = dir.join("samples.parquet");
    write_dataset(&samples_path, &samples, &prov).unwrap();
    (prompts_path.display().to_string(), samples_path.display().to_string())
}

fn score(prompts: &str, samples: &str, reward: &str, out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wrpo-score"))
        .args(["score", "--prompts", prompts, "--samples", samples, "--reward", reward, "--out", &out.display().to_string()])
        .args(["--retries", "3", "--batch-items", "4"])
        .args(extra)
        .env_remove("OPENAI_API_KEY")
        .output()
        .unwrap()
}

fn rows(out: &Path) -> BTreeMap<(String, u32), ScoredSample> {
    read_dataset::<ScoredSample>(out).unwrap().into_iter().map(|s| ((s.prompt_id.clone(), s.sample_index), s)).collect()
}

/// The local reward model, and how a server running it scores what it is sent.
struct Served {
    rm: RewardModel,
    tokenizer: Tokenizer,
}

impl Served {
    fn new() -> Self {
        Served { rm: RewardModel::load(&rm_dir(), DType::F32).unwrap(), tokenizer: Tokenizer::load(&rm_dir()).unwrap() }
    }

    /// vLLM's `messages`: the server renders the conversation with the model's template.
    fn score_messages(&self, messages: &Value) -> f64 {
        let turns: Vec<Message> = serde_json::from_value(messages.clone()).unwrap();
        let (last, prompt) = turns.split_last().unwrap();
        self.rm.score(&[Item { messages: prompt, response: &last.content, reference: None }]).unwrap()[0]
    }

    /// `input` text with add_special_tokens false: tokenized as it stands.
    fn score_text(&self, text: &str) -> f64 {
        let ids = self.tokenizer.encode(text, false).unwrap();
        self.rm.score_ids(&[ids], std::slice::from_ref(&(0..1))).unwrap()[0]
    }
}

fn classification(scores: &[f64]) -> String {
    let data: Vec<Value> = scores.iter().enumerate().map(|(i, s)| json!({"index": i, "label": "LABEL_0", "probs": [s], "num_classes": 1})).collect();
    json!({"id": "classify-1", "object": "list", "model": "rm", "data": data, "usage": {"prompt_tokens": 9}}).to_string()
}

/// vLLM (`/classify`) and SGLang (`/v1/classify`) serving the fixture reward
/// model as `rm`, `offset` added to every score; faults scripted by the
/// response text: REFUSED gets 400, BUSY a 429 once, CUT a body cut short
/// once, EMPTY an answer without data once, CRASH a 500 once.
fn classify_server(offset: f64) -> (String, Arc<Mutex<Vec<Value>>>) {
    let served = Served::new();
    let log: Arc<Mutex<Vec<Value>>> = Arc::default();
    let seen = log.clone();
    let url = serve(move |r: &Request| {
        if r.method == "GET" {
            return Reply::ok(r#"{"object":"list","data":[{"id":"rm","object":"model"}]}"#);
        }
        let attempt = {
            let mut seen = seen.lock().unwrap();
            seen.push(r.body.clone());
            seen.iter().filter(|b| **b == r.body).count()
        };
        let text = r.body.to_string();
        let fault = ["REFUSED", "BUSY", "CUT", "EMPTY", "CRASH"].into_iter().find(|f| text.contains(f));
        match (fault, attempt) {
            (Some("REFUSED"), _) => {
                return Reply::status("400 Bad Request", r#"{"object":"error","message":"This model's maximum context length is 8 tokens"}"#)
            }
            (Some("BUSY"), 1) => return Reply::Full { status: "429 Too Many Requests", headers: "retry-after: 0\r\n".into(), body: "{}".into() },
            (Some("EMPTY"), 1) => return Reply::ok(r#"{"object":"list","data":[]}"#),
            (Some("CRASH"), 1) => return Reply::status("500 Internal Server Error", "{}"),
            _ => {}
        }
        let scores: Vec<f64> = match (r.path.as_str(), &r.body["input"]) {
            ("/classify", Value::Null) => vec![served.score_messages(&r.body["messages"])],
            ("/classify", Value::Array(texts)) => texts.iter().map(|t| served.score_text(t.as_str().unwrap())).collect(),
            ("/v1/classify", Value::String(text)) => vec![served.score_text(text)],
            (path, input) => return Reply::status("422 Unprocessable Entity", format!("{{\"error\":\"{path} got input {input}\"}}")),
        };
        // vLLM applies the head's activation (a sigmoid for one label) unless told
        // not to; SGLang always takes a softmax over the labels (1 for one label).
        let scores: Vec<f64> = scores
            .iter()
            .map(|s| match (r.path.as_str(), r.body["use_activation"] == json!(false)) {
                ("/v1/classify", _) => 1.0,
                (_, true) => s + offset,
                (_, false) => 1.0 / (1.0 + (-s).exp()),
            })
            .collect();
        let body = classification(&scores);
        match (fault, attempt) {
            (Some("CUT"), 1) => Reply::Cut { sent: body.len() / 2, body },
            _ => Reply::ok(body),
        }
    });
    (url, log)
}

#[test]
fn served_classifiers_score_as_the_local_reward_model() {
    let dir = tempfile::tempdir().unwrap();
    let (prompts, samples) = setup(dir.path(), &[]);
    let local = dir.path().join("local");
    ok(score(&prompts, &samples, &format!("rm:{}", rm_dir().display()), &local, &[]));
    let want = rows(&local);
    assert_eq!(want.len(), 12);

    let (url, log) = classify_server(0.0);
    let render = rm_dir().display().to_string();
    for (name, reward, extra) in [
        ("vllm-messages", format!("classify:{url}/classify#rm"), vec![]),
        ("vllm-input", format!("classify:{url}/classify#rm"), vec!["--render-with", &render]),
    ] {
        let out = dir.path().join(name);
        ok(score(&prompts, &samples, &reward, &out, &[&extra[..], &["--check-against", &render]].concat()));
        let got = rows(&out);
        assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{name}");
        for (k, r) in &got {
            assert!((r.reward - want[k].reward).abs() < 1e-4, "{name} {k:?}: served {} local {}", r.reward, want[k].reward);
            assert_eq!(r.reward_model, "classify:rm");
        }
    }
    // SGLang: the text rendered here, one per request; its softmax makes every
    // one-label reward 1, which is refused rather than written.
    let out = dir.path().join("sglang");
    let err = failed(score(&prompts, &samples, &format!("classify:{url}/v1/classify#rm"), &out, &["--render-with", &render]));
    assert!(err.contains("applies a softmax") && err.contains("--runner pooling"), "{err}");
    assert!(read_dataset::<ScoredSample>(&out).map_or(true, |rows| rows.is_empty()), "nothing written");
    let requests = log.lock().unwrap();
    // vLLM with text: lists of texts, no second BOS; SGLang: one string, no use_activation.
    assert!(requests.iter().any(|b| b["input"].as_array().is_some_and(|a| a.len() > 1) && b["add_special_tokens"] == json!(false)));
    assert!(requests.iter().any(|b| b["input"].is_string() && b.get("use_activation").is_none()));
    assert!(requests.iter().any(|b| b["messages"].is_array() && b["use_activation"] == json!(false)));

    // SGLang without a local template, a wrong served name, and a server scoring otherwise are refused.
    let out = dir.path().join("refused");
    let err = failed(score(&prompts, &samples, &format!("classify:{url}/v1/classify#rm"), &out, &[]));
    assert!(err.contains("--render-with"), "{err}");
    // A --render-with folder without a chat template, which would render with a fallback.
    let bare = dir.path().join("bare");
    std::fs::create_dir(&bare).unwrap();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(rm_dir().join(f), bare.join(f)).unwrap();
    }
    let mut tok: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(rm_dir().join("tokenizer_config.json")).unwrap()).unwrap();
    tok.as_object_mut().unwrap().remove("chat_template");
    std::fs::write(bare.join("tokenizer_config.json"), tok.to_string()).unwrap();
    let err = failed(score(&prompts, &samples, &format!("classify:{url}/classify#rm"), &out, &["--render-with", &bare.display().to_string()]));
    assert!(err.contains("it has no chat template"), "{err}");
    let err = failed(score(&prompts, &samples, &format!("classify:{url}/classify#other"), &out, &[]));
    assert!(err.contains("serves 'rm', not 'other'"), "{err}");
    let (shifted, _) = classify_server(0.5);
    let err = failed(score(&prompts, &samples, &format!("classify:{shifted}/classify#rm"), &out, &["--check-against", &render]));
    assert!(err.contains("not the same reward model"), "{err}");
    assert!(!out.exists(), "nothing written");
}

#[test]
fn served_faults_are_retried_refusals_skipped_and_a_crashed_run_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let special = ["", "REFUSED answer", "", "", "BUSY answer", "", "", "CUT answer", "", "EMPTY answer", "CRASH answer", ""];
    let (prompts, samples) = setup(dir.path(), &special);
    let (url, _) = classify_server(0.0);
    let render = rm_dir().display().to_string();
    for extra in [vec![], vec!["--render-with", render.as_str()]] {
        let reward = format!("classify:{url}/classify#rm");
        let whole = dir.path().join(format!("whole{}", extra.len()));
        let out = ok(score(&prompts, &samples, &reward, &whole, &extra));
        let got = rows(&whole);
        assert_eq!(got.len(), 12);
        let refused = &got[&("p0".into(), 1)];
        assert_eq!(refused.finish_reason, FinishReason::Skipped);
        assert!(refused.reward.is_nan());
        assert!(got.values().filter(|r| r.response != "REFUSED answer").all(|r| r.reward.is_finite() && r.finish_reason == FinishReason::Stop));
        let summary: Value = serde_json::from_str(&std::fs::read_to_string(whole.join("summary.json")).unwrap()).unwrap();
        assert_eq!(summary["models"]["m"]["refused"], 1);
        assert!(summary["models"]["m"]["refusals"][0].as_str().unwrap().contains("maximum context length"), "{summary}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("skipped (m) prompt_id p0 sample_index 1"));

        // Killed after one committed batch, then run again: the rows of the uninterrupted run.
        let resumed = dir.path().join(format!("resumed{}", extra.len()));
        let crashed = score(&prompts, &samples, &reward, &resumed, &[&extra[..], &["--shard-rows", "4", "--abort-after-shards", "1"]].concat());
        assert!(!crashed.status.success());
        let partial = rows(&resumed).len();
        assert!(partial > 0 && partial < 12, "{partial} rows after the crash");
        ok(score(&prompts, &samples, &reward, &resumed, &[&extra[..], &["--shard-rows", "4"]].concat()));
        let (a, b) = (rows(&resumed), rows(&whole));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        assert!(a.iter().all(|(k, r)| r.finish_reason == b[k].finish_reason && (r.reward.is_nan() || (r.reward - b[k].reward).abs() < 1e-9)));
    }
    // Every sample of the first batch refused: the settings, not the samples, are
    // at fault; no skipped row is committed, so a fixed rerun scores them all.
    let dir_all = tempfile::tempdir().unwrap();
    let (all_prompts, all_samples) = setup(dir_all.path(), &["REFUSED"; 12]);
    let out = dir_all.path().join("all");
    let err = failed(score(&all_prompts, &all_samples, &format!("classify:{url}/classify#rm"), &out, &[]));
    assert!(err.contains("refused all 4 samples of this run's first batch") && err.contains("maximum context length"), "{err}");
    assert!(read_dataset::<ScoredSample>(&out).map_or(true, |rows| rows.is_empty()), "nothing written");
    // A key the server refuses stops the run, naming the variable.
    let keyed = serve(|r: &Request| match r.has_header("authorization: bearer sekrit") {
        true => Reply::ok(r#"{"data":[{"id":"rm"}]}"#),
        false => Reply::status("401 Unauthorized", r#"{"error":{"message":"invalid api key"}}"#),
    });
    let out = dir.path().join("keyed");
    let err = failed(score(&prompts, &samples, &format!("classify:{keyed}/classify#rm"), &out, &[]));
    assert!(err.contains("HTTP 401") && err.contains("invalid api key"), "{err}");
}

/// A letter-count embedding: what the stub's `/v1/embeddings` serves.
fn embedding(text: &str) -> Vec<f32> {
    let mut v = vec![0.0f32; 26];
    for c in text.to_lowercase().chars().filter(char::is_ascii_lowercase) {
        v[(c as u8 - b'a') as usize] += 1.0;
    }
    v
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64) * (*y as f64)).sum();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

#[test]
fn served_embeddings_give_the_cosine_to_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let (prompts, samples) = setup(dir.path(), &["", "", "", "", "", "REFUSED", ""]);
    let url = serve(|r: &Request| {
        if r.method == "GET" {
            return Reply::ok(r#"{"data":[{"id":"minilm"}]}"#);
        }
        let texts: Vec<&str> = r.body["input"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        if texts.contains(&"REFUSED") {
            return Reply::status("400 Bad Request", r#"{"error":"input too long"}"#);
        }
        // Shuffled, as the index field allows.
        let data: Vec<Value> =
            texts.iter().enumerate().rev().map(|(i, t)| json!({"object": "embedding", "index": i, "embedding": embedding(t)})).collect();
        Reply::ok(json!({"object": "list", "data": data, "model": "minilm"}))
    });
    let out = dir.path().join("out");
    ok(score(&prompts, &samples, &format!("similarity:openai:{url}/v1#minilm"), &out, &[]));
    let got = rows(&out);
    assert_eq!(got.len(), 12);
    for ((id, k), r) in &got {
        let reference = QUESTIONS[id[1..].parse::<usize>().unwrap()].1;
        match r.response.as_str() {
            "REFUSED" => assert!(r.finish_reason == FinishReason::Skipped && r.reward.is_nan()),
            text => assert!((r.reward - cosine(&embedding(text), &embedding(reference))).abs() < 1e-6, "{id} {k}"),
        }
        assert_eq!(r.reward_model, "similarity:openai:minilm");
    }
}

/// A chat judge: grades by the answer's text, scripted to write malformed,
/// out-of-range and unreadable verdicts (and a null content cut off by the
/// token limit, as a reasoning judge writes); prefers the answer saying "good"
/// in pairwise verdicts, whichever order it is shown in.
fn judge_server() -> (String, Arc<AtomicUsize>) {
    let asked = Arc::new(AtomicUsize::new(0));
    let count = asked.clone();
    let tries: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let url = serve(move |r: &Request| {
        if r.method == "GET" {
            return Reply::ok(r#"{"data":[{"id":"judge"}]}"#);
        }
        count.fetch_add(1, Ordering::SeqCst);
        let user = r.body["messages"][1]["content"].as_str().unwrap().to_string();
        let attempt = {
            let mut tries = tries.lock().unwrap();
            let n = tries.entry(user.clone()).or_default();
            *n += 1;
            *n
        };
        let verdict = if user.contains("Assistant A's Answer") {
            let a = &user[user.find("[The Start of Assistant A's Answer]").unwrap()..user.find("[The End of Assistant A's Answer]").unwrap()];
            let b = &user[user.find("[The Start of Assistant B's Answer]").unwrap()..user.find("[The End of Assistant B's Answer]").unwrap()];
            match (a.contains("good"), b.contains("good")) {
                (true, false) => "A is better. [[A]]",
                (false, true) => "B is better. [[B]]",
                _ => "Equal. [[C]]",
            }
            .to_string()
        } else {
            let answer = &user[user.find("[The Start of the Assistant's Answer]").unwrap()..];
            assert!(user.contains("[The Start of the Reference Answer]"), "the reference is shown");
            match (answer, attempt) {
                (a, 1) if a.contains("It is 4.") => "Rating: 9".into(),              // malformed, then fine
                (a, 1) if a.contains("Paris, I think.") => "Rating: [[12]]".into(),  // out of range, then fine
                (a, n) if a.contains("Hello there!") && n % 2 == 0 => String::new(), // out of tokens while thinking
                (a, _) if a.contains("Hello there!") => "I cannot decide.".into(),   // never readable
                (a, _) => format!("Fair. Rating: [[{}]]", 2 + a.len() % 7),
            }
        };
        if verdict.is_empty() {
            return Reply::ok(
                json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": null, "reasoning_content": "Hmm"}, "finish_reason": "length"}]}),
            );
        }
        Reply::ok(json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": format!("{verdict}")}, "finish_reason": "stop"}]}))
    });
    (format!("{url}/v1"), asked)
}

#[test]
fn a_judge_grades_answers_and_unreadable_verdicts_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (prompts, samples) = setup(dir.path(), &[]);
    let (url, asked) = judge_server();
    let out = dir.path().join("judged");
    ok(score(&prompts, &samples, &format!("judge:openai:{url}#judge"), &out, &[]));
    // The same server named `localhost`: the same run, resumed with nothing left to ask.
    let before = asked.load(Ordering::SeqCst);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    ok(score(&prompts, &samples, &format!("judge:openai:{}#judge", url.replace("127.0.0.1", "localhost")), &out, &[]));
    assert_eq!(asked.load(Ordering::SeqCst), before);
    for r in rows(&out).values() {
        match r.response.as_str() {
            "Hello there!" => assert!(r.finish_reason == FinishReason::Skipped && r.reward.is_nan()),
            _ => assert!((1.0..=10.0).contains(&r.reward) && r.reward.fract() == 0.0, "{r:?}"),
        }
        assert_eq!(r.reward_model, "judge:judge");
    }
    let summary = std::fs::read_to_string(out.join("summary.json")).unwrap();
    assert!(summary.contains("no readable verdict in 4 attempts"), "{summary}");
    assert!(summary.contains("the judge spent its"), "a reasoning judge's null content is an unreadable verdict: {summary}");
    // A rerun with nothing left to score keeps the reasons of the rows still refused.
    ok(score(&prompts, &samples, &format!("judge:openai:{url}#judge"), &out, &[]));
    let again = std::fs::read_to_string(out.join("summary.json")).unwrap();
    assert!(again.contains("no readable verdict in 4 attempts") && again.contains("the judge spent its"), "{again}");
}

/// A judge that answers every request but never in the grading format (a
/// 135M model, say) refused nothing: the run stops, saying so with its last
/// words, and writes nothing (`make test-remote` meets this judge).
#[test]
fn a_judge_that_never_grades_readably_stops_the_run_as_a_configuration_problem() {
    let dir = tempfile::tempdir().unwrap();
    let (prompts, samples) = setup(dir.path(), &[]);
    let url = serve(|r: &Request| {
        if r.method == "GET" {
            return Reply::ok(r#"{"data":[{"id":"judge"}]}"#);
        }
        Reply::ok(json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "What a lovely answer!"}, "finish_reason": "stop"}]}))
    });
    let out = dir.path().join("judged");
    let err = failed(score(&prompts, &samples, &format!("judge:openai:{url}/v1#judge"), &out, &[]));
    assert!(
        err.contains("the judge answered every request of this run's first batch, but not one of its grades (4 samples) could be read")
            && err.contains("What a lovely answer!")
            && err.contains("does not follow the grading format"),
        "{err}"
    );
    assert!(wrpo_common::io::dataset_files(&out).is_err(), "nothing is written");
}

/// A resumed run whose first batch the server refuses whole asks again a sample
/// it scored in an earlier run: refused too, the server is at fault and nothing
/// is written (before, permanent skipped rows, and later reruns sent nothing);
/// scored, the samples are, and their skipped rows are committed.
#[test]
fn a_resumed_run_against_a_server_that_now_refuses_everything_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (prompts, samples) = setup(dir.path(), &[]);
    // 0: a fatal 403 on one answer; 1: no readable grade for anything; 2: grades all;
    // 3: grades only what the first run graded (the answers of p0).
    let mode = Arc::new(AtomicUsize::new(0));
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let (mode2, seen2) = (mode.clone(), seen.clone());
    let url = serve(move |r: &Request| {
        if r.method == "GET" {
            return Reply::ok(r#"{"data":[{"id":"judge"}]}"#);
        }
        let user = r.body["messages"][1]["content"].as_str().unwrap().to_string();
        let grade =
            |text: &str| Reply::ok(json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}));
        let first = seen2.lock().unwrap().contains(&user);
        match mode2.load(Ordering::SeqCst) {
            0 if user.contains("No idea, sorry.") => Reply::status("403 Forbidden", r#"{"error":{"message":"quota exceeded"}}"#),
            0 => {
                seen2.lock().unwrap().push(user);
                grade("Fine. Rating: [[5]]")
            }
            1 => grade("I cannot rate this."),
            3 if !first => grade("I cannot rate this."),
            _ => grade("Fine. Rating: [[5]]"),
        }
    });
    let reward = format!("judge:openai:{url}/v1#judge");
    let out = dir.path().join("judged");
    let first = failed(score(&prompts, &samples, &reward, &out, &[]));
    assert!(first.contains("HTTP 403"), "{first}");
    let kept = rows(&out).len();
    assert!(kept > 0 && kept < 12, "{kept}");
    mode.store(1, Ordering::SeqCst);
    let err = failed(score(&prompts, &samples, &reward, &out, &[]));
    assert!(err.contains("not one of its grades (1 samples) could be read") && err.contains("which it scored in an earlier run"), "{err}");
    assert_eq!(rows(&out).len(), kept, "nothing written");
    assert!(rows(&out).values().all(|r| r.finish_reason != FinishReason::Skipped));
    // The samples' own fault: the server still grades what it graded before.
    mode.store(3, Ordering::SeqCst);
    ok(score(&prompts, &samples, &reward, &out, &[]));
    let all = rows(&out);
    assert_eq!(all.len(), 12);
    assert_eq!(all.values().filter(|r| r.finish_reason == FinishReason::Skipped).count(), 12 - kept);
}

/// A judge that refuses one request as over its context refuses that answer,
/// not the run: the answer is a skipped row saying why, the others are graded.
/// Any other 400 still stops the run (the settings are at fault).
#[test]
fn a_judge_refusing_one_over_long_answer_skips_it_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (prompts, samples) = setup(dir.path(), &[]);
    let url = serve(move |r: &Request| {
        if r.method == "GET" {
            return Reply::ok(r#"{"data":[{"id":"judge"}]}"#);
        }
        if r.body["messages"][1]["content"].as_str().unwrap().contains("No idea, sorry.") {
            return Reply::status(
                "400 Bad Request",
                r#"{"error":{"message":"This model's maximum context length is 4096 tokens. However, you requested 5000 tokens."}}"#,
            );
        }
        Reply::ok(json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "Fine. Rating: [[5]]"}, "finish_reason": "stop"}]}))
    });
    let out = dir.path().join("judged");
    ok(score(&prompts, &samples, &format!("judge:openai:{url}/v1#judge"), &out, &[]));
    let all = rows(&out);
    let skipped: Vec<_> = all.values().filter(|r| r.finish_reason == FinishReason::Skipped).collect();
    assert!(!skipped.is_empty() && skipped.iter().all(|r| r.response.contains("No idea, sorry.") && r.reward.is_nan()), "{skipped:?}");
    assert!(all.values().filter(|r| r.finish_reason != FinishReason::Skipped).all(|r| r.reward == 5.0));
    let summary = std::fs::read_to_string(out.join("summary.json")).unwrap();
    assert!(summary.contains("too long"), "{summary}");
}

/// A key that the server echoes back in an error body reaches no message and
/// no file: the error says what the server said, with the key blanked.
#[test]
fn a_key_echoed_by_the_server_is_never_shown_or_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (prompts, samples) = setup(dir.path(), &[]);
    let key = "sk-test-0123456789abcdef";
    let url = serve(move |r: &Request| {
        if r.method == "GET" {
            return Reply::ok(r#"{"data":[{"id":"judge"}]}"#);
        }
        Reply::status("403 Forbidden", r#"{"error":{"message":"key sk-test-0123456789abcdef has no quota"}}"#)
    });
    let out = dir.path().join("judged");
    let err = failed(
        Command::new(env!("CARGO_BIN_EXE_wrpo-score"))
            .args(["score", "--prompts", &prompts, "--samples", &samples, "--reward", &format!("judge:openai:{url}/v1#judge")])
            .args(["--out", &out.display().to_string(), "--retries", "0", "--api-key-env", "WRPO_TEST_KEY"])
            .env("WRPO_TEST_KEY", key)
            .output()
            .unwrap(),
    );
    assert!(err.contains("has no quota") && err.contains("[API key]") && !err.contains(key), "{err}");
    // OPENAI_API_KEY is held back over plain http to another machine (0.0.0.0 reaches this one's
    // loopback server but is not a loopback address): the 403 says so, and how to send it.
    let elsewhere = url.replace("127.0.0.1", "0.0.0.0");
    let err = failed(
        Command::new(env!("CARGO_BIN_EXE_wrpo-score"))
            .args(["score", "--prompts", &prompts, "--samples", &samples, "--reward", &format!("judge:openai:{elsewhere}/v1#judge")])
            .args(["--out", &dir.path().join("withheld").display().to_string(), "--retries", "0"])
            .env("OPENAI_API_KEY", key)
            .output()
            .unwrap(),
    );
    assert!(err.contains("OPENAI_API_KEY was not sent") && err.contains("--api-key-env OPENAI_API_KEY sends it"), "{err}");
    let mut dirs = vec![out];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                assert!(!String::from_utf8_lossy(&std::fs::read(&path).unwrap()).contains(key), "{} holds the key", path.display());
            }
        }
    }
}

#[test]
fn a_fatal_judge_error_keeps_the_finished_grades_and_the_rerun_asks_only_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (prompts, samples) = setup(dir.path(), &[]);
    // Forbidden for one answer until `fixed`: a fatal error in the middle of the first batch.
    let fixed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let asked: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let (fixed2, asked2) = (fixed.clone(), asked.clone());
    let url = serve(move |r: &Request| {
        if r.method == "GET" {
            return Reply::ok(r#"{"data":[{"id":"judge"}]}"#);
        }
        let user = r.body["messages"][1]["content"].as_str().unwrap().to_string();
        *asked2.lock().unwrap().entry(user.clone()).or_default() += 1;
        if user.contains("No idea, sorry.") && !fixed2.load(Ordering::SeqCst) {
            return Reply::status("403 Forbidden", r#"{"error":{"message":"quota exceeded"}}"#);
        }
        Reply::ok(json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "Fine. Rating: [[5]]"}, "finish_reason": "stop"}]}))
    });
    let reward = format!("judge:openai:{url}/v1#judge");
    let out = dir.path().join("judged");
    // Batches of 4 hold one prompt's 4 samples each; the first stops the run.
    let err = failed(score(&prompts, &samples, &reward, &out, &[]));
    assert!(
        err.contains("HTTP 403")
            && err.contains("quota exceeded")
            && err.contains("the 3 of this batch's 4 samples finished before it are committed"),
        "{err}"
    );
    let kept = rows(&out);
    assert_eq!(kept.keys().cloned().collect::<Vec<_>>(), [("p0".to_string(), 0), ("p0".into(), 1), ("p0".into(), 2)]);
    assert!(kept.values().all(|r| r.reward == 5.0));
    let first: BTreeMap<String, usize> = asked.lock().unwrap().clone();
    fixed.store(true, Ordering::SeqCst);
    ok(score(&prompts, &samples, &reward, &out, &[]));
    let all = rows(&out);
    assert_eq!(all.len(), 12);
    assert!(all.values().all(|r| r.reward == 5.0 && r.finish_reason == FinishReason::Stop));
    // Every answer graded once in all, the forbidden one once more: none of the kept three again.
    let asked = asked.lock().unwrap();
    assert_eq!(asked.len(), 12);
    for (user, n) in asked.iter() {
        let forbidden_first = user.contains("No idea, sorry.") && first.contains_key(user);
        assert_eq!(*n, if forbidden_first { 2 } else { 1 }, "asked {n} times: {user}");
    }
}

#[test]
fn the_report_judges_each_model_against_the_baseline_in_both_orders() {
    let dir = tempfile::tempdir().unwrap();
    let (prompts, _) = setup(dir.path(), &[]);
    let prov = Provenance::new("test", &json!({})).unwrap();
    // "better" is good on two prompts of three; "base" never.
    let mut scored = vec![];
    for (model, texts) in [("base", ["plain", "plain", "plain"]), ("better", ["a good answer", "a good answer", "plain"])] {
        for (i, text) in texts.iter().enumerate() {
            for k in 0..2u32 {
                scored.push(ScoredSample {
                    prompt_id: format!("p{i}"),
                    model: model.into(),
                    sample_index: k,
                    response: format!("{text} {k}"),
                    response_tokens: 3,
                    finish_reason: FinishReason::Stop,
                    reward: 0.5,
                    reward_model: "exact".into(),
                });
            }
        }
    }
    let scores = dir.path().join("scored.parquet");
    write_dataset(&scores, &scored, &prov).unwrap();
    let (url, asked) = judge_server();
    let out = dir.path().join("report");
    let report_with = |scores: &Path, more: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_wrpo-score"))
            .args(["report", "--prompts", &prompts, "--scores", &scores.display().to_string(), "--baseline", "base"])
            .args(["--judge", &format!("openai:{url}#judge"), "--out", &out.display().to_string()])
            .args(more)
            .env_remove("OPENAI_API_KEY")
            .output()
            .unwrap()
    };
    let report_of = |scores: &Path| report_with(scores, &[]);
    let report = || report_of(&scores);
    let printed = String::from_utf8_lossy(&ok(report()).stdout).into_owned();
    let verdicts: Vec<Judgement> = read_dataset(&out.join("judgements.parquet")).unwrap();
    assert_eq!(verdicts.len(), 6, "3 prompts x 2 orders, sample 0 only");
    assert!(verdicts.iter().all(|v| v.sample_index == 0));
    let [row]: [JudgeComparison; 1] = read_dataset(&out.join("judge.parquet")).unwrap().try_into().unwrap();
    assert_eq!((row.model.as_str(), row.prompts, row.wins, row.ties, row.losses, row.position_splits), ("better", 3, 2, 1, 0, 0));
    assert!((row.win_rate - 2.5 / 3.0).abs() < 1e-12);
    assert!(printed.contains("better vs base") && printed.contains("version 1"), "{printed}");
    // A rerun asks nothing again, nor one reading the same answers by another path.
    let before = asked.load(Ordering::SeqCst);
    ok(report());
    assert_eq!(asked.load(Ordering::SeqCst), before);
    ok(report_of(&dir.path().join(".").join("scored.parquet")));
    assert_eq!(asked.load(Ordering::SeqCst), before, "the same answers under another spelling of their path");
    // Another file: a third model, and one answer of "better" changed: only the third's six
    // verdicts and the changed prompt's two are asked.
    let mut more = scored.clone();
    more.extend(scored.iter().filter(|s| s.model == "better").map(|s| ScoredSample { model: "third".into(), ..s.clone() }));
    more.iter_mut().filter(|s| s.model == "better" && s.prompt_id == "p2").for_each(|s| s.response = format!("a good answer now {}", s.sample_index));
    let scores2 = dir.path().join("scored2.parquet");
    write_dataset(&scores2, &more, &prov).unwrap();
    let printed = String::from_utf8_lossy(&ok(report_of(&scores2)).stderr).into_owned();
    assert_eq!(asked.load(Ordering::SeqCst) - before, 8, "{printed}");
    assert!(printed.contains("8 verdicts to ask (4 kept from an earlier run; 2 asked again"), "{printed}");
    let verdicts: Vec<Judgement> = read_dataset(&out.join("judgements.parquet")).unwrap();
    assert_eq!(verdicts.len(), 12, "one row per (prompt, model, order): the changed ones replaced");
    // Two models paired through the baseline, from the same verdicts: nothing more is asked.
    let asked_before = asked.load(Ordering::SeqCst);
    let printed = String::from_utf8_lossy(&ok(report_with(&scores2, &["--compare", "better:third", "--compare", "third:base"])).stdout).into_owned();
    assert_eq!(asked.load(Ordering::SeqCst), asked_before);
    let [pair]: [PairedComparison; 1] = read_dataset(&out.join("judge-paired.parquet")).unwrap().try_into().unwrap();
    assert_eq!((pair.model.as_str(), pair.against.as_str(), pair.measure.as_str(), pair.prompts), ("better", "third", "judge", 3));
    assert!(printed.contains("Paired through the baseline"), "{printed}");
}

/// `make test-remote`: the judge (as a reward and in the report) and
/// `/v1/embeddings` against llama-cpp-python's server (scripts/test-remote.sh
/// starts it with SmolLM2 as `smollm2` and, mean-pooled, `smollm2-embed`).
/// A 135M judge writes few readable verdicts: what is checked is that every
/// row is a grade in 1-10 or a skipped row saying why, never a made-up score,
/// or that a judge that could grade nothing stopped the run saying so.
#[test]
#[ignore = "needs a served model: make test-remote"]
fn llama_cpp_server_judges_and_embeds() {
    let url = std::env::var("WRPO_OPENAI_BASE").expect("WRPO_OPENAI_BASE, e.g. http://127.0.0.1:8765/v1");
    let dir = tempfile::tempdir().unwrap();
    let (prompts, samples) = setup_n(dir.path(), &[], 1);

    let embedded = dir.path().join("embedded");
    ok(score(&prompts, &samples, &format!("similarity:openai:{url}#smollm2-embed"), &embedded, &[]));
    let rows_e = rows(&embedded);
    assert_eq!(rows_e.len(), 3);
    for r in rows_e.values() {
        assert!(r.reward.is_finite() && (-1.0..=1.0).contains(&r.reward), "{r:?}");
        println!("embedding similarity {}: {:.4} ({:?})", r.prompt_id, r.reward, r.response);
    }

    // A 135M judge may grade readably, or not at all: then the run stops as a configuration problem
    // (a server that answered every request refused nothing), never with made-up or skipped rows.
    let judged = dir.path().join("judged");
    let run = score(&prompts, &samples, &format!("judge:openai:{url}#smollm2"), &judged, &["--concurrency", "1"]);
    if run.status.success() {
        for r in rows(&judged).values() {
            assert!(r.reward.is_nan() == (r.finish_reason == FinishReason::Skipped));
            assert!(r.reward.is_nan() || (1.0..=10.0).contains(&r.reward), "{r:?}");
            println!("judge grade {}: {} ({:?})", r.prompt_id, r.reward, r.finish_reason);
        }
        println!("{}", std::fs::read_to_string(judged.join("summary.json")).unwrap());
    } else {
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(err.contains("the judge answered every request") && err.contains("does not follow the grading format"), "{err}");
        assert!(wrpo_common::io::dataset_files(&judged).is_err(), "nothing is written");
        println!("the judge could not grade, and said so: {err}");
    }

    // The pairwise report: the embedded rows as the baseline, the same answers with a tail as the other model.
    let mut scored: Vec<ScoredSample> = rows_e.into_values().collect();
    let other: Vec<ScoredSample> = scored
        .iter()
        .map(|s| ScoredSample { model: "other".into(), response: format!("{} Let me know if you need more.", s.response), ..s.clone() })
        .collect();
    scored.extend(other);
    let scores = dir.path().join("scored.parquet");
    write_dataset(&scores, &scored, &Provenance::new("test", &json!({})).unwrap()).unwrap();
    let out = dir.path().join("report");
    let report = ok(Command::new(env!("CARGO_BIN_EXE_wrpo-score"))
        .args(["report", "--prompts", &prompts, "--scores", &scores.display().to_string(), "--baseline", "m"])
        .args(["--judge", &format!("openai:{url}#smollm2"), "--retries", "1", "--concurrency", "1", "--out", &out.display().to_string()])
        .output()
        .unwrap());
    let verdicts: Vec<Judgement> = read_dataset(&out.join("judgements.parquet")).unwrap();
    assert_eq!(verdicts.len(), 6, "3 prompts x 2 orders");
    for v in &verdicts {
        println!("verdict {} shown first {}: {}", v.prompt_id, v.shown_first, v.verdict);
    }
    println!("{}", String::from_utf8_lossy(&report.stdout));
}
