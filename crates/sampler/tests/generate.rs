//! `wrpo-sample generate` end to end, through the binary, on a tiny random
//! Llama saved as an HF folder with the repo's tiny ChatML BPE tokenizer.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::json;
use wrpo_common::{
    io::{dataset_files, read_file},
    prompts::{Prompt, Split},
    read_dataset,
    samples::{FinishReason, Sample},
    write_dataset, Message, Provenance, Role,
};
#[path = "../../common/testutil/run.rs"]
mod run;
use run::{failed, ok};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A 2-layer Llama with random weights, `context` positions, saved as an HF
/// folder; its config.json says `model_type`.
fn tiny_model(dir: &Path, context: usize, model_type: &str) -> PathBuf {
    let out = wrpo_llm::tiny::tiny_llama(dir, &repo().join("data/fixtures/tokenizer/tiny-bpe"), context, 7).unwrap();
    if model_type != "llama" {
        let path = out.join("config.json");
        let text = fs::read_to_string(&path).unwrap().replace("\"llama\"", &format!("\"{model_type}\""));
        fs::write(path, text).unwrap();
    }
    out
}

fn prompts_file(dir: &Path, texts: &[&str]) -> PathBuf {
    let prompts: Vec<Prompt> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| Prompt {
            prompt_id: format!("p{i:02}"),
            messages: vec![Message::new(Role::User, *t)],
            reference: None,
            split: if i % 3 == 2 { Split::Eval } else { Split::Train },
            origin: "test".into(),
        })
        .collect();
    let path = dir.join("prompts.parquet");
    write_dataset(&path, &prompts, &Provenance::new("test", &json!({})).unwrap()).unwrap();
    path
}

const TEXTS: &[&str] = &[
    "Write a haiku about the sea.",
    "What is 12 times 7?",
    "Explain recursion to a child.",
    "Name three prime numbers.",
    "Translate 'good morning' into French.",
    "Why is the sky blue?",
    "List the planets in order.",
];

fn sample_bin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wrpo-sample")).arg("generate").args(args).output().unwrap()
}

/// Rows keyed by (prompt_id, model, sample_index), without the timing column.
fn rows(dir: &Path) -> BTreeMap<(String, String, u32), Sample> {
    let mut map = BTreeMap::new();
    for mut s in read_dataset::<Sample>(dir).unwrap() {
        s.generation_seconds = 0.0;
        let key = (s.prompt_id.clone(), s.model.clone(), s.sample_index);
        assert!(map.insert(key.clone(), s).is_none(), "duplicate row {key:?}");
    }
    map
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    model: String,
    prompts: String,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let model = format!("tiny={}", tiny_model(&root, 256, "llama").display());
    let prompts = prompts_file(&root, TEXTS).display().to_string();
    Setup { _dir: dir, root, model, prompts }
}

impl Setup {
    fn out(&self, name: &str) -> String {
        self.root.join(name).display().to_string()
    }

    fn run(&self, out: &str, extra: &[&str]) -> Output {
        let mut args = vec!["--prompts", &self.prompts, "--model", &self.model, "--out", out, "--max-new-tokens", "24"];
        if !extra.contains(&"--n") {
            args.extend(["--n", "3"]);
        }
        args.extend_from_slice(extra);
        sample_bin(&args)
    }
}

