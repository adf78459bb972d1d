//! Import prompts from the JSONL or Parquet shapes of public datasets into the
//! `prompts` dataset.
//!
//! Accepted rows (one JSON object per JSONL line, or one Parquet row):
//! - `{"prompt": "..."}`: one user turn;
//! - `{"messages": [{"role": .., "content": ..}, ..]}` or
//!   `{"conversations": [{"from": "human"|"gpt"|"system", "value": ..}, ..]}`;
//! - either with its own `prompt_id` (UltraFeedback) and a reference answer in
//!   the column named by `reference_column` (a string, or a conversation whose
//!   last assistant turn is the answer, as UltraFeedback's `chosen`).

use std::{
    collections::{hash_map::Entry, HashMap},
    fs,
    io::Write,
    path::Path,
};

use anyhow::{bail, Context, Result};
use arrow::json::ArrayWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;
use serde_json::{Map, Value};
use wrpo_common::{
    dataset::check_conversation,
    hash::{prompt_id, uniform_draw},
    io::AtomicFile,
    prompts::{Prompt, Split},
    samples::{FinishReason, Sample},
    scored::ScoredSample,
    Message, Role,
};

#[derive(Clone, Debug, Serialize)]
pub struct ImportOptions {
    /// Fraction of prompts put in the `eval` split, chosen by hash.
    pub eval_fraction: f64,
    /// Seed of the hash that picks the eval split.
    pub seed: u64,
    /// Column holding a reference answer.
    pub reference_column: Option<String>,
    /// Cut a final assistant turn off conversations (ShareGPT-style rows end
    /// with the answer) and keep it as the reference when none is named.
    pub strip_last_assistant: bool,
    /// Value of the `origin` column; defaults to the input file name.
    pub origin: Option<String>,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions { eval_fraction: 0.0, seed: 42, reference_column: None, strip_last_assistant: false, origin: None }
    }
}

/// A row that could not be imported.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rejected {
    /// `line 12` (JSONL, 1-based) or `row 11` (Parquet, 0-based).
    pub location: String,
    pub reason: String,
    /// The row as read (lossily decoded where it was not UTF-8).
    pub raw: String,
}

#[derive(Debug, Default)]
pub struct Imported {
    pub prompts: Vec<Prompt>,
    pub rejected: Vec<Rejected>,
    /// Rows dropped because an identical conversation had the same id.
    pub duplicates: usize,
}

struct RawRow {
    location: String,
    raw: String,
    parsed: Result<Map<String, Value>, String>,
}

/// Read and convert every row of `path`; rows that fail are collected in
/// [`Imported::rejected`], never silently dropped.
pub fn import_prompts(path: &Path, opts: &ImportOptions) -> Result<Imported> {
    if !(0.0..=1.0).contains(&opts.eval_fraction) {
        bail!("--eval-fraction must lie in [0, 1], got {}", opts.eval_fraction);
    }
    let rows = read_rows(path)?;
    let origin = opts.origin.clone().unwrap_or_else(|| path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into()));

    // A named reference column that no row has is a typo, not a set without references.
    if let Some(column) = &opts.reference_column {
        let objects: Vec<&serde_json::Map<String, Value>> = rows.iter().filter_map(|r| r.parsed.as_ref().ok()).collect();
        if !objects.is_empty() && !objects.iter().any(|o| o.contains_key(column)) {
            let mut columns: Vec<&String> = objects.iter().flat_map(|o| o.keys()).collect();
            columns.sort();
            columns.dedup();
            bail!("{}: --reference-column '{column}' is in no row; its columns are {columns:?}", path.display());
        }
    }
    let mut out = Imported::default();
    let mut seen: HashMap<String, (usize, String)> = HashMap::new();
    for row in rows {
        let converted = row.parsed.and_then(|obj| convert(&obj, opts));
        let (id, messages, reference, fixed_split) = match converted {
            Ok(c) => c,
            Err(reason) => {
                out.rejected.push(Rejected { location: row.location, reason, raw: row.raw });
                continue;
            }
        };
        match seen.entry(id.clone()) {
            Entry::Occupied(e) => {
                let (first, first_location) = e.get();
                if out.prompts[*first].messages == messages {
                    out.duplicates += 1;
                } else {
                    out.rejected.push(Rejected {
                        location: row.location,
                        reason: format!("prompt_id '{id}' is already used by {first_location} for a different conversation"),
                        raw: row.raw,
                    });
                }
            }
            Entry::Vacant(e) => {
                e.insert((out.prompts.len(), row.location));
                // A row's own split wins over the hash draw (a study's fixed train / validation / test sets).
                let split =
                    fixed_split.unwrap_or_else(|| if uniform_draw(opts.seed, "eval", &id) < opts.eval_fraction { Split::Eval } else { Split::Train });
                out.prompts.push(Prompt { prompt_id: id, messages, reference, split, origin: origin.clone() });
            }
        }
    }
    Ok(out)
}

