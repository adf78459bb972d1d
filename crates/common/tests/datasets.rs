//! Round trips of every dataset and rejection of files that do not match.

use std::{fs, path::Path, sync::Arc};

use arrow::{
    array::{ArrayRef, Float64Array, ListArray, RecordBatch, StringArray, StructArray},
    buffer::OffsetBuffer,
    datatypes::{DataType, Field, Fields, Schema},
};
use parquet::{
    arrow::{arrow_reader::ParquetRecordBatchReaderBuilder, ArrowWriter},
    file::metadata::KeyValue,
    file::properties::WriterProperties,
};
use wrpo_common::{
    io::{dataset_files, keys, read_file, resume_files, AtomicFile},
    metrics::StepMetrics,
    pairs::Pair,
    prompts::{Prompt, Split},
    read_dataset,
    samples::{FinishReason, Sample},
    scored::ScoredSample,
    sft::SftExample,
    write_dataset, Dataset, Message, Provenance, Role, ShardWriter,
};

fn prov() -> Provenance {
    let mut p = Provenance::new("wrpo-test 0", &serde_json::json!({"seed": 42, "n": 5})).unwrap();
    p.inputs.push(wrpo_common::io::InputHash { path: "in.jsonl".into(), sha256: "ab".repeat(32) });
    p
}

fn chat(text: &str) -> Vec<Message> {
    vec![Message::new(Role::System, "Be brief."), Message::new(Role::User, text)]
}

fn prompt(i: usize) -> Prompt {
    Prompt {
        prompt_id: format!("p{i}"),
        messages: chat(&format!("question {i} — ünïcödé 🚀")),
        reference: i.is_multiple_of(2).then(|| format!("answer {i}")),
        split: if i.is_multiple_of(3) { Split::Eval } else { Split::Train },
        origin: "test".into(),
    }
}

fn sample(i: usize) -> Sample {
    let skipped = i % 4 == 3;
    Sample {
        prompt_id: format!("p{}", i / 5),
        model: "m".into(),
        sample_index: (i % 5) as u32,
        prompt_text: "<|im_start|>user\nq<|im_end|>\n".into(),
        response: if skipped { String::new() } else { format!("r{i}") },
        prompt_tokens: 7,
        response_tokens: if skipped { 0 } else { 3 },
        finish_reason: if skipped {
            FinishReason::Skipped
        } else if i.is_multiple_of(2) {
            FinishReason::Stop
        } else {
            FinishReason::Length
        },
        skip_reason: skipped.then(|| "prompt has 9000 tokens, context is 8192".to_string()),
        temperature: 0.8,
        top_p: 0.95,
        top_k: 0,
        seed: u64::MAX - i as u64,
        generation_seconds: 0.25,
    }
}

fn scored(i: usize) -> ScoredSample {
    ScoredSample {
        prompt_id: format!("p{i}"),
        model: "m".into(),
        sample_index: 1,
        response: "r".into(),
        response_tokens: 1,
        finish_reason: FinishReason::Stop,
        reward: -1.5 + i as f64,
        reward_model: "rm".into(),
    }
}

fn sft(i: usize) -> SftExample {
    SftExample {
        prompt_id: format!("p{i}"),
        messages: chat("q"),
        response: "y_ws".into(),
        source_model: "big".into(),
        source_sample_index: 4,
        reward: Some(0.5),
    }
}

fn pair(i: usize) -> Pair {
    Pair {
        prompt_id: format!("p{i}"),
        messages: chat("q"),
        y_ws: "ws".into(),
        y_ws_model: "big".into(),
        y_ws_sample_index: 0,
        y_ws_reward: 0.9,
        y_wt: "wt".into(),
        y_wt_model: "target".into(),
        y_wt_sample_index: 1,
        y_wt_reward: 0.5,
        y_l: "l".into(),
        y_l_model: "target".into(),
        y_l_sample_index: 2,
        y_l_reward: 0.1,
        ref_logp_y_ws: i.is_multiple_of(2).then_some(-12.5),
        ref_logp_y_wt: None,
        ref_logp_y_l: Some(-3.0),
        ref_tokens_y_ws: i.is_multiple_of(2).then_some(12),
        ref_tokens_y_wt: None,
        ref_tokens_y_l: Some(4),
    }
}