#[test]
fn n_samples_per_prompt_with_schema_provenance_and_batch_independent_text() {
    let s = setup();
    let a = s.out("a");
    ok(s.run(&a, &["--batch-size", "5", "--seed", "3"]));
    let got = rows(Path::new(&a));
    assert_eq!(got.len(), TEXTS.len() * 3);
    for i in 0..TEXTS.len() {
        let idx: Vec<u32> = got.keys().filter(|k| k.0 == format!("p{i:02}")).map(|k| k.2).collect();
        assert_eq!(idx, vec![0, 1, 2]);
    }
    for row in got.values() {
        assert_eq!(row.model, "tiny");
        assert!(row.prompt_text.starts_with("<|im_start|>user\n"), "{}", row.prompt_text);
        assert!(row.prompt_text.ends_with("<|im_start|>assistant\n"));
        assert!(row.response_tokens >= 1 && row.response_tokens <= 24);
        assert!(matches!(row.finish_reason, FinishReason::Stop | FinishReason::Length));
        assert_eq!(row.finish_reason == FinishReason::Length, row.response_tokens == 24);
        assert!(!row.response.contains("<|im_end|>"));
        assert_eq!((row.temperature, row.top_p, row.seed), (0.8, 0.95, 3));
    }
    // Samples of one prompt differ (their streams are independent).
    let p0: Vec<&str> = (0..3).map(|i| got[&("p00".into(), "tiny".into(), i)].response.as_str()).collect();
    assert!(p0[0] != p0[1] || p0[1] != p0[2], "{p0:?}");

    // Provenance: schema, command, config and input hashes.
    let file = read_file::<Sample>(&dataset_files(Path::new(&a)).unwrap()[0]).unwrap();
    assert_eq!(file.version, 1);
    assert!(file.provenance.producer.starts_with("wrpo-sample"));
    assert!(file.provenance.command.iter().any(|c| c == "generate"));
    assert_eq!(file.provenance.config["settings"]["n"], 3);
    assert_eq!(file.provenance.inputs.len(), 2);
    assert!(file.provenance.inputs.iter().all(|i| i.sha256.len() == 64));
    assert!(dataset_files(&Path::new(&a).join("tiny")).unwrap()[0].file_name().unwrap().to_string_lossy().starts_with("part-00000-"));

    // The same text whatever the batch: one sequence at a time, and 2 at a time.
    for (name, batch) in [("b1", "1"), ("b2", "2")] {
        let out = s.out(name);
        ok(s.run(&out, &["--batch-size", batch, "--seed", "3"]));
        assert_eq!(rows(Path::new(&out)), got, "batch size {batch} changed the samples");
    }
    // Another seed, other samples.
    let c = s.out("c");
    ok(s.run(&c, &["--seed", "4"]));
    assert_ne!(rows(Path::new(&c)).values().map(|r| &r.response).collect::<Vec<_>>(), got.values().map(|r| &r.response).collect::<Vec<_>>());
}

/// With common random numbers, two aliases of one model draw the same
/// samples (the seed leaves the alias out); without, they draw their own.
#[test]
fn common_random_numbers_give_every_model_the_same_seeds() {
    let s = setup();
    let twin = format!("twin={}", s.model.split_once('=').unwrap().1);
    let texts = |out: &str, extra: &[&str]| {
        let args =
            [&["--prompts", &s.prompts, "--model", &s.model, "--model", &twin, "--out", out][..], &["--n", "2", "--max-new-tokens", "16"], extra]
                .concat();
        ok(sample_bin(&args));
        let rows = rows(Path::new(out));
        let of = |m: &str| rows.values().filter(|r| r.model == m).map(|r| r.response.clone()).collect::<Vec<_>>();
        (of("tiny"), of("twin"))
    };
    let (a, b) = texts(&s.out("crn"), &["--common-random-numbers"]);
    assert_eq!(a.len(), TEXTS.len() * 2);
    assert_eq!(a, b, "the same model with the same seeds");
    let (a, b) = texts(&s.out("own"), &[]);
    assert_ne!(a, b, "each alias its own seeds");
}

#[test]
fn greedy_samples_are_identical_and_stop_strings_cut_the_response() {
    let s = setup();
    let g = s.out("greedy");
    ok(s.run(&g, &["--temperature", "0"]));
    let got = rows(Path::new(&g));
    for i in 0..TEXTS.len() {
        let texts: Vec<&str> = (0..3).map(|k| got[&(format!("p{i:02}"), "tiny".into(), k)].response.as_str()).collect();
        assert!(texts.iter().all(|t| *t == texts[0]), "{texts:?}");
    }
    // Stop at a piece from the middle of a long greedy response.
    let long = got.values().max_by_key(|r| r.response.chars().count()).unwrap();
    let chars: Vec<char> = long.response.chars().collect();
    assert!(chars.len() >= 6, "responses too short to test stop strings: {:?}", long.response);
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let expected: String = long.response[..long.response.find(&stop).unwrap()].to_string();
    let st = s.out("stopped");
    ok(s.run(&st, &["--temperature", "0", "--stop", &stop, "--n", "1"]));
    let row = &rows(Path::new(&st))[&(long.prompt_id.clone(), "tiny".into(), 0)];
    assert_eq!(row.response, expected);
    assert_eq!(row.finish_reason, FinishReason::Stop);
}

