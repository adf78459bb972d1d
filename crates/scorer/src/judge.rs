//! An LLM judge behind an OpenAI-compatible chat endpoint, asked in
//! MT-Bench's two forms: a 1-10 grade of one answer (the `judge` reward) and
//! a verdict between two answers (`wrpo-score report --judge`). What the judge
//! sees is `judge/prompts.json`, one versioned file; its verdicts are read
//! from fixed formats, and an unreadable verdict is asked again, then given
//! up, never guessed.

use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use wrpo_common::Message;
use wrpo_remote::{chat_content, Client, Failure, RemoteOptions};

/// The judge's instructions, compiled in.
pub const PROMPTS_JSON: &str = include_str!("../judge/prompts.json");

#[derive(Deserialize)]
pub struct Prompts {
    pub version: u32,
    single: Turn,
    single_reference: Turn,
    pairwise: Turn,
    pairwise_reference: Turn,
}

#[derive(Deserialize)]
struct Turn {
    system: String,
    user: String,
}

pub fn prompts() -> &'static Prompts {
    static PROMPTS: OnceLock<Prompts> = OnceLock::new();
    PROMPTS.get_or_init(|| serde_json::from_str(PROMPTS_JSON).expect("judge/prompts.json is checked by a test"))
}

/// SHA-256 of judge/prompts.json, as `sha256sum` prints it.
pub fn prompts_sha256() -> String {
    wrpo_common::hash::sha256_hex(PROMPTS_JSON.as_bytes())
}

/// What a report or a scored run records about its judge.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct JudgeSettings {
    pub url: String,
    pub model: String,
    /// The first attempt's temperature (0: the judge's most likely verdict).
    pub temperature: f64,
    pub max_tokens: u32,
    pub prompts_version: u32,
    pub prompts_sha256: String,
}

impl JudgeSettings {
    pub fn new(url: &str, model: &str) -> Self {
        JudgeSettings {
            url: url.to_string(),
            model: model.to_string(),
            temperature: 0.0,
            max_tokens: 1024,
            prompts_version: prompts().version,
            prompts_sha256: prompts_sha256(),
        }
    }
}

/// Which answer a pairwise verdict prefers, in the order shown to the judge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preference {
    A,
    B,
    Tie,
}

/// The last `[[...]]` of a judgement, trimmed.
fn last_bracketed(text: &str) -> Option<&str> {
    let end = text.rfind("]]")?;
    let start = text[..end].rfind("[[")?;
    Some(text[start + 2..end].trim())
}

/// The grade of "Rating: [[N]]", 1 to 10 (the last such mark counts).
pub fn parse_rating(text: &str) -> Result<f64, String> {
    let mark = last_bracketed(text).ok_or("no [[rating]] in the judgement")?;
    let rating: f64 = mark.parse().map_err(|_| format!("the rating [[{mark}]] is not a number"))?;
    if !(1.0..=10.0).contains(&rating) {
        return Err(format!("the rating [[{mark}]] is outside 1-10"));
    }
    Ok(rating)
}

/// The verdict of "[[A]]", "[[B]]" or "[[C]]" (a tie); the last mark counts.
pub fn parse_preference(text: &str) -> Result<Preference, String> {
    match last_bracketed(text).ok_or("no [[A]], [[B]] or [[C]] verdict in the judgement")? {
        "A" => Ok(Preference::A),
        "B" => Ok(Preference::B),
        "C" => Ok(Preference::Tie),
        other => Err(format!("the verdict [[{other}]] is none of A, B, C")),
    }
}

/// The user's side of the conversation as the judge reads it: the message
/// alone for a single turn, else each turn with its role.
pub fn question(messages: &[Message]) -> String {
    match messages {
        [only] => only.content.clone(),
        _ => messages.iter().map(|m| format!("[{}]\n{}", m.role.as_str(), m.content)).collect::<Vec<_>>().join("\n\n"),
    }
}