fn metrics(i: usize) -> StepMetrics {
    StepMetrics {
        stage: "wrpo".into(),
        step: i as u64,
        epoch: i as f64 / 10.0,
        loss: 0.69,
        lr: 3e-7,
        alpha: Some(0.01 * i as f64),
        grad_norm: Some(1.0),
        tokens_per_second: 1000.0,
        rewards_pivot_accuracies: Some(0.5),
        ..Default::default()
    }
}

fn round_trip<T: Dataset + PartialEq + std::fmt::Debug>(make: fn(usize) -> T) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.parquet");
    // More rows than one row group, to cross batch boundaries on read.
    let rows: Vec<T> = (0..wrpo_common::io::ROW_GROUP_ROWS + 17).map(make).collect();
    write_dataset(&path, &rows, &prov()).unwrap();
    let file = read_file::<T>(&path).unwrap();
    assert_eq!(file.rows, rows);
    assert_eq!(file.version, T::VERSION);
    assert_eq!(file.provenance, prov());
}

#[test]
fn every_dataset_round_trips_with_its_metadata() {
    round_trip(prompt);
    round_trip(sample);
    round_trip(scored);
    round_trip(sft);
    round_trip(pair);
    round_trip(metrics);
}

/// Credentials inside a URL (a command argument or a setting) reach no file:
/// the metadata keeps the URL with them blanked.
#[test]
fn credentials_in_urls_are_blanked_in_the_metadata() {
    use wrpo_common::io::redact_credentials;
    assert_eq!(redact_credentials("classify:https://me:s3cret@gpu:8000/classify#rm"), "classify:https://[credentials]@gpu:8000/classify#rm");
    assert_eq!(redact_credentials("http://h:1/v1 and ftp://u@x"), "http://h:1/v1 and ftp://[credentials]@x");
    assert_eq!(redact_credentials("no url, an@address"), "no url, an@address");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.parquet");
    let mut p = prov();
    p.config = serde_json::json!({"reward": {"url": "http://me:s3cret@h:8000/v1"}, "list": ["https://a:b@c/d"]});
    p.command.push("--reward=judge:openai:http://me:s3cret@h:8000/v1#j".into());
    write_dataset(&path, &[prompt(0)], &p).unwrap();
    let file = read_file::<Prompt>(&path).unwrap();
    let stored = serde_json::to_string(&(&file.provenance.config, &file.provenance.command)).unwrap();
    assert!(!stored.contains("s3cret") && !stored.contains("a:b@"), "{stored}");
    assert_eq!(file.provenance.config["reward"]["url"], "http://[credentials]@h:8000/v1");
}

#[test]
fn a_file_of_another_schema_is_rejected_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prompts.parquet");
    write_dataset(&path, &[prompt(1)], &prov()).unwrap();
    let err = read_dataset::<Sample>(&path).unwrap_err().to_string();
    assert!(err.contains("prompts.parquet") && err.contains("is a 'prompts' dataset, expected a 'samples'"), "{err}");
}