#[test]
fn an_aborted_run_resumes_to_exactly_the_uninterrupted_rows() {
    let s = setup();
    let whole = s.out("whole");
    ok(s.run(&whole, &["--batch-size", "4"]));
    let expected = rows(Path::new(&whole));

    let part = s.out("part");
    let crashed = s.run(&part, &["--batch-size", "4", "--shard-rows", "4", "--abort-after-shards", "2"]);
    assert!(!crashed.status.success());
    let dir = Path::new(&part).join("tiny");
    let names: Vec<String> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(dataset_files(&dir).unwrap().len(), 2, "{names:?}");
    assert_eq!(rows(Path::new(&part)).len(), 8);

    let resumed = ok(s.run(&part, &["--batch-size", "4", "--shard-rows", "4"]));
    assert!(String::from_utf8_lossy(&resumed.stderr).contains("13 samples to make, 8 already"));
    assert_eq!(rows(Path::new(&part)), expected);
    // Nothing left to do: a third run adds nothing, nor one naming the same model file by another path.
    ok(s.run(&part, &["--batch-size", "4"]));
    assert_eq!(rows(Path::new(&part)), expected);
    let (alias, path) = s.model.split_once('=').unwrap();
    let respelled = format!("{alias}={}", Path::new(path).parent().unwrap().join(".").join(Path::new(path).file_name().unwrap()).display());
    let again = ok(sample_bin(&["--prompts", &s.prompts, "--model", &respelled, "--out", &part, "--max-new-tokens", "24", "--n", "3"]));
    assert!(String::from_utf8_lossy(&again.stderr).contains("0 samples to make"), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(rows(Path::new(&part)), expected);

    // Other settings on the same folder are refused, not mixed in.
    let err = failed(s.run(&part, &["--seed", "9"]));
    assert!(err.contains("other settings") && err.contains("another --out"), "{err}");
}

#[test]
fn raising_n_makes_only_the_new_samples_and_changed_inputs_are_refused() {
    let s = setup();
    let out = s.out("grow");
    ok(s.run(&out, &["--n", "2"]));
    let two = rows(Path::new(&out));
    let grown = ok(s.run(&out, &["--n", "3"]));
    assert!(String::from_utf8_lossy(&grown.stderr).contains("7 samples to make, 14 already"), "{}", String::from_utf8_lossy(&grown.stderr));
    let three = rows(Path::new(&out));
    assert!(two.iter().all(|(k, v)| three[k] == *v), "the first two samples are kept as they were");
    assert_eq!(three.len(), 21);

    // A model file replaced under the same path: its samples would mix with the old ones.
    let weights = s.root.join("tiny-llama/model.safetensors");
    let mut bytes = fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&weights, bytes).unwrap();
    let err = failed(s.run(&out, &["--n", "4"]));
    assert!(err.contains("was made from another") && err.contains("tiny"), "{err}");
    // So would a changed prompts file.
    let t = setup();
    let out = t.out("prompts");
    ok(t.run(&out, &["--n", "1"]));
    fs::create_dir_all(t.root.join("other")).unwrap();
    fs::write(&t.prompts, fs::read(prompts_file(&t.root.join("other"), &["Another question?"])).unwrap()).unwrap();
    let err = failed(t.run(&out, &["--n", "1"]));
    assert!(err.contains("was made from another") && err.contains(&t.prompts), "{err}");
}

