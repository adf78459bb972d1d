//! Sampling through an OpenAI-compatible chat server (vLLM, SGLang, TGI,
//! llama.cpp's server): one request per sample, a bounded number in flight,
//! retries with exponential backoff on 429, 5xx, timeouts and dropped
//! connections. Each request carries the sample's own seed, so servers that
//! honour `seed` give the same text again.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use serde::Serialize;
use serde_json::{json, Value};
use ureq::Agent;
use wrpo_common::hash::sample_seed;

use crate::generate::{Finish, Job, Outcome, Settings, Sink};

#[derive(Clone, Debug, Serialize)]
pub struct RemoteOptions {
    /// Requests in flight at once, per model.
    pub concurrency: usize,
    /// Attempts after the first on 429, 5xx, timeouts and connection errors.
    pub retries: u32,
    /// Seconds one request may take.
    pub timeout_seconds: u64,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions { concurrency: 8, retries: 5, timeout_seconds: 600 }
    }
}

pub struct RemoteModel {
    agent: Agent,
    base_url: String,
    served_name: String,
    opts: RemoteOptions,
}

/// Why one request failed, and whether trying again may help.
struct Failure {
    retry: bool,
    message: String,
}

impl RemoteModel {
    /// Check that the server answers and serves `served_name`.
    pub fn connect(base_url: &str, served_name: &str, opts: &RemoteOptions) -> Result<Self> {
        let agent: Agent = Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(opts.timeout_seconds.max(1))))
            .http_status_as_error(false)
            .build()
            .into();
        let model = RemoteModel { agent, base_url: base_url.to_string(), served_name: served_name.to_string(), opts: opts.clone() };
        let url = format!("{base_url}/models");
        let listing = model.with_retries(&url, || model.call(&url, None))?;
        let served: Vec<&str> = listing["data"].as_array().into_iter().flatten().filter_map(|m| m["id"].as_str()).collect();
        if !served.is_empty() && !served.contains(&served_name) {
            bail!("{url} serves {}, not '{served_name}'", served.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", "));
        }
        Ok(model)
    }

    /// One request: GET when `body` is None, else POST it as JSON.
    fn call(&self, url: &str, body: Option<&Value>) -> Result<Value, Failure> {
        let sent = match body {
            None => self.agent.get(url).call(),
            Some(b) => self.agent.post(url).send_json(b),
        };
        let mut response = sent.map_err(|e| Failure {
            // Transport errors (refused, reset, timed out) may pass; bad URLs will not.
            retry: !matches!(e, ureq::Error::BadUri(_) | ureq::Error::InvalidProxyUrl),
            message: e.to_string(),
        })?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        if status != 200 {
            let shown: String = text.chars().take(500).collect();
            return Err(Failure { retry: status == 429 || status >= 500, message: format!("HTTP {status}: {shown}") });
        }
        serde_json::from_str(&text).map_err(|e| Failure { retry: false, message: format!("the answer is not JSON ({e}): {text:.200}") })
    }

    fn with_retries(&self, url: &str, mut attempt: impl FnMut() -> Result<Value, Failure>) -> Result<Value> {
        let mut tries = 0;
        loop {
            match attempt() {
                Ok(v) => return Ok(v),
                Err(f) if f.retry && tries < self.opts.retries => {
                    // 0.5 s, 1 s, 2 s, ... up to 30 s between attempts.
                    std::thread::sleep(Duration::from_millis((500u64 << tries.min(6)).min(30_000)));
                    tries += 1;
                }
                Err(f) => bail!("{url}: {} (after {} attempt(s))", f.message, tries + 1),
            }
        }
    }

    fn sample(&self, job: &Job, sample_index: u32, settings: &Settings, alias: &str) -> Result<Outcome> {
        let s = &settings.sampling;
        let mut body = json!({
            "model": self.served_name,
            "messages": job.prompt.messages.iter().map(|m| json!({"role": m.role.as_str(), "content": m.content})).collect::<Vec<_>>(),
            "max_tokens": settings.max_new_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "n": 1,
            // Many servers take a 32-bit seed.
            "seed": sample_seed(settings.seed, &job.prompt.prompt_id, alias, sample_index) & 0x7fff_ffff,
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
        let started = Instant::now();
        let answer = self.with_retries(&url, || self.call(&url, Some(&body)))?;
        let choice = &answer["choices"][0];
        let response = match &choice["message"]["content"] {
            Value::String(text) => text.clone(),
            Value::Null => String::new(),
            other => bail!("{url}: choices[0].message.content is {other}, expected a string"),
        };
        let finish = match choice["finish_reason"].as_str() {
            Some("length") => Finish::Length,
            _ => Finish::Stop,
        };
        let count = |key: &str| answer["usage"][key].as_u64().unwrap_or(0) as u32;
        Ok(Outcome {
            // The server applies its own template; keep what was sent.
            prompt_text: serde_json::to_string(&body["messages"]).expect("JSON"),
            response,
            prompt_tokens: count("prompt_tokens"),
            response_tokens: count("completion_tokens"),
            finish,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Make every sample `jobs` asks for, `concurrency` requests at a time.
    /// The first request that fails for good stops the run; samples already
    /// handed to `sink` stay.
    pub fn generate(&self, jobs: &[Job], settings: &Settings, alias: &str, sink: &mut dyn Sink) -> Result<()> {
        let work: Vec<(&Job, u32)> = jobs.iter().flat_map(|j| j.sample_indices.iter().map(move |&s| (j, s))).collect();
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let (tx, rx) = mpsc::channel::<(usize, Result<Outcome>)>();
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
            for (i, outcome) in rx {
                let (job, s) = work[i];
                let pushed = outcome.and_then(|o| sink.push(&job.prompt.prompt_id, s, o));
                if let Err(e) = pushed {
                    stop.store(true, Ordering::SeqCst);
                    failure.get_or_insert(e.context(format!("prompt {} sample {s}", job.prompt.prompt_id)));
                }
                if sink.interrupted() {
                    stop.store(true, Ordering::SeqCst);
                }
            }
            failure.map_or(Ok(()), Err)
        })
    }
}