/// A file written with arbitrary columns and key-value metadata.
fn write_raw(path: &Path, columns: Vec<(&str, ArrayRef)>, kv: Vec<(&str, &str)>) {
    let schema = Arc::new(Schema::new(columns.iter().map(|(n, a)| Field::new(*n, a.data_type().clone(), true)).collect::<Vec<_>>()));
    let batch = RecordBatch::try_new(schema.clone(), columns.into_iter().map(|(_, a)| a).collect()).unwrap();
    let kv = kv.into_iter().map(|(k, v)| KeyValue::new(k.to_string(), v.to_string())).collect();
    let props = WriterProperties::builder().set_key_value_metadata(Some(kv)).build();
    let mut w = ArrowWriter::try_new(fs::File::create(path).unwrap(), schema, Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn scored_columns(reward: ArrayRef) -> Vec<(&'static str, ArrayRef)> {
    let s = |v: &str| Arc::new(StringArray::from(vec![v])) as ArrayRef;
    vec![
        ("prompt_id", s("p")),
        ("model", s("m")),
        ("sample_index", Arc::new(arrow::array::UInt32Array::from(vec![0]))),
        ("response", s("r")),
        ("response_tokens", Arc::new(arrow::array::UInt32Array::from(vec![1]))),
        ("finish_reason", s("stop")),
        ("reward", reward),
        ("reward_model", s("rm")),
    ]
}

const META: [(&str, &str); 5] = [(keys::SCHEMA, "scored"), (keys::VERSION, "1"), (keys::COMMAND, "[]"), (keys::CONFIG, "{}"), (keys::INPUTS, "[]")];

#[test]
fn a_valid_raw_file_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.parquet");
    write_raw(&path, scored_columns(Arc::new(Float64Array::from(vec![0.5]))), META.to_vec());
    assert_eq!(read_dataset::<ScoredSample>(&path).unwrap()[0].reward, 0.5);
}

#[test]
fn missing_mistyped_and_null_columns_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.parquet");

    let mut cols = scored_columns(Arc::new(Float64Array::from(vec![0.5])));
    cols.retain(|(n, _)| *n != "reward_model");
    write_raw(&path, cols, META.to_vec());
    let err = read_dataset::<ScoredSample>(&path).unwrap_err().to_string();
    assert!(err.contains("bad.parquet") && err.contains("column 'reward_model' is missing"), "{err}");

    write_raw(&path, scored_columns(Arc::new(StringArray::from(vec!["high"]))), META.to_vec());
    let err = read_dataset::<ScoredSample>(&path).unwrap_err().to_string();
    assert!(err.contains("column 'reward' has type Utf8, expected Float64"), "{err}");

    write_raw(&path, scored_columns(Arc::new(Float64Array::from(vec![None]))), META.to_vec());
    let err = read_dataset::<ScoredSample>(&path).unwrap_err().to_string();
    assert!(err.contains("column 'reward' is null at row 0"), "{err}");
}

#[test]
fn newer_versions_and_foreign_files_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.parquet");
    let mut meta = META.to_vec();
    meta[1] = (keys::VERSION, "2");
    write_raw(&path, scored_columns(Arc::new(Float64Array::from(vec![0.5]))), meta);
    let err = read_dataset::<ScoredSample>(&path).unwrap_err().to_string();
    assert!(err.contains("schema version 2 is newer than this build reads (up to 1)"), "{err}");

    // Without our metadata, a file whose columns do not match is refused.
    write_raw(&path, vec![("text", Arc::new(StringArray::from(vec!["x"])) as ArrayRef)], vec![]);
    let err = read_dataset::<ScoredSample>(&path).unwrap_err().to_string();
    assert!(err.contains("column 'prompt_id' is missing"), "{err}");

    fs::write(&path, b"PAR1 not really").unwrap();
    let err = read_dataset::<ScoredSample>(&path).unwrap_err().to_string();
    assert!(err.contains("is not a readable Parquet file"), "{err}");
}

