use std::{fs, path::Path, process::Command, sync::Arc};

use arrow::{
    array::{ArrayRef, ListArray, RecordBatch, StringArray, StructArray},
    buffer::OffsetBuffer,
    datatypes::{DataType, Field, Fields, Schema},
};
use parquet::arrow::ArrowWriter;
use serde_json::json;
use wrpo_common::{
    hash::prompt_id,
    prompts::{Prompt, Split},
    read_dataset,
    scored::ScoredSample,
    Message, Role,
};
use wrpo_sampler::import::{import_prompts, import_scored, ImportOptions};

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    fs::write(&p, text).unwrap();
    p
}

fn user(text: &str) -> Vec<Message> {
    vec![Message::new(Role::User, text)]
}

#[test]
fn jsonl_prompt_messages_and_conversations_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(
        dir.path(),
        "in.jsonl",
        concat!(
            r#"{"prompt": "What is 2+2?", "answer": "4"}"#,
            "\n",
            "\n",
            r#"{"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]}"#,
            "\r\n",
            r#"{"conversations": [{"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Hey"}, {"from": "human", "value": "Bye"}]}"#,
            "\n",
        ),
    );
    let opts = ImportOptions { reference_column: Some("answer".into()), ..Default::default() };
    let got = import_prompts(&input, &opts).unwrap();
    assert!(got.rejected.is_empty(), "{:?}", got.rejected);
    let p = &got.prompts;
    assert_eq!(p.len(), 3);
    assert_eq!(p[0].messages, user("What is 2+2?"));
    assert_eq!(p[0].prompt_id, prompt_id(&p[0].messages));
    assert_eq!(p[0].reference.as_deref(), Some("4"));
    assert_eq!(p[0].origin, "in.jsonl");
    assert_eq!(p[1].messages, vec![Message::new(Role::System, "Be terse."), Message::new(Role::User, "Hi")]);
    assert_eq!(p[1].reference, None);
    assert_eq!(p[2].messages, vec![Message::new(Role::User, "Hello"), Message::new(Role::Assistant, "Hey"), Message::new(Role::User, "Bye")]);
}

#[test]
fn each_class_of_bad_row_is_reported_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = Vec::new();
    for line in [
        r#"{"prompt": "fine"}"#,
        r#"{"prompt": "   "}"#,
        r#"{"prompt": 42}"#,
        r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}"#,
        r#"{"messages": "not a list"}"#,
        r#"{"messages": [{"role": "wizard", "content": "q"}]}"#,
        r#"{"text": "no prompt column"}"#,
        r#"{"prompt_id": "x1", "prompt": "first"}"#,
        r#"{"prompt_id": "x1", "prompt": "second"}"#,
        r#"{"prompt_id": "x1", "prompt": "first"}"#,
        r#"{"prompt": "broken"#,
        r#"[1, 2]"#,
    ] {
        text.extend_from_slice(line.as_bytes());
        text.push(b'\n');
    }
    text.extend_from_slice(b"{\"prompt\": \"bad \xff byte\"}\n");
    let input = dir.path().join("bad.jsonl");
    fs::write(&input, &text).unwrap();

    let got = import_prompts(&input, &ImportOptions::default()).unwrap();
    let ids: Vec<_> = got.prompts.iter().map(|p| p.prompt_id.clone()).collect();
    assert_eq!(ids, [prompt_id(&user("fine")), "x1".to_string()]);
    assert_eq!(got.duplicates, 1);
    let reasons: Vec<(String, String)> = got.rejected.iter().map(|r| (r.location.clone(), r.reason.clone())).collect();
    let expect = [
        ("line 2", "is empty"),
        ("line 3", "'prompt' must be a string, found a number"),
        ("line 4", "the last turn has role 'assistant'"),
        ("line 5", "'messages' must be a list of turns"),
        ("line 6", "unknown role \"wizard\""),
        ("line 7", "no 'prompt', 'messages' or 'conversations' column"),
        ("line 9", "prompt_id 'x1' is already used by line 8 for a different conversation"),
        ("line 11", "not valid JSON"),
        ("line 12", "expected a JSON object, found a list"),
        ("line 13", "invalid UTF-8 at byte 16"),
    ];
    assert_eq!(reasons.len(), expect.len(), "{reasons:#?}");
    for ((loc, reason), (want_loc, want)) in reasons.iter().zip(expect) {
        assert_eq!(loc, want_loc);
        assert!(reason.contains(want), "{loc}: '{reason}' lacks '{want}'");
    }
    assert!(got.rejected[9].raw.contains("bad \u{fffd} byte"));
}