#[test]
fn shards_limit_split_and_prompt_ids_select_prompts() {
    let s = setup();
    let whole = s.out("whole");
    ok(s.run(&whole, &["--n", "1"]));
    let whole = rows(Path::new(&whole));
    let (s0, s1) = (s.out("s0"), s.out("s1"));
    ok(s.run(&s0, &["--n", "1", "--shard", "0/2"]));
    ok(s.run(&s1, &["--n", "1", "--shard", "1/2"]));
    let (r0, r1) = (rows(Path::new(&s0)), rows(Path::new(&s1)));
    assert!(!r0.is_empty() && !r1.is_empty());
    assert!(r0.keys().all(|k| !r1.contains_key(k)));
    let mut union = r0;
    union.extend(r1);
    assert_eq!(union, whole);

    let lim = s.out("limit");
    ok(s.run(&lim, &["--n", "2", "--limit", "2", "--split", "train"]));
    let ids: Vec<String> = rows(Path::new(&lim)).keys().map(|k| k.0.clone()).collect();
    assert_eq!(ids, ["p00", "p00", "p01", "p01"]);

    let list = s.root.join("ids.txt");
    fs::write(&list, "# preference prompts\np05\n\np02\n").unwrap();
    let sel = s.out("sel");
    ok(s.run(&sel, &["--n", "1", "--prompt-ids", list.to_str().unwrap()]));
    let ids: Vec<String> = rows(Path::new(&sel)).keys().map(|k| k.0.clone()).collect();
    assert_eq!(ids, ["p02", "p05"]);

    fs::write(&list, "p05\nnope\n").unwrap();
    let err = failed(s.run(&s.out("bad"), &["--prompt-ids", list.to_str().unwrap()]));
    assert!(err.contains("'nope'"), "{err}");
    let err = failed(s.run(&s.out("bad"), &["--shard", "2/2"]));
    assert!(err.contains("0 <= i < n"), "{err}");
}

#[test]
fn prompts_longer_than_the_context_are_recorded_as_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let model = format!("short={}", tiny_model(dir.path(), 40, "llama").display());
    let long = "word ".repeat(60);
    let prompts = prompts_file(dir.path(), &["Hi there.", &long]).display().to_string();
    let out = dir.path().join("out").display().to_string();
    ok(sample_bin(&["--prompts", &prompts, "--model", &model, "--out", &out, "--n", "2", "--max-new-tokens", "100"]));
    let got = rows(Path::new(&out));
    assert_eq!(got.len(), 4);
    for k in 0..2 {
        let skipped = &got[&("p01".into(), "short".into(), k)];
        assert_eq!(skipped.finish_reason, FinishReason::Skipped);
        assert!(skipped.skip_reason.as_deref().unwrap().contains("context holds 40"), "{:?}", skipped.skip_reason);
        let made = &got[&("p00".into(), "short".into(), k)];
        // The short prompt runs into the context end: prompt + response <= 40.
        assert!(made.prompt_tokens + made.response_tokens <= 40);
        assert_ne!(made.finish_reason, FinishReason::Skipped);
    }
}

#[test]
fn bad_inputs_fail_clearly_and_write_nothing() {
    let s = setup();
    let out = s.out("never");
    let err = failed(sample_bin(&["--prompts", &s.prompts, "--model", "x=/nowhere/model.gguf", "--out", &out]));
    assert!(err.contains("model 'x'") && err.contains("/nowhere/model.gguf does not exist"), "{err}");

    let odd = tiny_model(&s.root.join("odd"), 64, "mamba9");
    let err = failed(sample_bin(&["--prompts", &s.prompts, "--model", &format!("odd={}", odd.display()), "--out", &out]));
    assert!(err.contains("unsupported architecture 'mamba9'") && err.contains("supported:"), "{err}");

    let not_prompts = s.root.join("tiny-llama/config.json");
    let err = failed(sample_bin(&["--prompts", not_prompts.to_str().unwrap(), "--model", &s.model, "--out", &out]));
    assert!(err.contains("config.json") && err.contains("Parquet"), "{err}");

    let err = failed(sample_bin(&["--prompts", &s.prompts, "--model", "far=openai:http://127.0.0.1:9/v1#m", "--out", &out, "--retries", "1"]));
    assert!(err.contains("model 'far'") && err.contains("http://127.0.0.1:9/v1/models") && err.contains("2 attempt"), "{err}");
    assert!(!Path::new(&out).exists() || dataset_files(Path::new(&out)).is_err(), "a failed run wrote samples");

    // A GGUF file cut short, given second: refused before the first model samples anything.
    let whole = fs::read(repo().join("data/fixtures/llm/gguf/llama.q8_0.gguf")).unwrap();
    let cut = s.root.join("cut.gguf");
    fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
    let err = failed(sample_bin(&["--prompts", &s.prompts, "--model", &s.model, "--model", &format!("cut={}", cut.display()), "--out", &out]));
    assert!(err.contains("model 'cut'") && err.contains("cut short"), "{err}");
    assert!(!Path::new(&out).join("tiny").exists(), "no folder for a run that did not start");

    // A prompts file with one prompt_id twice (as DuckDB can write it): refused before sampling.
    let mut dup: Vec<Prompt> = read_dataset(Path::new(&s.prompts)).unwrap();
    dup[3].prompt_id = dup[0].prompt_id.clone();
    let dup_path = s.root.join("dup.parquet");
    write_dataset(&dup_path, &dup, &Provenance::new("test", &json!({})).unwrap()).unwrap();
    let err = failed(sample_bin(&["--prompts", dup_path.to_str().unwrap(), "--model", &s.model, "--out", &out]));
    assert!(err.contains("dup.parquet: row 3") && err.contains("prompt_id = p00"), "{err}");
    // Sizes of 0 are refused, not made 1.
    for flag in ["--batch-size", "--shard-rows", "--concurrency"] {
        let err = failed(sample_bin(&["--prompts", &s.prompts, "--model", &s.model, "--out", &out, flag, "0"]));
        assert!(err.contains(&format!("{flag} must be at least 1, got 0")), "{err}");
    }
    // Checks that come before any model is looked at (the model path does not exist):
    // two models under one alias, an output folder another live process is writing.
    let err = failed(sample_bin(&["--prompts", &s.prompts, "--model", "a=/nowhere/1.gguf", "--model", "a=/nowhere/2.gguf", "--out", &out]));
    assert!(err.contains("two --model options have the same alias"), "{err}");
    let locked = s.root.join("locked");
    fs::create_dir_all(locked.join("x")).unwrap();
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    fs::write(locked.join("x/.lock"), format!("{} {}", host.trim(), std::process::id())).unwrap();
    let err = failed(sample_bin(&["--prompts", &s.prompts, "--model", "x=/nowhere/1.gguf", "--out", locked.to_str().unwrap()]));
    assert!(err.contains("is being written by process"), "{err}");
    // An output inside its input.
    let err = failed(sample_bin(&["--prompts", &s.prompts, "--model", &s.model, "--out", &s.root.join("prompts.parquet/x").display().to_string()]));
    assert!(err.contains("the input --prompts"), "{err}");
    assert!(!Path::new(&out).join("tiny").exists());
}