/// A pairs file of version 1 (before the ref_tokens_* columns) still
/// reads, those columns as null; a file that claims version 2 without them
/// is refused.
#[test]
fn a_column_added_by_a_later_version_reads_as_null_from_an_older_file() {
    let dir = tempfile::tempdir().unwrap();
    let (v2, v1) = (dir.path().join("v2.parquet"), dir.path().join("v1.parquet"));
    write_dataset(&v2, &[pair(0)], &prov()).unwrap();
    let builder = ParquetRecordBatchReaderBuilder::try_new(fs::File::open(&v2).unwrap()).unwrap();
    let kv = builder.metadata().file_metadata().key_value_metadata().cloned().unwrap();
    let batch = builder.build().unwrap().next().unwrap().unwrap();
    let keep: Vec<usize> = (0..batch.num_columns()).filter(|&i| !batch.schema().field(i).name().starts_with("ref_tokens_")).collect();
    let old = batch.project(&keep).unwrap();
    for version in ["1", "2"] {
        let kv = kv.iter().map(|e| if e.key == keys::VERSION { KeyValue::new(e.key.clone(), version.to_string()) } else { e.clone() }).collect();
        let props = WriterProperties::builder().set_key_value_metadata(Some(kv)).build();
        let mut w = ArrowWriter::try_new(fs::File::create(&v1).unwrap(), old.schema(), Some(props)).unwrap();
        w.write(&old).unwrap();
        w.close().unwrap();
        match version {
            "1" => {
                let want = Pair { ref_tokens_y_ws: None, ref_tokens_y_l: None, ..pair(0) };
                assert_eq!(read_dataset::<Pair>(&v1).unwrap(), vec![want]);
            }
            _ => {
                let err = read_dataset::<Pair>(&v1).unwrap_err().to_string();
                assert!(err.contains("column 'ref_tokens_y_ws' is missing"), "{err}");
            }
        }
    }
}

#[test]
fn row_checks_name_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.parquet");
    let mut cols = scored_columns(Arc::new(Float64Array::from(vec![0.5])));
    cols[5].1 = Arc::new(StringArray::from(vec!["exploded"]));
    write_raw(&path, cols, META.to_vec());
    let err = format!("{:#}", read_dataset::<ScoredSample>(&path).unwrap_err());
    assert!(err.contains("s.parquet") && err.contains("exploded"), "{err}");
}

#[test]
fn an_invalid_row_is_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.parquet");
    let mut bad = prompt(0);
    bad.messages.push(Message::new(Role::Assistant, "answer"));
    let err = write_dataset(&path, &[prompt(1), bad], &prov()).unwrap_err().to_string();
    assert!(err.contains("row 1 (0-based)") && err.contains("must end with a user turn"), "{err}");
    assert!(!path.exists());
    // NaN rewards: refused in scored samples, SFT examples and pairs alike.
    let mut s = scored(0);
    s.reward = f64::NAN;
    assert!(write_dataset(&path, &[s], &prov()).unwrap_err().to_string().contains("reward is NaN"));
    let mut e = sft(0);
    e.reward = Some(f64::NAN);
    assert!(write_dataset(&path, &[e], &prov()).unwrap_err().to_string().contains("reward is NaN"));
    let mut q = pair(0);
    q.y_ws_reward = f64::INFINITY;
    assert!(write_dataset(&path, &[q], &prov()).unwrap_err().to_string().contains("y_ws_reward is inf"));
    assert!(!path.exists());
}

#[test]
fn an_interrupted_write_leaves_nothing_under_the_final_name() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out.parquet");
    {
        let mut f = AtomicFile::create(&dest).unwrap();
        std::io::Write::write_all(f.file(), b"half a file").unwrap();
        assert!(!dest.exists());
        // Dropped without commit, as on an error or panic.
    }
    assert!(!dest.exists());
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "temporary file left behind");

    // Overwriting keeps the old file whole until the new one is complete.
    write_dataset(&dest, &[prompt(1)], &prov()).unwrap();
    {
        let mut f = AtomicFile::create(&dest).unwrap();
        std::io::Write::write_all(f.file(), b"garbage").unwrap();
    }
    assert_eq!(read_dataset::<Prompt>(&dest).unwrap(), vec![prompt(1)]);
}