#[test]
fn strip_last_assistant_keeps_the_answer_as_reference() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "sharegpt.jsonl", r#"{"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}"#);
    let opts = ImportOptions { strip_last_assistant: true, ..Default::default() };
    let got = import_prompts(&input, &opts).unwrap();
    assert_eq!(got.prompts[0].messages, user("Q"));
    assert_eq!(got.prompts[0].reference.as_deref(), Some("A"));
}

fn string_array(v: &[&str]) -> ArrayRef {
    Arc::new(StringArray::from(v.to_vec()))
}

/// list<struct<content, role>> with one conversation per row, as UltraFeedback stores `chosen`.
fn conversations(rows: &[&[(&str, &str)]]) -> ArrayRef {
    let fields = Fields::from(vec![Field::new("content", DataType::Utf8, true), Field::new("role", DataType::Utf8, true)]);
    let flat: Vec<&(&str, &str)> = rows.iter().flat_map(|r| r.iter()).collect();
    let structs = StructArray::new(
        fields.clone(),
        vec![string_array(&flat.iter().map(|t| t.1).collect::<Vec<_>>()), string_array(&flat.iter().map(|t| t.0).collect::<Vec<_>>())],
        None,
    );
    let offsets = OffsetBuffer::from_lengths(rows.iter().map(|r| r.len()));
    Arc::new(ListArray::new(Arc::new(Field::new("item", DataType::Struct(fields), true)), offsets, Arc::new(structs), None))
}

fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    let schema = Arc::new(Schema::new(columns.iter().map(|(n, a)| Field::new(*n, a.data_type().clone(), true)).collect::<Vec<_>>()));
    let batch = RecordBatch::try_new(schema.clone(), columns.into_iter().map(|(_, a)| a).collect()).unwrap();
    let mut w = ArrowWriter::try_new(fs::File::create(path).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn parquet_ultrafeedback_rows_keep_their_ids_and_take_the_chosen_answer() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("uf.parquet");
    write_parquet(
        &input,
        vec![
            ("prompt", string_array(&["Write a haiku", "Name a prime"])),
            ("prompt_id", string_array(&["a1b2", "c3d4"])),
            (
                "chosen",
                conversations(&[&[("user", "Write a haiku"), ("assistant", "Autumn moon...")], &[("user", "Name a prime"), ("assistant", "7")]]),
            ),
            (
                "messages",
                conversations(&[&[("user", "Write a haiku"), ("assistant", "Autumn moon...")], &[("user", "Name a prime"), ("assistant", "7")]]),
            ),
        ],
    );
    let opts = ImportOptions { reference_column: Some("chosen".into()), ..Default::default() };
    let got = import_prompts(&input, &opts).unwrap();
    assert!(got.rejected.is_empty(), "{:?}", got.rejected);
    assert_eq!(got.prompts.len(), 2);
    assert_eq!(got.prompts[0].prompt_id, "a1b2");
    assert_eq!(got.prompts[0].messages, user("Write a haiku"));
    assert_eq!(got.prompts[1].reference.as_deref(), Some("7"));
}

#[test]
fn parquet_messages_rows_and_bad_rows_are_numbered_by_row() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("chat.parquet");
    write_parquet(&input, vec![("messages", conversations(&[&[("user", "one")], &[("assistant", "two")], &[("system", "s"), ("user", "three")]]))]);
    let got = import_prompts(&input, &ImportOptions::default()).unwrap();
    assert_eq!(got.prompts.len(), 2);
    assert_eq!(got.rejected.len(), 1);
    assert_eq!(got.rejected[0].location, "row 1");
}

