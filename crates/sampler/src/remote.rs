//! Sampling through an OpenAI-compatible chat server (vLLM, SGLang, TGI,
//! llama.cpp's server): one request per sample, a bounded number in flight.
//! Each request carries the sample's own seed, so servers that honour `seed`
//! give the same text again.
//!
//! What a failed request becomes:
//! - tried again, after a growing pause with jitter (or the server's
//!   `Retry-After`): 408, 429, 5xx, timeouts, dropped connections, a body cut
//!   short, and an HTTP 200 without a usable answer (no choices, an error
//!   object, null content);
//! - a `skipped` row, as the local engine writes for a prompt too long for its
//!   context: 400, 413 and 422, which the same prompt will get again;
//! - the end of the run: any other 4xx (a wrong key or model name fails every
//!   request alike), and retries used up.

use std::{
    hash::{BuildHasher, RandomState},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};
use ureq::Agent;

use crate::backend::{Backend, Finish, Job, Outcome, Settings, Sink};

#[derive(Clone, Debug, Serialize)]
pub struct RemoteOptions {
    /// Requests in flight at once, per model.
    pub concurrency: usize,
    /// Attempts after the first for a failure that may pass.
    pub retries: u32,
    /// Seconds one request may take, answer included.
    pub timeout_seconds: u64,
    /// Seconds to wait for a connection to open.
    pub connect_timeout_seconds: u64,
    /// The environment variable holding the API key. `None`: OPENAI_API_KEY if
    /// set, else no key; a variable named by the user must be set.
    pub api_key_env: Option<String>,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions { concurrency: 8, retries: 5, timeout_seconds: 600, connect_timeout_seconds: 10, api_key_env: None }
    }
}

/// The variable read for the API key when `--api-key-env` is not given.
pub const DEFAULT_API_KEY_ENV: &str = "OPENAI_API_KEY";

/// So many refused prompts before any success mean the requests, not the
/// prompts, are wrong (an unsupported parameter also gets a 400).
const REFUSED_BEFORE_ANY_SUCCESS: usize = 8;

/// The longest pause between attempts, `Retry-After` included.
const MAX_PAUSE: Duration = Duration::from_secs(300);

pub struct RemoteModel {
    agent: Agent,
    base_url: String,
    served_name: String,
    api_key: Option<String>,
    opts: RemoteOptions,
}

/// Why one request failed, and what to do about it.
enum Failure {
    /// May pass if tried again; `after` is the server's `Retry-After`.
    Transient { message: String, after: Option<Duration> },
    /// This prompt will be refused again: a skipped row.
    Refused(String),
    /// Every request will fail alike: stop.
    Fatal(String),
}

impl Failure {
    fn transient(message: impl Into<String>) -> Self {
        Failure::Transient { message: message.into(), after: None }
    }

    fn message(self) -> String {
        match self {
            Failure::Transient { message, .. } | Failure::Refused(message) | Failure::Fatal(message) => message,
        }
    }
}