#[test]
fn shards_are_numbered_on_from_existing_ones_and_read_as_one_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("samples").join("m");
    let mut w = ShardWriter::<Sample>::new(&out, prov(), 4).unwrap();
    for i in 0..10 {
        w.push(sample(i)).unwrap();
    }
    w.finish().unwrap();
    // A resumed run continues the numbering instead of overwriting.
    let mut w = ShardWriter::<Sample>::new(&out, prov(), 4).unwrap();
    w.push(sample(10)).unwrap();
    w.finish().unwrap();
    let names: Vec<_> =
        dataset_files(&dir.path().join("samples")).unwrap().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    let numbers: Vec<&str> = names.iter().map(|n| &n[..10]).collect();
    assert_eq!(numbers, ["part-00000", "part-00001", "part-00002", "part-00003"], "{names:?}");
    assert_ne!(names[0][11..], names[3][11..], "each writer tags its shards: {names:?}");
    let rows = read_dataset::<Sample>(&dir.path().join("samples")).unwrap();
    assert_eq!(rows, (0..11).map(sample).collect::<Vec<_>>());

    let empty = dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let err = read_dataset::<Sample>(&empty).unwrap_err().to_string();
    assert!(err.contains("holds no .parquet files"), "{err}");
}

/// The contract sampling and scoring share: a unit of work is never split
/// across shards, a shard is committed once a unit fills it, and a resumed
/// run reads the shards back unless they were made otherwise.
#[test]
fn units_of_work_stay_whole_and_a_resumed_run_checks_how_shards_were_made() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    let mut w = ShardWriter::<Sample>::new(&out, prov(), 4).unwrap();
    // Units of 3 rows: the first stays buffered, the second fills a shard of 6.
    w.push_unit((0..3).map(sample)).unwrap();
    assert_eq!((w.pending(), dataset_files(&out).is_err()), (3, true));
    w.push_unit((3..6).map(sample)).unwrap();
    assert_eq!(w.pending(), 0);
    w.push(sample(6)).unwrap();
    w.finish().unwrap();
    let sizes: Vec<usize> = dataset_files(&out).unwrap().iter().map(|p| read_file::<Sample>(p).unwrap().rows.len()).collect();
    assert_eq!(sizes, [6, 1]);

    let same = resume_files::<Sample>(&out, |_| None).unwrap();
    assert_eq!(same.iter().map(|f| f.rows.len()).sum::<usize>(), 7);
    let err = resume_files::<Sample>(&out, |then| Some(format!("with seed {}", then.config["seed"]))).err().unwrap().to_string();
    assert!(err.contains("part-00000") && err.contains("was made with seed 42") && err.contains("another --out"), "{err}");
    assert!(resume_files::<Sample>(&dir.path().join("none"), |_| Some("never asked".into())).unwrap().is_empty());
}

/// What DuckDB's COPY (or pyarrow, polars) writes: nullable fields, large or
/// view strings, list items named `element`, struct fields in another order,
/// and none of our metadata.
#[test]
fn a_file_rewritten_by_another_tool_reads_back_and_nulls_are_still_named() {
    use arrow::array::{LargeListArray, LargeStringArray, StringViewArray};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("duck.parquet");
    // Turns as a list, or as a large list (64-bit offsets, as polars writes).
    let turns = |contents: Vec<Option<&str>>, large: bool| -> ArrayRef {
        let n = contents.len();
        let fields = Fields::from(vec![Field::new("content", DataType::LargeUtf8, true), Field::new("role", DataType::Utf8View, true)]);
        let items = StructArray::new(
            fields.clone(),
            vec![Arc::new(LargeStringArray::from(contents)) as ArrayRef, Arc::new(StringViewArray::from(vec!["user"; n]))],
            None,
        );
        let item = Arc::new(Field::new("element", DataType::Struct(fields), true));
        if large {
            Arc::new(LargeListArray::new(item, OffsetBuffer::from_lengths(vec![1; n]), Arc::new(items), None))
        } else {
            Arc::new(ListArray::new(item, OffsetBuffer::from_lengths(vec![1; n]), Arc::new(items), None))
        }
    };
    let columns = |contents: Vec<Option<&str>>, large: bool| {
        vec![
            ("prompt_id", Arc::new(LargeStringArray::from(vec!["a", "b"])) as ArrayRef),
            ("messages", turns(contents, large)),
            ("reference", Arc::new(StringViewArray::from(vec![Some("42"), None])) as ArrayRef),
            ("split", Arc::new(StringArray::from(vec!["train", "eval"])) as ArrayRef),
            ("origin", Arc::new(StringArray::from(vec!["duckdb", "duckdb"])) as ArrayRef),
        ]
    };
    for large in [false, true] {
        write_raw(&path, columns(vec![Some("What is 6 x 7?"), Some("Hi")], large), vec![]);
        let file = read_file::<Prompt>(&path).unwrap();
        assert_eq!(file.rows.len(), 2);
        assert_eq!(file.rows[0].messages, [Message::new(Role::User, "What is 6 x 7?")]);
        assert_eq!((file.rows[0].reference.as_deref(), file.rows[1].reference.as_deref()), (Some("42"), None));
        assert_eq!(file.provenance.producer, "", "provenance unknown");
        // A null where a value is required is named with its row, nested or not.
        write_raw(&path, columns(vec![Some("What is 6 x 7?"), None], large), vec![]);
        let err = read_dataset::<Prompt>(&path).unwrap_err().to_string();
        assert!(err.contains("column 'messages' holds a null at row 1"), "large list {large}: {err}");
    }
}