#[test]
fn the_eval_split_is_stable_and_close_to_the_fraction() {
    let dir = tempfile::tempdir().unwrap();
    let lines: String = (0..2000).map(|i| format!("{{\"prompt\": \"question {i}\"}}\n")).collect();
    let input = write(dir.path(), "many.jsonl", &lines);
    let opts = ImportOptions { eval_fraction: 0.2, ..Default::default() };
    let a = import_prompts(&input, &opts).unwrap().prompts;
    let eval = a.iter().filter(|p| p.split == Split::Eval).count();
    assert!((340..460).contains(&eval), "{eval} of 2000 in eval");

    // The split of a prompt depends on its id and the seed, not on the file around it.
    let reversed: String = lines.lines().rev().map(|l| format!("{l}\n")).collect();
    let input_rev = write(dir.path(), "rev.jsonl", &reversed);
    let b = import_prompts(&input_rev, &opts).unwrap().prompts;
    let split_of = |ps: &[Prompt], id: &str| ps.iter().find(|p| p.prompt_id == id).unwrap().split;
    assert!(a.iter().all(|p| split_of(&b, &p.prompt_id) == p.split));
    let other_seed = import_prompts(&input, &ImportOptions { seed: 7, ..opts }).unwrap().prompts;
    assert_ne!(a.iter().map(|p| p.split).collect::<Vec<_>>(), other_seed.iter().map(|p| p.split).collect::<Vec<_>>());
}

/// A study's fixed sets: a row's own split wins over the hash draw, `test`
/// is the eval split, and a split of another name is a bad row.
#[test]
fn a_rows_own_split_wins_over_the_hash() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(
        dir.path(),
        "study.jsonl",
        concat!(
            "{\"prompt\": \"a\", \"split\": \"train\"}\n",
            "{\"prompt\": \"b\", \"split\": \"test\"}\n",
            "{\"prompt\": \"c\", \"split\": \"validation\"}\n",
            "{\"prompt\": \"d\", \"split\": \"eval\"}\n",
            "{\"prompt\": \"e\"}\n",
            "{\"prompt\": \"f\", \"split\": \"dev\"}\n",
        ),
    );
    // Every unsplit row would be drawn into eval; the split rows keep theirs.
    let imported = import_prompts(&input, &ImportOptions { eval_fraction: 1.0, ..Default::default() }).unwrap();
    let splits: Vec<Split> = imported.prompts.iter().map(|p| p.split).collect();
    assert_eq!(splits, vec![Split::Train, Split::Eval, Split::Validation, Split::Eval, Split::Eval]);
    assert_eq!(imported.rejected.len(), 1);
    assert!(imported.rejected[0].location.contains("line 6") && imported.rejected[0].reason.contains("'dev'"), "{:?}", imported.rejected[0]);
}

fn wrpo_sample(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wrpo-sample")).args(args).output().unwrap()
}

#[test]
fn the_cli_writes_nothing_on_bad_rows_unless_told_to_skip_them() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "in.jsonl", "{\"prompt\": \"ok\"}\n{\"prompt\": \"\"}\n");
    let out = dir.path().join("prompts.parquet");
    let args = ["import", "--input", input.to_str().unwrap(), "--out", out.to_str().unwrap()];

    let run = wrpo_sample(&args);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("1 bad row(s)") && err.contains("in.jsonl:line 2") && err.contains("nothing was written"), "{err}");
    assert!(!out.exists());

    let run = wrpo_sample(&[&args[..], &["--skip-bad"]].concat());
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let prompts = read_dataset::<Prompt>(&out).unwrap();
    assert_eq!(prompts.len(), 1);
    let side = fs::read_to_string(dir.path().join("prompts.rejected.jsonl")).unwrap();
    let rejected: serde_json::Value = serde_json::from_str(side.trim()).unwrap();
    assert_eq!(rejected["location"], "line 2");
    assert_eq!(rejected["raw"], "{\"prompt\": \"\"}");

    // Provenance: the command, the configuration and the input's hash.
    let file = wrpo_common::io::read_file::<Prompt>(&out).unwrap();
    assert!(file.provenance.producer.starts_with("wrpo-sample "));
    assert_eq!(file.provenance.config["eval_fraction"], 0.0);
    assert_eq!(file.provenance.inputs[0].sha256, wrpo_common::io::file_sha256(&input).unwrap());
    assert!(file.provenance.command.iter().any(|a| a == "--skip-bad"));

    let run = wrpo_sample(&["import", "--input", "/nonexistent.jsonl", "--out", out.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&run.stderr).contains("cannot open /nonexistent.jsonl"));
}