impl RemoteModel {
    /// Check that the server answers, accepts the key and serves `served_name`.
    pub fn connect(base_url: &str, served_name: &str, opts: &RemoteOptions) -> Result<Self> {
        let api_key = match &opts.api_key_env {
            Some(var) => Some(std::env::var(var).with_context(|| format!("--api-key-env {var}: that environment variable is not set"))?),
            None => std::env::var(DEFAULT_API_KEY_ENV).ok(),
        };
        let agent: Agent = Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(opts.timeout_seconds.max(1))))
            .timeout_connect(Some(Duration::from_secs(opts.connect_timeout_seconds.max(1))))
            .http_status_as_error(false)
            .build()
            .into();
        let model = RemoteModel { agent, base_url: base_url.to_string(), served_name: served_name.to_string(), api_key, opts: opts.clone() };
        let url = format!("{base_url}/models");
        let listing = match model.with_retries(|| model.call(&url, None)) {
            Ok(v) => v,
            Err(f) => bail!("{url}: {}", f.message()),
        };
        let served: Vec<&str> = listing["data"].as_array().into_iter().flatten().filter_map(|m| m["id"].as_str()).collect();
        if !served.is_empty() && !served.contains(&served_name) {
            bail!("{url} serves {}, not '{served_name}'", served.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", "));
        }
        Ok(model)
    }

    /// One request: GET when `body` is None, else POST it as JSON.
    fn call(&self, url: &str, body: Option<&Value>) -> Result<Value, Failure> {
        let auth = self.api_key.as_ref().map(|k| format!("Bearer {k}"));
        let sent = match (body, &auth) {
            (None, None) => self.agent.get(url).call(),
            (None, Some(a)) => self.agent.get(url).header("Authorization", a).call(),
            (Some(b), None) => self.agent.post(url).send_json(b),
            (Some(b), Some(a)) => self.agent.post(url).header("Authorization", a).send_json(b),
        };
        let mut response = sent.map_err(|e| {
            let message = e.to_string();
            // Refused, reset, timed out or cut connections may pass; a bad URL or TLS setting will not.
            match e {
                ureq::Error::Io(_)
                | ureq::Error::Timeout(_)
                | ureq::Error::ConnectionFailed
                | ureq::Error::HostNotFound
                | ureq::Error::Protocol(_)
                | ureq::Error::BodyStalled => Failure::transient(message),
                _ => Failure::Fatal(message),
            }
        })?;
        let status = response.status().as_u16();
        let after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(retry_after);
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| Failure::Transient { message: format!("HTTP {status}, reading the answer failed: {e}"), after })?;
        let shown: String = text.chars().take(500).collect();
        match status {
            200 => serde_json::from_str(&text).map_err(|e| Failure::transient(format!("the answer is not JSON ({e}): {shown}"))),
            408 | 429 | 500.. => Err(Failure::Transient { message: format!("HTTP {status}: {shown}"), after }),
            400 | 413 | 422 => Err(Failure::Refused(format!("HTTP {status}: {shown}"))),
            _ => Err(Failure::Fatal(format!("HTTP {status}: {shown}"))),
        }
    }

    /// `attempt` until it succeeds, fails for good, or the retries are used up.
    fn with_retries<T>(&self, mut attempt: impl FnMut() -> Result<T, Failure>) -> Result<T, Failure> {
        let mut tries = 0;
        loop {
            match attempt() {
                Err(Failure::Transient { after, .. }) if tries < self.opts.retries => {
                    std::thread::sleep(pause(tries, after));
                    tries += 1;
                }
                Err(Failure::Transient { message, .. }) => {
                    return Err(Failure::Transient { message: format!("{message} (after {} attempts)", tries + 1), after: None })
                }
                other => return other,
            }
        }
    }

    fn sample(&self, job: &Job, sample_index: u32, settings: &Settings, alias: &str) -> Result<Outcome, Failure> {
        let s = &settings.sampling;
        let mut body = json!({
            "model": self.served_name,
            "messages": job.prompt.messages.iter().map(|m| json!({"role": m.role.as_str(), "content": m.content})).collect::<Vec<_>>(),
            "max_tokens": settings.max_new_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "n": 1,
            // Many servers take a 32-bit seed.
            "seed": settings.sample_seed(&job.prompt.prompt_id, alias, sample_index) & 0x7fff_ffff,
        });
        if s.top_k > 0 {
            body["top_k"] = json!(s.top_k);
        }
        if s.min_p > 0.0 {
            body["min_p"] = json!(s.min_p);
        }
        if !settings.stop.is_empty() {
            body["stop"] = json!(settings.stop);
        }
        let url = format!("{}/chat/completions", self.base_url);
        // The server applies its own template; keep what was sent.
        let prompt_text = serde_json::to_string(&body["messages"]).expect("JSON");
        let started = Instant::now();
        let answer = self.with_retries(|| self.call(&url, Some(&body)).and_then(|answer| parse_answer(answer, &prompt_text)));
        match answer {
            Ok(mut outcome) => {
                outcome.seconds = started.elapsed().as_secs_f64();
                Ok(outcome)
            }
            Err(Failure::Refused(why)) => Ok(Outcome {
                prompt_text,
                response: String::new(),
                prompt_tokens: 0,
                response_tokens: 0,
                finish: Finish::Skipped(format!("the server refused the prompt: {why}")),
                seconds: started.elapsed().as_secs_f64(),
            }),
            Err(f) => Err(f),
        }
    }
}

/// The sample in an HTTP 200 answer. No choice, an error object, a null or
/// an empty content is a failure of the server to try again, never an empty
/// sample (training refuses empty responses).
fn parse_answer(answer: Value, prompt_text: &str) -> Result<Outcome, Failure> {
    if let Some(error) = answer.get("error").filter(|e| !e.is_null()) {
        return Err(Failure::transient(format!("HTTP 200 with an error: {error}")));
    }
    let Some(choice) = answer["choices"].get(0) else {
        return Err(Failure::transient(format!("HTTP 200 without choices: {:.300}", answer.to_string())));
    };
    let response = match &choice["message"]["content"] {
        Value::String(text) if text.trim().is_empty() => return Err(Failure::transient("HTTP 200 with an empty completion")),
        Value::String(text) => text.clone(),
        Value::Null => return Err(Failure::transient("HTTP 200 with choices[0].message.content null")),
        other => return Err(Failure::Fatal(format!("choices[0].message.content is {other}, expected a string"))),
    };
    let finish = match choice["finish_reason"].as_str() {
        Some("length") => Finish::Length,
        _ => Finish::Stop,
    };
    let count = |key: &str| answer["usage"][key].as_u64().unwrap_or(0) as u32;
    Ok(Outcome {
        prompt_text: prompt_text.to_string(),
        response,
        prompt_tokens: count("prompt_tokens"),
        response_tokens: count("completion_tokens"),
        finish,
        seconds: 0.0,
    })
}