#[test]
fn two_machines_shards_copied_into_one_folder_read_as_one_dataset_and_a_second_writer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // `--shard 0/2` and `--shard 1/2`, each on its own machine, into folders of the same name.
    let (a, b, merged) = (dir.path().join("a/samples/m"), dir.path().join("b/samples/m"), dir.path().join("merged"));
    for (out, rows) in [(&a, 0..5), (&b, 5..9)] {
        let mut w = ShardWriter::<Sample>::new(out, prov(), 2).unwrap();
        for i in rows {
            w.push(sample(i)).unwrap();
        }
        w.finish().unwrap();
    }
    fs::create_dir(&merged).unwrap();
    for f in dataset_files(&a).unwrap().into_iter().chain(dataset_files(&b).unwrap()) {
        let to = merged.join(f.file_name().unwrap());
        assert!(!to.exists(), "{} would be overwritten", to.display());
        fs::copy(&f, to).unwrap();
    }
    let mut rows = read_dataset::<Sample>(&merged).unwrap();
    rows.sort_by(|x, y| (&x.prompt_id, x.sample_index).cmp(&(&y.prompt_id, y.sample_index)));
    assert_eq!(rows, (0..9).map(sample).collect::<Vec<_>>());

    // While one writer holds the folder, a second is refused; once it is done, it may start.
    let first = ShardWriter::<Sample>::new(&a, prov(), 2).unwrap();
    let err = ShardWriter::<Sample>::new(&a, prov(), 2).err().unwrap().to_string();
    assert!(err.contains("is being written by process") && err.contains(".lock"), "{err}");
    first.finish().unwrap();
    ShardWriter::<Sample>::new(&a, prov(), 2).unwrap();
    // A lock left by a process of this machine that is gone is taken over.
    fs::write(a.join(".lock"), format!("{} 4294967", fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim())).unwrap();
    ShardWriter::<Sample>::new(&a, prov(), 2).unwrap();
}

/// Two outputs at one place (however spelled), or an output at or inside an
/// input, are refused before any work; distinct paths pass.
#[test]
fn outputs_that_would_destroy_data_are_refused() {
    use wrpo_common::io::check_paths;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir(d.join("scores")).unwrap();
    let (a, a_again) = (d.join("out.parquet"), d.join("scores/../out.parquet"));
    let err = check_paths(&[("--out", &a), ("--out-preference", &a_again)], &[]).unwrap_err().to_string();
    assert!(err.contains("--out and --out-preference are both"), "{err}");
    let err = check_paths(&[("--out", &d.join("scores/m/part-00000.parquet"))], &[("--samples", &d.join("scores"))]).unwrap_err().to_string();
    assert!(err.contains("lies inside) the input --samples"), "{err}");
    check_paths(&[("--out", &d.join("new/a.parquet")), ("--out-preference", &d.join("new/b.parquet"))], &[("--prompts", &d.join("scores"))]).unwrap();
}