/// Against a real OpenAI-compatible server (llama-cpp-python's, started by
/// `make test-remote`, which sets WRPO_OPENAI_URL): same schema, N samples
/// per prompt, the server's token counts, and the same text again for the
/// same seeds (up to the server's own float noise).
#[test]
#[ignore = "needs an OpenAI-compatible server: make test-remote"]
fn openai_server_backend() {
    let url = std::env::var("WRPO_OPENAI_URL").expect("WRPO_OPENAI_URL, e.g. http://127.0.0.1:8765/v1#smollm2");
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_file(dir.path(), &TEXTS[..4]).display().to_string();
    let model = format!("remote=openai:{url}");
    let run = |name: &str| {
        let out = dir.path().join(name).display().to_string();
        ok(sample_bin(&["--prompts", &prompts, "--model", &model, "--out", &out, "--n", "2", "--max-new-tokens", "16", "--concurrency", "3"]));
        rows(Path::new(&out))
    };
    let a = run("a");
    assert_eq!(a.len(), 8);
    for r in a.values() {
        assert_eq!(r.model, "remote");
        assert!(r.prompt_tokens > 0 && r.response_tokens > 0 && r.response_tokens <= 16, "{r:?}");
        assert!(!r.response.is_empty());
        assert!(r.prompt_text.contains("\"role\":\"user\""));
    }
    // Each sample sends its own seed: a rerun gives the same text, except
    // where the server's reuse of a cached prompt prefix changed the float
    // rounding enough to flip a draw (llama.cpp's server does that), so
    // exact identity is the server's to keep, not ours.
    let b = run("b");
    let same = a.iter().filter(|(k, r)| b[*k].response == r.response).count();
    assert!(same * 4 >= a.len() * 3, "only {same} of {} samples came back the same for the same seeds", a.len());
    let first: Vec<&String> = a.values().map(|r| &r.response).collect();
    assert!(first.windows(2).any(|w| w[0] != w[1]), "every sample is the same text: the seeds were not sent");
}

/// (user message, when) of every chat request a fake server received.
type RequestLog = std::sync::Arc<std::sync::Mutex<Vec<(String, std::time::Instant)>>>;