fn fill(template: &str, slots: &[(&str, &str)]) -> String {
    // One pass, so an answer that happens to contain "{answer_b}" is not filled in.
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open..];
        match slots.iter().find(|(name, _)| after[1..].starts_with(name) && after[1 + name.len()..].starts_with('}')) {
            Some((name, value)) => {
                out.push_str(value);
                rest = &after[name.len() + 2..];
            }
            None => {
                out.push('{');
                rest = &after[1..];
            }
        }
    }
    out + rest
}

pub struct Judge {
    client: Client,
    pub settings: JudgeSettings,
}

/// A verdict and the judgement it was read from.
pub struct Judged<T> {
    pub verdict: T,
    pub judgement: String,
}

impl Judge {
    /// `URL#MODEL`: an OpenAI-compatible base URL (…/v1) and the served judge.
    pub fn connect(url: &str, model: &str, opts: &RemoteOptions) -> Result<Self> {
        let client = Client::new(opts)?;
        client.check_serves(&format!("{url}/models"), model).context("the judge")?;
        Ok(Judge { client, settings: JudgeSettings::new(url, model) })
    }

    /// Grade one answer 1-10, with the reference shown when there is one.
    pub fn grade(&self, messages: &[Message], answer: &str, reference: Option<&str>) -> Result<Judged<f64>, Failure> {
        let q = question(messages);
        let (turn, slots) = match reference {
            Some(r) => (&prompts().single_reference, vec![("question", q.as_str()), ("answer", answer), ("reference", r)]),
            None => (&prompts().single, vec![("question", q.as_str()), ("answer", answer)]),
        };
        self.ask(turn, &slots, parse_rating)
    }

    /// Which of two answers is better, A shown first.
    pub fn compare(&self, messages: &[Message], answer_a: &str, answer_b: &str, reference: Option<&str>) -> Result<Judged<Preference>, Failure> {
        let q = question(messages);
        let mut slots = vec![("question", q.as_str()), ("answer_a", answer_a), ("answer_b", answer_b)];
        let turn = match reference {
            Some(r) => {
                slots.push(("reference", r));
                &prompts().pairwise_reference
            }
            None => &prompts().pairwise,
        };
        self.ask(turn, &slots, parse_preference)
    }

    /// Ask until the verdict reads: first at the settings' temperature, then
    /// (a deterministic judge would repeat itself) at 0.7 with a new seed
    /// each time; after the client's retries, the item is refused
    /// ([`Failure::Refused`] means exactly that: no readable verdict).
    fn ask<T>(&self, turn: &Turn, slots: &[(&str, &str)], parse: fn(&str) -> Result<T, String>) -> Result<Judged<T>, Failure> {
        let url = format!("{}/chat/completions", self.settings.url);
        let mut last = String::new();
        for attempt in 0..=self.client.opts.retries {
            let body = json!({
                "model": self.settings.model,
                "messages": [
                    {"role": "system", "content": turn.system},
                    {"role": "user", "content": fill(&turn.user, slots)},
                ],
                "max_tokens": self.settings.max_tokens,
                "temperature": if attempt == 0 { self.settings.temperature } else { 0.7 },
                "seed": attempt,
            });
            // A judge that refuses the request (400, 413, 422) refuses every one like it: the
            // settings or the model name are at fault, not this answer, so the run stops;
            // unless it says the request is too long for it, which is this answer's own.
            let judgement = self.client.post(&url, &body, |answer: Value| chat_content(&answer).map(|(text, _)| text)).map_err(|f| match f {
                Failure::Refused(why) if too_long(&why) => Failure::Refused(format!("the judge refused this request as too long: {why}")),
                Failure::Refused(why) => Failure::Fatal(format!("the judge refused the request: {why}")),
                other => other,
            })?;
            match parse(&judgement) {
                Ok(verdict) => return Ok(Judged { verdict, judgement }),
                Err(_) if judgement.is_empty() => last = format!("the judge spent its {} tokens before writing an answer", self.settings.max_tokens),
                Err(why) => last = format!("{why}; the judgement ended: {:?}", tail(&judgement, 200)),
            }
        }
        Err(Failure::Refused(format!("{UNREADABLE} in {} attempts ({last})", self.client.opts.retries + 1)))
    }

