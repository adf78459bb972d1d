//! Sampling through an OpenAI-compatible chat server (vLLM, SGLang, TGI,
//! llama.cpp's server): one request per sample, a bounded number in flight.
//! Each request carries the sample's own seed, so servers that honour `seed`
//! give the same text again.
//!
//! Failures follow `wrpo_remote`'s rules: a refused prompt (400, 413,
//! 422) becomes a `skipped` row, as the local engine writes for a prompt too
//! long for its context; an HTTP 200 without a usable answer (no choices, an
//! error object, null content) is tried again.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    time::Instant,
};

use anyhow::{bail, Result};
use serde_json::{json, Value};
pub use wrpo_remote::RemoteOptions;
use wrpo_remote::{Client, Failure};

use crate::backend::{Backend, Finish, Job, Outcome, Settings, Sink};

/// So many refused prompts before any success mean the requests, not the
/// prompts, are wrong (an unsupported parameter also gets a 400).
const REFUSED_BEFORE_ANY_SUCCESS: usize = 8;

pub struct RemoteModel {
    client: Client,
    base_url: String,
    served_name: String,
}

impl RemoteModel {
    /// Check that the server answers, accepts the key and serves `served_name`.
    pub fn connect(base_url: &str, served_name: &str, opts: &RemoteOptions) -> Result<Self> {
        let client = Client::new(opts)?;
        client.check_serves(&format!("{base_url}/models"), served_name)?;
        Ok(RemoteModel { client, base_url: base_url.to_string(), served_name: served_name.to_string() })
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
        let answer = self.client.post(&url, &body, |answer| parse_answer(answer, &prompt_text));
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

/// The sample in an HTTP 200 answer (see `wrpo_remote::chat_content`).
fn parse_answer(answer: Value, prompt_text: &str) -> Result<Outcome, Failure> {
    let (response, cut) = wrpo_remote::chat_content(&answer)?;
    let count = |key: &str| answer["usage"][key].as_u64().unwrap_or(0) as u32;
    Ok(Outcome {
        prompt_text: prompt_text.to_string(),
        response,
        prompt_tokens: count("prompt_tokens"),
        response_tokens: count("completion_tokens"),
        finish: if cut { Finish::Length } else { Finish::Stop },
        seconds: 0.0,
    })
}

impl Backend for RemoteModel {
    fn describe(&self) -> String {
        format!(
            "'{}' served at {}, {} requests in flight{}",
            self.served_name,
            self.base_url,
            self.client.opts.concurrency,
            self.client.key_note(&self.base_url)
        )
    }

    /// `concurrency` requests at a time; the first that fails for good stops the run.
    fn generate(&self, jobs: &[Job], settings: &Settings, alias: &str, sink: &mut dyn Sink) -> Result<()> {
        let work: Vec<(&Job, u32)> = jobs.iter().flat_map(|j| j.sample_indices.iter().map(move |&s| (j, s))).collect();
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let (tx, rx) = mpsc::channel::<(usize, Result<Outcome, Failure>)>();
        std::thread::scope(|scope| -> Result<()> {
            for _ in 0..self.client.opts.concurrency.clamp(1, work.len().max(1)) {
                let tx = tx.clone();
                let (work, next, stop) = (&work, &next, &stop);
                scope.spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let Some(&(job, s)) = work.get(i) else { break };
                        let outcome = wrpo_remote::caught(|| self.sample(job, s, settings, alias)).unwrap_or_else(|why| Err(Failure::Fatal(why)));
                        if tx.send((i, outcome)).is_err() {
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
