//! What made a file (`Provenance`, in every file's key-value metadata),
//! with credentials blanked, and how two runs' settings differ.

use std::path::Path;

use anyhow::{Context, Result};
use parquet::file::metadata::KeyValue;
use serde::{Deserialize, Serialize};

use super::content_sha256;
use super::keys;

/// What made a file: the producing binary, its command line and full
/// configuration, and the content hashes of its inputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub producer: String,
    pub command: Vec<String>,
    pub config: serde_json::Value,
    pub inputs: Vec<InputHash>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputHash {
    pub path: String,
    pub sha256: String,
}

impl Provenance {
    /// Provenance of this process: `producer` is e.g. `"wrpo-sample 0.1.0"`.
    pub fn new(producer: impl Into<String>, config: &impl Serialize) -> Result<Self> {
        Ok(Provenance {
            producer: producer.into(),
            // Lossy: a path that is not UTF-8 must not make the run panic.
            command: std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect(),
            config: serde_json::to_value(config).context("cannot serialise the configuration")?,
            inputs: Vec::new(),
        })
    }

    /// Record an input file or folder with its content hash.
    pub fn with_input(mut self, path: &Path) -> Result<Self> {
        let sha256 = content_sha256(path)?;
        self.inputs.push(InputHash { path: path.display().to_string(), sha256 });
        Ok(self)
    }

    pub(super) fn key_values(&self, schema: &str, version: u32) -> Vec<KeyValue> {
        vec![
            KeyValue::new(keys::SCHEMA.into(), schema.to_string()),
            KeyValue::new(keys::VERSION.into(), version.to_string()),
            KeyValue::new(keys::PRODUCER.into(), self.producer.clone()),
            KeyValue::new(keys::COMMAND.into(), to_json(&self.command.iter().map(|a| redact_credentials(a)).collect::<Vec<_>>())),
            KeyValue::new(keys::CONFIG.into(), to_json(&redact_json(&self.config))),
            KeyValue::new(keys::INPUTS.into(), to_json(&self.inputs)),
        ]
    }
}

/// `text` with the credentials of every URL in it (`scheme://user:password@host`)
/// replaced by `[credentials]`: a dataset's metadata keeps the command and the
/// settings, which name the servers, and a secret must reach no file.
pub fn redact_credentials(text: &str) -> String {
    map_authorities(text, |authority| match authority.rfind('@') {
        Some(at) => format!("[credentials]{}", &authority[at..]),
        None => authority.to_string(),
    })
}

/// `text` with the authority (`user:password@host:port`) of every URL in it
/// passed through `rewrite`.
fn map_authorities(text: &str, rewrite: impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail.find(|c: char| matches!(c, '/' | '?' | '#' | '"') || c.is_whitespace()).unwrap_or(tail.len());
        out.push_str(&rewrite(&tail[..end]));
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// `v` with `rewrite` applied to every string in it.
fn map_strings(v: &serde_json::Value, rewrite: &impl Fn(&str) -> String) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => Value::String(rewrite(s)),
        Value::Array(a) => Value::Array(a.iter().map(|v| map_strings(v, rewrite)).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), map_strings(v, rewrite))).collect()),
        other => other.clone(),
    }
}

/// `v` with [`redact_credentials`] applied to every string in it: what the
/// metadata stores of a configuration.
fn redact_json(v: &serde_json::Value) -> serde_json::Value {
    map_strings(v, &redact_credentials)
}

/// `v` as a resume compares it: credentials blanked, as the metadata stores
/// them, and a loopback host written one way, since `localhost`, `127.0.0.1`
/// and `[::1]` name the same server.
fn resume_form(v: &serde_json::Value) -> serde_json::Value {
    map_strings(v, &|s: &str| one_loopback_name(&redact_credentials(s)))
}

/// `text` with every URL's loopback host (`localhost`, `[::1]`) written `127.0.0.1`.
fn one_loopback_name(text: &str) -> String {
    map_authorities(text, |authority| {
        let host_at = authority.rfind('@').map_or(0, |at| at + 1);
        let host = &authority[host_at..];
        let name_end = if host.starts_with('[') { host.find(']').map_or(host.len(), |e| e + 1) } else { host.find(':').unwrap_or(host.len()) };
        match &host[..name_end] {
            "localhost" | "[::1]" => format!("{}127.0.0.1{}", &authority[..host_at], &host[name_end..]),
            _ => authority.to_string(),
        }
    })
}

/// Where the settings a dataset was made with (`then`, from its metadata)
/// differ from this run's (`now`), as a resume compares them (see
/// `resume_form`): None if nowhere, else each differing key with both values
/// ("shard: [1,2] there, [2,2] here").
pub fn settings_differ(then: &serde_json::Value, now: &serde_json::Value) -> Option<String> {
    fn walk(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let null = serde_json::Value::Null;
                    let sub = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                    walk(&sub, x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null), out);
                }
            }
            _ if a != b => {
                // A long value (the judge's instructions) is named, not printed whole.
                let short = |v: &serde_json::Value| {
                    let text = v.to_string();
                    if text.chars().count() > 120 {
                        format!("{}...", text.chars().take(117).collect::<String>())
                    } else {
                        text
                    }
                };
                out.push(format!("{}: {} there, {} here", if path.is_empty() { "settings" } else { path }, short(a), short(b)));
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", &resume_form(then), &resume_form(now), &mut out);
    (!out.is_empty()).then(|| out.join("; "))
}

fn to_json(v: &impl Serialize) -> String {
    serde_json::to_string(v).expect("provenance is plain JSON")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn settings_differ_names_each_key_and_takes_loopback_names_as_one_server() {
        let then = json!({"reward": {"url": "http://[credentials]@localhost:8000/v1"}, "shard": [0, 2], "dtype": "f32"});
        // The same server by another loopback name, and the same credentials (blanked in the metadata): no difference.
        let now = json!({"reward": {"url": "http://user:secret@127.0.0.1:8000/v1"}, "shard": [0, 2], "dtype": "f32"});
        assert_eq!(settings_differ(&then, &now), None);
        assert_eq!(settings_differ(&json!({"u": "http://[::1]:80/"}), &json!({"u": "http://localhost:80/"})), None);
        // Another host is another server; each differing key is named with both values.
        let other = json!({"reward": {"url": "http://localhost.example.com:8000/v1"}, "shard": [1, 2], "dtype": "f32"});
        let d = settings_differ(&then, &other).unwrap();
        assert!(d.contains("reward.url: \"http://[credentials]@127.0.0.1:8000/v1\" there, \"http://localhost.example.com:8000/v1\" here"), "{d}");
        assert!(d.contains("shard: [0,2] there, [1,2] here") && !d.contains("dtype"), "{d}");
        assert!(!d.contains("secret"));
        // A key only one side has.
        assert_eq!(settings_differ(&json!({}), &json!({"precision": "bf16"})).unwrap(), "precision: null there, \"bf16\" here");
    }
}