/// A scripted OpenAI-compatible server on loopback. The user message says how
/// it answers: `empty` gets an empty choice list, then an error object, then
/// null content, then a sample; `long` always gets 400 (context too long);
/// `busy` gets 429 with Retry-After: 1 once; `cut` gets a body cut short
/// once; `think` null content cut off by the token limit (a reasoning model
/// that spent every token thinking); anything else a sample. Requests without `Bearer sekrit` get 401.
/// Returns the base URL and a log of (message, when) per chat request.
fn fake_openai_server() -> (String, RequestLog) {
    use wrpo_remote::stub::{serve, Reply};
    let log: RequestLog = std::sync::Arc::default();
    let server_log = log.clone();
    let url = serve(move |request| {
        if !request.has_header("authorization: bearer sekrit") {
            return Reply::status("401 Unauthorized", r#"{"error":{"message":"invalid api key"}}"#);
        }
        if request.method == "GET" {
            return Reply::ok(r#"{"data":[{"id":"fake"}]}"#);
        }
        let message = request.body["messages"][0]["content"].as_str().unwrap().to_string();
        let attempt = {
            let mut log = server_log.lock().unwrap();
            log.push((message.clone(), std::time::Instant::now()));
            log.iter().filter(|(m, _)| *m == message).count()
        };
        let sample = json!({
            "choices": [{"message": {"role": "assistant", "content": format!("answer to {message}")}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3}
        })
        .to_string();
        match (message.as_str(), attempt) {
            ("empty", 1) => Reply::ok(r#"{"choices":[]}"#),
            ("empty", 2) => Reply::ok(r#"{"error":{"message":"overloaded"}}"#),
            ("empty", 3) => Reply::ok(r#"{"choices":[{"message":{"content":null},"finish_reason":"stop"}]}"#),
            ("empty", 4) => Reply::ok(r#"{"choices":[{"message":{"content":""},"finish_reason":"stop"}]}"#),
            ("think", _) => Reply::ok(
                r#"{"choices":[{"message":{"content":null,"reasoning_content":"Let me"},"finish_reason":"length"}],"usage":{"prompt_tokens":5,"completion_tokens":8}}"#,
            ),
            ("long", _) => Reply::status("400 Bad Request", r#"{"error":{"message":"maximum context length is 8 tokens"}}"#),
            ("busy", 1) => Reply::Full {
                status: "429 Too Many Requests",
                headers: "retry-after: 1\r\n".into(),
                body: r#"{"error":{"message":"slow down"}}"#.into(),
            },
            ("cut", 1) => Reply::Cut { body: sample, sent: 30 },
            _ => Reply::ok(sample),
        }
    });
    (format!("{url}/v1"), log)
}

fn sample_remote(args: &[&str], key: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wrpo-sample"));
    command.arg("generate").args(args).env_remove("OPENAI_API_KEY").env_remove("WRPO_TEST_KEY");
    if let Some(key) = key {
        command.env("WRPO_TEST_KEY", key);
    }
    command.output().unwrap()
}

#[test]
fn remote_faults_are_retried_refusals_skipped_and_bad_keys_stop() {
    let (url, log) = fake_openai_server();
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_file(dir.path(), &["empty", "long", "busy", "cut", "plain", "think"]).display().to_string();
    let model = format!("remote=openai:{url}#fake");
    let out = dir.path().join("out").display().to_string();
    let args = ["--prompts", &prompts, "--model", &model, "--out", &out, "--n", "1", "--max-new-tokens", "8", "--retries", "4"];

    // The key comes from the variable --api-key-env names; a wrong one stops at once.
    let err = failed(sample_remote(&[&args[..], &["--api-key-env", "WRPO_TEST_KEY"]].concat(), None));
    assert!(err.contains("WRPO_TEST_KEY") && err.contains("not set"), "{err}");
    let err = failed(sample_remote(&[&args[..], &["--api-key-env", "WRPO_TEST_KEY"]].concat(), Some("wrong")));
    assert!(err.contains("HTTP 401") && err.contains("invalid api key"), "{err}");
    assert!(!Path::new(&out).exists(), "nothing written");

    ok(sample_remote(&[&args[..], &["--api-key-env", "WRPO_TEST_KEY"]].concat(), Some("sekrit")));
    let rows: BTreeMap<String, Sample> = rows(Path::new(&out)).into_values().map(|r| (r.prompt_id.clone(), r)).collect();
    assert_eq!(rows.len(), 6);
    for (id, text) in [("p00", "empty"), ("p02", "busy"), ("p03", "cut"), ("p04", "plain")] {
        let r = &rows[id];
        assert_eq!((r.response.as_str(), r.finish_reason, r.response_tokens), (format!("answer to {text}").as_str(), FinishReason::Stop, 3), "{r:?}");
    }
    let long = &rows["p01"];
    assert_eq!(long.finish_reason, FinishReason::Skipped);
    assert!(
        long.skip_reason.as_deref().unwrap().contains("HTTP 400") && long.skip_reason.as_deref().unwrap().contains("maximum context length"),
        "{long:?}"
    );

    // Out of tokens while thinking: an empty answer cut off, asked once.
    let think = &rows["p05"];
    assert_eq!((think.response.as_str(), think.finish_reason, think.response_tokens), ("", FinishReason::Length, 8), "{think:?}");

    let seen = log.lock().unwrap();
    let attempts = |m: &str| seen.iter().filter(|(t, _)| t == m).map(|(_, at)| *at).collect::<Vec<_>>();
    assert_eq!(attempts("empty").len(), 5, "empty choices, an error object, null content and an empty completion are each tried again");
    assert_eq!(attempts("long").len(), 1, "a 400 is not tried again");
    assert_eq!(attempts("think").len(), 1, "a completion cut off before any text is not tried again");
    assert_eq!(attempts("cut").len(), 2, "a body cut short is tried again");
    let busy = attempts("busy");
    assert_eq!(busy.len(), 2);
    assert!(busy[1] - busy[0] >= std::time::Duration::from_millis(950), "Retry-After: 1 honoured, waited {:?}", busy[1] - busy[0]);
    drop(seen);

    // A rerun tries the refused prompt again (the server may take it now),
    // replacing its skipped row; with --keep-skipped it has nothing to do.
    let again = ok(sample_remote(&[&args[..], &["--api-key-env", "WRPO_TEST_KEY"]].concat(), Some("sekrit")));
    assert!(String::from_utf8_lossy(&again.stderr).contains("1 samples to make, 5 already"), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(read_dataset::<Sample>(Path::new(&out)).unwrap().len(), 6, "the new skipped row replaced the old one");
    assert_eq!(log.lock().unwrap().iter().filter(|(t, _)| t == "long").count(), 2);
    let kept = ok(sample_remote(&[&args[..], &["--api-key-env", "WRPO_TEST_KEY", "--keep-skipped"]].concat(), Some("sekrit")));
    assert!(String::from_utf8_lossy(&kept.stderr).contains("0 samples to make"));
}

#[test]
fn a_server_refusing_every_request_stops_the_run_without_skipped_rows() {
    let (url, _log) = fake_openai_server();
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_file(dir.path(), &["long"; 1]).display().to_string();
    let model = format!("remote=openai:{url}#fake");
    let out = dir.path().join("out").display().to_string();
    // OPENAI_API_KEY is read when --api-key-env is not given.
    let mut command = Command::new(env!("CARGO_BIN_EXE_wrpo-sample"));
    command.args(["generate", "--prompts", &prompts, "--model", &model, "--out", &out, "--n", "9", "--max-new-tokens", "8"]);
    let err = failed(command.env("OPENAI_API_KEY", "sekrit").output().unwrap());
    assert!(err.contains("the first 8 requests were all refused") && err.contains("HTTP 400"), "{err}");
    assert!(dataset_files(Path::new(&out).join("remote").as_path()).map_or(true, |f| f.is_empty()), "no skipped row committed");
    // Fewer requests than that, all refused: the run fails all the same, writing nothing.
    let mut command = Command::new(env!("CARGO_BIN_EXE_wrpo-sample"));
    command.args(["generate", "--prompts", &prompts, "--model", &model, "--out", &out, "--n", "2", "--max-new-tokens", "8"]);
    let err = failed(command.env("OPENAI_API_KEY", "sekrit").output().unwrap());
    assert!(err.contains("all 2 requests were refused") && err.contains("nothing was written"), "{err}");
    assert!(dataset_files(Path::new(&out).join("remote").as_path()).map_or(true, |f| f.is_empty()), "no skipped row committed");
}