#[test]
fn import_scored_names_every_bad_row_class_with_its_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scored.jsonl");
    let good = |id: &str| json!({"prompt_id": id, "prompt": "q", "all_generated_responses": ["a", "b"], "all_rm_scores": [0.1, 0.2]});
    let mut rows = vec![
        good("ok"),
        json!({"prompt_id": "p1", "prompt": "q", "all_rm_scores": [0.1]}),
        json!({"prompt_id": "p2", "prompt": "q", "all_generated_responses": "a", "all_rm_scores": [0.1]}),
        json!({"prompt_id": "p3", "prompt": "q", "all_generated_responses": ["a", 3], "all_rm_scores": [0.1, 0.2]}),
        json!({"prompt_id": "p4", "prompt": "q", "all_generated_responses": ["a", "b"], "all_rm_scores": [0.1]}),
        json!({"prompt_id": "p5", "prompt": "q", "all_generated_responses": ["a"], "all_rm_scores": [null]}),
        json!({"prompt_id": "p6", "prompt": "q", "all_generated_responses": [], "all_rm_scores": []}),
        json!({"prompt_id": "p7", "all_generated_responses": ["a"], "all_rm_scores": [1.0]}),
        json!({"prompt_id": "ok", "prompt": "another question", "all_generated_responses": ["a", "b"], "all_rm_scores": [0.1, 0.2]}),
        good("ok"),
        json!({"prompt_id": "p8", "prompt": "q", "all_generated_responses": ["a", " "], "all_rm_scores": [0.1, 0.2]}),
    ];
    rows.push(json!([1, 2]));
    std::fs::write(&path, rows.iter().map(|r| r.to_string() + "\n").collect::<String>()).unwrap();
    let imported = import_scored(&path, "m", "rm").unwrap();
    let got: Vec<(String, String)> = imported.rejected.iter().map(|r| (r.location.clone(), r.reason.clone())).collect();
    let want = [
        ("line 2", "no 'all_generated_responses' column"),
        ("line 3", "'all_generated_responses' must be a list, found a string"),
        ("line 4", "'all_generated_responses' item 1 (0-based) must be a non-empty string, found a number"),
        ("line 5", "2 responses but 1 scores in 'all_rm_scores'"),
        ("line 6", "'all_rm_scores' item 0 (0-based) must be a finite number, found null"),
        ("line 7", "'all_generated_responses' is empty"),
        ("line 8", "no 'prompt', 'messages' or 'conversations' column"),
        ("line 9", "prompt_id 'ok' is already used by line 1 for other content"),
        ("line 11", "'all_generated_responses' item 1 (0-based) must be a non-empty string, found an empty string"),
        ("line 12", "expected a JSON object, found a list"),
    ];
    assert_eq!(got, want.map(|(l, r)| (l.to_string(), r.to_string())));
    assert_eq!(imported.duplicates, 1, "line 10 repeats line 1");
    assert_eq!(imported.samples.len(), 2);
    assert_eq!(imported.scored.iter().map(|s| s.reward).collect::<Vec<_>>(), [0.1, 0.2]);

    // The binary writes nothing while bad rows remain, unless --skip-bad.
    let (samples, scores) = (dir.path().join("samples"), dir.path().join("scores"));
    let run = |extra: &[&str]| {
        let args = [
            "import-scored",
            "--input",
            path.to_str().unwrap(),
            "--out-samples",
            samples.to_str().unwrap(),
            "--out-scores",
            scores.to_str().unwrap(),
            "--model",
            "m",
            "--reward-model",
            "rm",
        ];
        Command::new(env!("CARGO_BIN_EXE_wrpo-sample")).args(args).args(extra).output().unwrap()
    };
    let out = run(&[]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("line 4: 'all_generated_responses' item 1"));
    assert!(!samples.exists() && !scores.exists());
    assert!(run(&["--skip-bad"]).status.success());
    assert_eq!(read_dataset::<ScoredSample>(&scores).unwrap().len(), 2);
    assert_eq!(std::fs::read_to_string(scores.join("m.rejected.jsonl")).unwrap().lines().count(), 10);
    let again = run(&["--skip-bad"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"), "a second import never mixes with the first");
}

#[test]
fn arguments_that_are_not_utf8_or_out_of_range_give_errors_not_panics() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "p.jsonl", "{\"prompt\": \"hi\"}\n");
    // A file name that is not UTF-8 (a Latin-1 é): provenance records it lossily.
    let out = dir.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9.parquet"));
    let status = Command::new(env!("CARGO_BIN_EXE_wrpo-sample")).arg("import").arg("--input").arg(&input).arg("--out").arg(&out).output().unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert!(out.exists());
    let zero = wrpo_sample(&["generate", "--prompts", "p.parquet", "--model", "m.gguf", "--max-new-tokens", "0", "--out", "o"]);
    assert!(!zero.status.success() && String::from_utf8_lossy(&zero.stderr).contains("--max-new-tokens must be at least 1"));
}