/// `Retry-After` in seconds (the HTTP-date form is rare from inference servers; it falls back to backoff).
fn retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0).map(Duration::from_secs_f64)
}

/// The pause before attempt `tries + 2`: 0.5 s, 1 s, 2 s, ... up to 30 s,
/// each drawn from its upper half so that clients that failed together do not
/// retry together; at least what the server asked for, at most `MAX_PAUSE`.
fn pause(tries: u32, after: Option<Duration>) -> Duration {
    let base = (500u64 << tries.min(6)).min(30_000);
    let unit = (RandomState::new().hash_one(Instant::now()) % 1000) as f64 / 1000.0;
    let backoff = Duration::from_millis(base / 2 + (unit * (base / 2) as f64) as u64);
    backoff.max(after.unwrap_or_default()).min(MAX_PAUSE)
}

impl Backend for RemoteModel {
    fn describe(&self) -> String {
        format!(
            "'{}' served at {}, {} requests in flight{}",
            self.served_name,
            self.base_url,
            self.opts.concurrency,
            if self.api_key.is_some() { ", with an API key" } else { "" }
        )
    }

    /// `concurrency` requests at a time; the first that fails for good stops the run.
    fn generate(&self, jobs: &[Job], settings: &Settings, alias: &str, sink: &mut dyn Sink) -> Result<()> {
        let work: Vec<(&Job, u32)> = jobs.iter().flat_map(|j| j.sample_indices.iter().map(move |&s| (j, s))).collect();
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let (tx, rx) = mpsc::channel::<(usize, Result<Outcome, Failure>)>();
        std::thread::scope(|scope| -> Result<()> {
            for _ in 0..self.opts.concurrency.clamp(1, work.len().max(1)) {
                let tx = tx.clone();
                let (work, next, stop) = (&work, &next, &stop);
                scope.spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let Some(&(job, s)) = work.get(i) else { break };
                        if tx.send((i, self.sample(job, s, settings, alias))).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            let mut failure = None;
            // Refused prompts are held back until a request succeeds: when
            // the first few are all refused, the settings are at fault, and
            // their rows must not be committed as skipped.
            let mut held: Option<Vec<(usize, Outcome)>> = Some(Vec::new());
            for (i, outcome) in rx {
                let pushed = match outcome {
                    Ok(o) => match (&o.finish, &mut held) {
                        (Finish::Skipped(why), Some(refused)) if refused.len() + 1 >= REFUSED_BEFORE_ANY_SUCCESS => Err(anyhow::anyhow!(
                            "the first {} requests were all refused, the last with {why}; check the sampling settings against what the server accepts",
                            refused.len() + 1
                        )),
                        (Finish::Skipped(_), Some(refused)) => {
                            refused.push((i, o));
                            Ok(())
                        }
                        _ => held.take().into_iter().flatten().chain([(i, o)]).try_for_each(|(i, o)| push(sink, work[i], o)),
                    },
                    Err(f) => Err(anyhow::anyhow!("{}/chat/completions: {}", self.base_url, f.message())),
                };
                if let Err(e) = pushed {
                    stop.store(true, Ordering::SeqCst);
                    let (job, s) = work[i];
                    failure.get_or_insert(e.context(format!("prompt {} sample {s}", job.prompt.prompt_id)));
                }
                if sink.interrupted() {
                    stop.store(true, Ordering::SeqCst);
                }
            }
            // Every request refused, however few, on an output with no
            // sample of this model yet: the settings or the server are at
            // fault, not the prompts, and nothing is written. After earlier
            // samples, those prompts are the server's to refuse: skipped rows.
            if failure.is_none() {
                let refused = held.unwrap_or_default();
                match refused.last() {
                    Some((_, last)) if !sink.has_earlier_samples() => {
                        let Finish::Skipped(why) = &last.finish else { unreachable!("held rows are refusals") };
                        bail!(
                            "all {} requests were refused, the last with {why}; nothing was written: check the sampling settings against what the server accepts",
                            refused.len()
                        );
                    }
                    _ => refused.into_iter().try_for_each(|(i, o)| push(sink, work[i], o))?,
                }
            }
            failure.map_or(Ok(()), Err)
        })
    }
}

fn push(sink: &mut dyn Sink, (job, sample_index): (&Job, u32), outcome: Outcome) -> Result<()> {
    sink.push(&job.prompt.prompt_id, sample_index, outcome)
}