/// A key twice, in one file or across a dataset's files (as DuckDB or a
/// copy can write), is refused naming both rows; so is a reward of -inf.
#[test]
fn duplicate_keys_and_infinite_rewards_are_refused_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prompts.parquet");
    let mut rows = vec![prompt(0), prompt(1), prompt(2)];
    rows[2].prompt_id = rows[0].prompt_id.clone();
    write_dataset(&path, &rows, &prov()).unwrap();
    let err = read_dataset::<Prompt>(&path).unwrap_err().to_string();
    assert!(err.contains("row 2 (0-based) has prompt_id =") && err.contains("as row 0 of"), "{err}");
    let shards = dir.path().join("scores/m");
    write_dataset(&shards.join("part-00000.parquet"), &[scored(0)], &prov()).unwrap();
    write_dataset(&shards.join("part-00001.parquet"), &[scored(0)], &prov()).unwrap();
    let err = read_dataset::<ScoredSample>(&dir.path().join("scores")).unwrap_err().to_string();
    assert!(err.contains("part-00001.parquet: row 0") && err.contains("part-00000.parquet"), "{err}");
    let path = dir.path().join("inf.parquet");
    write_raw(&path, scored_columns(Arc::new(Float64Array::from(vec![f64::NEG_INFINITY]))), META.to_vec());
    let err = read_dataset::<ScoredSample>(&path).unwrap_err().to_string();
    assert!(err.contains("inf.parquet: row 0") && err.contains("reward is -inf"), "{err}");
}

/// An unknown value in an enum column (as another tool may write) is named
/// with its row, not only as a batch that does not decode.
#[test]
fn an_unknown_enum_value_is_named_with_its_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.parquet");
    let s = |v: [&str; 2]| Arc::new(StringArray::from(v.to_vec())) as ArrayRef;
    let u = |v: [u32; 2]| Arc::new(arrow::array::UInt32Array::from(v.to_vec())) as ArrayRef;
    let columns = vec![
        ("prompt_id", s(["p", "q"])),
        ("model", s(["m", "m"])),
        ("sample_index", u([0, 0])),
        ("response", s(["r", "r"])),
        ("response_tokens", u([1, 1])),
        ("finish_reason", s(["stop", "exploded"])),
        ("reward", Arc::new(Float64Array::from(vec![0.5, 0.5])) as ArrayRef),
        ("reward_model", s(["rm", "rm"])),
    ];
    write_raw(&path, columns, META.to_vec());
    let err = read_dataset::<ScoredSample>(&path).unwrap_err().to_string();
    assert!(err.contains("odd.parquet: row 1 (0-based)") && err.contains("exploded"), "{err}");
}

/// A single-file output replaces a dataset of its own kind (a rerun), never
/// one of another kind or a file that is not ours, as folders already refuse.
#[test]
fn a_file_output_never_replaces_another_kind_of_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.parquet");
    write_dataset(&path, &[prompt(1)], &prov()).unwrap();
    write_dataset(&path, &[prompt(2)], &prov()).unwrap();
    let err = write_dataset(&path, &[pair(0)], &prov()).unwrap_err().to_string();
    assert!(err.contains("holds a 'prompts' dataset; this would replace it with a 'pairs' dataset"), "{err}");
    assert_eq!(read_dataset::<Prompt>(&path).unwrap(), vec![prompt(2)]);
    let text = dir.path().join("input.jsonl");
    fs::write(&text, "{\"prompt\": \"hi\"}\n").unwrap();
    let err = write_dataset(&text, &[prompt(1)], &prov()).unwrap_err().to_string();
    assert!(err.contains("is not a 'prompts' dataset written by wrpo"), "{err}");
    assert_eq!(fs::read_to_string(&text).unwrap(), "{\"prompt\": \"hi\"}\n");
}