/// Rows that already carry several responses per prompt and their reward
/// scores, as `princeton-nlp/llama3-ultrafeedback-armorm` has them:
/// `prompt_id` (optional), `prompt` (or `messages` / `conversations`),
/// `all_generated_responses` (strings) and `all_rm_scores` (numbers, one per
/// response). They become `samples` of `model` and their `scored` rows.
#[derive(Debug, Default)]
pub struct ImportedScored {
    pub samples: Vec<Sample>,
    pub scored: Vec<ScoredSample>,
    pub rejected: Vec<Rejected>,
    /// Rows dropped because an identical row had the same id.
    pub duplicates: usize,
}

pub fn import_scored(path: &Path, model: &str, reward_model: &str) -> Result<ImportedScored> {
    let mut out = ImportedScored::default();
    // prompt_id -> (where it was first seen, its conversation and responses)
    let mut seen: HashMap<String, (String, Vec<Message>, Vec<String>)> = HashMap::new();
    for row in read_rows(path)? {
        let converted = row.parsed.and_then(|obj| {
            let (id, messages, _, _) = convert(&obj, &ImportOptions::default())?;
            // An empty response would become y_ws and be refused by training, far from here.
            let responses: Vec<String> =
                list(&obj, "all_generated_responses", "a non-empty string", |v| v.as_str().filter(|t| !t.trim().is_empty()).map(str::to_string))?;
            let scores: Vec<f64> = list(&obj, "all_rm_scores", "a finite number", |v| v.as_f64().filter(|x| x.is_finite()))?;
            if responses.is_empty() {
                return Err("'all_generated_responses' is empty".into());
            }
            if responses.len() != scores.len() {
                return Err(format!("{} responses but {} scores in 'all_rm_scores'", responses.len(), scores.len()));
            }
            Ok((id, messages, responses, scores))
        });
        let (id, messages, responses, scores) = match converted {
            Ok(c) => c,
            Err(reason) => {
                out.rejected.push(Rejected { location: row.location, reason, raw: row.raw });
                continue;
            }
        };
        if let Some((first, m, r)) = seen.get(&id) {
            if *m == messages && *r == responses {
                out.duplicates += 1;
            } else {
                let reason = format!("prompt_id '{id}' is already used by {first} for other content");
                out.rejected.push(Rejected { location: row.location, reason, raw: row.raw });
            }
            continue;
        }
        for (k, (response, reward)) in responses.iter().zip(&scores).enumerate() {
            out.samples.push(Sample {
                prompt_id: id.clone(),
                model: model.to_string(),
                sample_index: k as u32,
                // Not known for imported rows: how the generator rendered the
                // prompt, token counts, sampling settings, time.
                prompt_text: String::new(),
                response: response.clone(),
                prompt_tokens: 0,
                response_tokens: 0,
                finish_reason: FinishReason::Stop,
                skip_reason: None,
                temperature: 0.0,
                top_p: 1.0,
                top_k: 0,
                seed: 0,
                generation_seconds: 0.0,
            });
            out.scored.push(ScoredSample {
                prompt_id: id.clone(),
                model: model.to_string(),
                sample_index: k as u32,
                response: response.clone(),
                response_tokens: 0,
                finish_reason: FinishReason::Stop,
                reward: *reward,
                reward_model: reward_model.to_string(),
            });
        }
        seen.insert(id, (row.location, messages, responses));
    }
    Ok(out)
}

/// The list in `column`, every item converted by `item` (None: not `what`).
fn list<T>(obj: &Map<String, Value>, column: &str, what: &str, item: impl Fn(&Value) -> Option<T>) -> Result<Vec<T>, String> {
    let values = match obj.get(column) {
        None => return Err(format!("no '{column}' column")),
        Some(Value::Null) => return Err(format!("'{column}' is null; expected a list")),
        Some(Value::Array(values)) => values,
        Some(v) => return Err(format!("'{column}' must be a list, found {}", kind(v))),
    };
    values
        .iter()
        .enumerate()
        .map(|(i, v)| item(v).ok_or_else(|| format!("'{column}' item {i} (0-based) must be {what}, found {}", kind(v))))
        .collect()
}

fn read_rows(path: &Path) -> Result<Vec<RawRow>> {
    if is_parquet(path)? {
        parquet_rows(path)
    } else {
        jsonl_rows(path)
    }
}

fn is_parquet(path: &Path) -> Result<bool> {
    let mut magic = [0u8; 4];
    let mut f = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let n = std::io::Read::read(&mut f, &mut magic).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(n == 4 && &magic == b"PAR1")
}

