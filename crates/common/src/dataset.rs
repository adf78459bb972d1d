//! The [`Dataset`] trait and the column types several datasets share.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, FieldRef, Fields};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// A record type stored as one Parquet dataset.
///
/// `fields` is the exact Arrow schema written and expected on read; rows are
/// converted with `serde_arrow`, so field names and order of the struct must
/// match `fields`. `check` validates what the type system cannot (allowed
/// values, invariants between columns) and is run on every row read.
pub trait Dataset: Serialize + DeserializeOwned + Sized {
    /// Schema name stored under `wrpo.schema`, e.g. `"samples"`.
    const NAME: &'static str;
    /// Schema version stored under `wrpo.schema_version`. Readers accept files
    /// of this version or older and reject newer ones.
    const VERSION: u32;
    fn fields() -> Vec<FieldRef>;
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
    /// The columns no two rows of a dataset may share, as named in errors
    /// (empty: rows need not be unique).
    const KEY: &'static str = "";
    /// This row's values of [`Dataset::KEY`].
    fn key(&self) -> Option<String> {
        None
    }
}

pub(crate) fn field(name: &str, data_type: DataType, nullable: bool) -> FieldRef {
    Arc::new(Field::new(name, data_type, nullable))
}

/// Non-nullable fields of one type, in order: a schema as runs of types is
/// `[required(&[..], A), required(&[..], B)].concat()`.
pub(crate) fn required(names: &[&str], data_type: DataType) -> Vec<FieldRef> {
    names.iter().map(|name| field(name, data_type.clone(), false)).collect()
}

pub(crate) fn utf8(name: &str) -> FieldRef {
    field(name, DataType::Utf8, false)
}

pub(crate) fn opt_utf8(name: &str) -> FieldRef {
    field(name, DataType::Utf8, true)
}

/// Who speaks a chat turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One chat turn, as chat templates see it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message { role, content: content.into() }
    }
}

/// `messages: list<struct<role: utf8, content: utf8>>`, the chat column of
/// prompts, SFT sets and pairs.
pub(crate) fn messages_field() -> FieldRef {
    conversation_field("messages")
}

/// A column `name: list<struct<role: utf8, content: utf8>>`.
pub(crate) fn conversation_field(name: &str) -> FieldRef {
    let turn = Fields::from(vec![utf8("role"), utf8("content")]);
    field(name, DataType::List(Arc::new(Field::new("item", DataType::Struct(turn), false))), false)
}

/// A conversation a model can answer: non-empty, system turns only first,
/// the last turn the user's.
pub fn check_conversation(messages: &[Message]) -> Result<(), String> {
    let Some(last) = messages.last() else {
        return Err("the conversation is empty".into());
    };
    if last.role != Role::User {
        return Err(format!("the last turn has role '{}'; a prompt must end with a user turn", last.role.as_str()));
    }
    if let Some(i) = messages.iter().skip(1).position(|m| m.role == Role::System) {
        return Err(format!("turn {} is a system turn; only the first turn may be", i + 2));
    }
    if let Some(i) = messages.iter().position(|m| m.content.trim().is_empty()) {
        return Err(format!("turn {} ({}) is empty", i + 1, messages[i].role.as_str()));
    }
    Ok(())
}