    /// The client its requests go through (for [`Client::in_flight`]).
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// How a grade the judge answered but no attempt made readable is refused.
pub const UNREADABLE: &str = "no readable verdict";

/// Whether a refusal says the request is over the judge's context (as vLLM,
/// SGLang, llama.cpp's server and OpenAI word it).
fn too_long(why: &str) -> bool {
    let why = why.to_lowercase();
    why.contains("context length")
        || why.contains("context_length")
        || why.contains("context window")
        || why.contains("too long")
        || why.contains("exceeds the available context")
        || (why.contains("maximum") && why.contains("tokens"))
}

fn tail(text: &str, chars: usize) -> String {
    let n = text.chars().count();
    text.chars().skip(n.saturating_sub(chars)).collect()
}

/// `openai:URL#MODEL` of `--judge` and `judge:openai:URL#MODEL` of `--reward`.
pub fn parse_spec(text: &str) -> Result<(String, String), String> {
    let rest = text.strip_prefix("openai:").ok_or_else(|| format!("'{text}': a judge is written openai:URL#MODEL"))?;
    wrpo_remote::parse_url_model(rest, "openai:http://HOST:PORT/v1#MODEL")
}

/// The error a refusal becomes where nothing may be skipped.
pub fn failed(what: &str, f: Failure) -> anyhow::Error {
    anyhow!("{what}: {}", f.message())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prompt_file_parses_and_names_every_slot() {
        let p = prompts();
        for (turn, slots) in [
            (&p.single, &["question", "answer"][..]),
            (&p.single_reference, &["question", "answer", "reference"]),
            (&p.pairwise, &["question", "answer_a", "answer_b"]),
            (&p.pairwise_reference, &["question", "answer_a", "answer_b", "reference"]),
        ] {
            for slot in slots {
                assert!(turn.user.contains(&format!("{{{slot}}}")), "{slot} missing from {}", turn.user);
            }
        }
    }

    #[test]
    fn ratings_are_read_from_the_last_mark_and_must_lie_in_range() {
        assert_eq!(parse_rating("Accurate and complete. Rating: [[8]]"), Ok(8.0));
        assert_eq!(parse_rating("I first thought [[3]], but on reflection Rating: [[ 7.5 ]]"), Ok(7.5));
        assert!(parse_rating("Rating: 8").unwrap_err().contains("no [[rating]]"));
        assert!(parse_rating("Rating: [[eight]]").unwrap_err().contains("not a number"));
        assert!(parse_rating("Rating: [[11]]").unwrap_err().contains("outside 1-10"));
        assert!(parse_rating("Rating: [[0]]").unwrap_err().contains("outside 1-10"));
    }

    #[test]
    fn pairwise_verdicts_are_a_b_or_a_tie() {
        assert_eq!(parse_preference("Assistant A is more accurate. [[A]]"), Ok(Preference::A));
        assert_eq!(parse_preference("[[A]] looked better at first; overall [[B]]"), Ok(Preference::B));
        assert_eq!(parse_preference("Both are equally good. [[C]]"), Ok(Preference::Tie));
        assert!(parse_preference("A is better").unwrap_err().contains("no [[A]]"));
        assert!(parse_preference("[[D]]").unwrap_err().contains("none of A, B, C"));
    }

    #[test]
    fn slots_are_filled_once_and_answers_are_not_read_as_slots() {
        let filled =
            fill("Q: {question}\nA: {answer_a}\nB: {answer_b} {other}", &[("question", "2+2?"), ("answer_a", "{answer_b}"), ("answer_b", "4")]);
        assert_eq!(filled, "Q: 2+2?\nA: {answer_b}\nB: 4 {other}");
    }
}