fn jsonl_rows(path: &Path) -> Result<Vec<RawRow>> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        // A byte-order mark (as some Windows tools write) starts the file, not the JSON.
        let line = if i == 0 { line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(line) } else { line };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let location = format!("line {}", i + 1);
        let (raw, parsed) = match std::str::from_utf8(line) {
            Err(e) => (String::from_utf8_lossy(line).into_owned(), Err(format!("invalid UTF-8 at byte {} of the line", e.valid_up_to()))),
            Ok(text) => (
                text.to_string(),
                match serde_json::from_str::<Value>(text) {
                    Ok(Value::Object(obj)) => Ok(obj),
                    Ok(other) => Err(format!("expected a JSON object, found {}", kind(&other))),
                    Err(e) => Err(format!("not valid JSON: {e}")),
                },
            ),
        };
        rows.push(RawRow { location, raw, parsed });
    }
    Ok(rows)
}

fn parquet_rows(path: &Path) -> Result<Vec<RawRow>> {
    let file = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .with_context(|| format!("{} is not a readable Parquet file", path.display()))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.with_context(|| format!("cannot decode {}", path.display()))?;
        // Arrow's JSON writer turns every column type (lists, structs, ...) into JSON.
        let mut writer = ArrayWriter::new(Vec::new());
        writer.write(&batch).with_context(|| format!("cannot convert rows of {}", path.display()))?;
        writer.finish()?;
        let objects: Vec<Map<String, Value>> = serde_json::from_slice(&writer.into_inner())?;
        for obj in objects {
            let raw = Value::Object(obj.clone()).to_string();
            rows.push(RawRow { location: format!("row {}", rows.len()), raw, parsed: Ok(obj) });
        }
    }
    Ok(rows)
}

/// prompt_id, messages, reference, and the row's own split if it names one.
type Converted = (String, Vec<Message>, Option<String>, Option<Split>);

fn convert(obj: &Map<String, Value>, opts: &ImportOptions) -> Result<Converted, String> {
    let mut messages = if let Some(p) = obj.get("prompt") {
        let text = p.as_str().ok_or_else(|| format!("'prompt' must be a string, found {}", kind(p)))?;
        vec![Message::new(Role::User, text)]
    } else if let Some((column, turns)) = ["messages", "conversations"].iter().find_map(|c| obj.get(*c).map(|v| (*c, v))) {
        parse_turns(column, turns)?
    } else {
        return Err("no 'prompt', 'messages' or 'conversations' column".into());
    };

    let mut reference = match &opts.reference_column {
        Some(c) => match obj.get(c) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(v @ Value::Array(_)) => parse_turns(c, v)?.into_iter().rev().find(|m| m.role == Role::Assistant).map(|m| m.content),
            Some(v) => return Err(format!("reference column '{c}' must be a string or a conversation, found {}", kind(v))),
        },
        None => None,
    };
    if opts.strip_last_assistant && messages.last().is_some_and(|m| m.role == Role::Assistant) {
        let answer = messages.pop().unwrap().content;
        reference.get_or_insert(answer);
    }
    check_conversation(&messages)?;

    let id = match obj.get("prompt_id") {
        None | Some(Value::Null) => prompt_id(&messages),
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(v) => return Err(format!("'prompt_id' must be a non-empty string, found {}", kind(v))),
    };
    let split = match obj.get("split") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(match s.as_str() {
            "train" => Split::Train,
            "eval" | "test" => Split::Eval,
            "validation" => Split::Validation,
            _ => return Err(format!("'split' must be train, eval (or test) or validation, found '{s}'")),
        }),
        Some(v) => return Err(format!("'split' must be a string, found {}", kind(v))),
    };
    Ok((id, messages, reference, split))
}

fn parse_turns(column: &str, value: &Value) -> Result<Vec<Message>, String> {
    let turns = value.as_array().ok_or_else(|| format!("'{column}' must be a list of turns, found {}", kind(value)))?;
    turns
        .iter()
        .enumerate()
        .map(|(i, turn)| {
            let field = |names: [&str; 2]| names.iter().find_map(|n| turn.get(n));
            let (Some(role), Some(content)) = (field(["role", "from"]), field(["content", "value"])) else {
                return Err(format!("'{column}' turn {}: expected role/content or from/value", i + 1));
            };
            let role = match role.as_str() {
                Some("user" | "human") => Role::User,
                Some("assistant" | "gpt" | "model" | "bot") => Role::Assistant,
                Some("system") => Role::System,
                _ => return Err(format!("'{column}' turn {}: unknown role {role}", i + 1)),
            };
            let content = content.as_str().ok_or_else(|| format!("'{column}' turn {}: content must be a string, found {}", i + 1, kind(content)))?;
            Ok(Message::new(role, content))
        })
        .collect()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(s) if s.trim().is_empty() => "an empty string",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Write rejected rows as JSON lines, atomically.
pub fn write_rejected(path: &Path, rejected: &[Rejected]) -> Result<()> {
    let mut out = AtomicFile::create(path)?;
    for r in rejected {
        serde_json::to_writer(&mut *out.file(), r)?;
        out.file().write_all(b"\n")?;
    }
    out.commit()
}