/// import-scored with one folder for both outputs would write the scores
/// over the samples: refused before reading, nothing written.
#[test]
fn import_scored_refuses_one_folder_for_both_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "s.jsonl", "{\"prompt\": \"hi\", \"all_generated_responses\": [\"a\", \"b\"], \"all_rm_scores\": [0.1, 0.2]}\n");
    let both = dir.path().join("both");
    let out = wrpo_sample(&[
        "import-scored",
        "--input",
        input.to_str().unwrap(),
        "--out-samples",
        both.to_str().unwrap(),
        "--out-scores",
        both.to_str().unwrap(),
        "--model",
        "m",
        "--reward-model",
        "rm",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--out-samples and --out-scores are both"), "{err}");
    assert!(!both.exists());
}

/// A --reference-column that no row has is a typo: refused, naming the
/// columns there are (it used to import every reference as null).
#[test]
fn a_reference_column_in_no_row_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "p.jsonl", "{\"prompt\": \"hi\", \"reference\": \"hello\"}\n{\"prompt\": \"2+2?\", \"reference\": \"4\"}\n");
    let opts = |column: &str| ImportOptions { reference_column: Some(column.into()), ..ImportOptions::default() };
    let err = import_prompts(&path, &opts("answer")).err().unwrap().to_string();
    assert!(err.contains("--reference-column 'answer' is in no row") && err.contains("\"reference\""), "{err}");
    let imported = import_prompts(&path, &opts("reference")).unwrap();
    assert_eq!(imported.prompts[1].reference.as_deref(), Some("4"));
}

/// A JSON-lines file that starts with a UTF-8 byte-order mark imports as
/// without it; a null where a list belongs is named as null, not as a
/// missing column.
#[test]
fn a_byte_order_mark_is_accepted_and_a_null_column_is_named_null() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bom.jsonl", "\u{feff}{\"prompt\": \"hi\"}\n{\"prompt\": \"there\"}\n");
    let imported = import_prompts(&path, &ImportOptions::default()).unwrap();
    assert_eq!((imported.prompts.len(), imported.rejected.len()), (2, 0));
    let path = write(dir.path(), "empty-id.jsonl", "{\"prompt_id\": \"\", \"prompt\": \"hi\"}\n");
    let imported = import_prompts(&path, &ImportOptions::default()).unwrap();
    assert_eq!(imported.rejected[0].reason, "'prompt_id' must be a non-empty string, found an empty string");
    let path = write(dir.path(), "null.jsonl", "{\"prompt\": \"q\", \"all_generated_responses\": null, \"all_rm_scores\": [0.1]}\n");
    let imported = import_scored(&path, "m", "rm").unwrap();
    assert_eq!(imported.rejected[0].reason, "'all_generated_responses' is null; expected a list");
}
