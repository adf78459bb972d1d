//! The HTTP client both `wrpo-sample` (chat completions) and `wrpo-score`
//! (classification, embeddings, judges) use to reach the servers users
//! already run: vLLM, SGLang, llama.cpp's server, TEI.
//!
//! What a failed request becomes:
//! - tried again, after a growing pause with jitter (or the server's
//!   `Retry-After`): 408, 429, 5xx, timeouts, dropped connections, a body cut
//!   short, and an HTTP 200 without a usable answer (the caller's parser
//!   says so with [`Failure::transient`]);
//! - [`Failure::Refused`]: 400, 413 and 422, which the same input will get
//!   again; callers write a skipped row for it;
//! - [`Failure::Fatal`]: any other 4xx (a wrong key or model name fails every
//!   request alike), and retries used up.

#[cfg(feature = "stub")]
pub mod stub;

use std::{
    hash::{BuildHasher, RandomState},
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use serde::Serialize;
use serde_json::Value;
use ureq::Agent;

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
    /// set (sent only over https or to this machine, see [`Client::call`]),
    /// else no key; a variable named by the user must be set.
    pub api_key_env: Option<String>,
    /// A PEM file of the certificate authorities https servers are checked
    /// against, in place of the built-in Mozilla roots (a private server's CA).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<std::path::PathBuf>,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions { concurrency: 8, retries: 5, timeout_seconds: 600, connect_timeout_seconds: 10, api_key_env: None, ca_cert: None }
    }
}

/// The command-line flags of `RemoteOptions`, for binaries to flatten in.
/// Options, so that a binary can tell a flag given from its default and
/// warn when it applies to nothing (`given`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RemoteArgs {
    /// Requests in flight per served model [default: 8].
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Retries of a request on 408, 429, 5xx, timeouts, dropped connections
    /// and answers without a result (honouring Retry-After) [default: 5].
    #[arg(long)]
    pub retries: Option<u32>,
    /// Seconds a request may take, answer included [default: 600].
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Seconds to wait for a connection to a server to open [default: 10].
    #[arg(long)]
    pub connect_timeout: Option<u64>,
    /// Environment variable holding the server's API key (sent as a Bearer
    /// token) [default: OPENAI_API_KEY, if set, and then only over https or
    /// to this machine].
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// PEM file of the certificate authorities to trust for https servers, in
    /// place of the built-in Mozilla roots (a private server's own CA).
    #[arg(long)]
    pub ca_cert: Option<std::path::PathBuf>,
}

impl RemoteArgs {
    /// The flags given on the command line.
    pub fn given(&self) -> Vec<&'static str> {
        [
            ("--concurrency", self.concurrency.is_some()),
            ("--retries", self.retries.is_some()),
            ("--timeout", self.timeout.is_some()),
            ("--connect-timeout", self.connect_timeout.is_some()),
            ("--api-key-env", self.api_key_env.is_some()),
            ("--ca-cert", self.ca_cert.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect()
    }

    /// Warn (on stderr) that the flags given apply to nothing here: a setting
    /// the user typed is never silently ignored. `what` names what is not served.
    pub fn warn_if_unused(&self, served: bool, what: &str) {
        let given = self.given();
        if !served && !given.is_empty() {
            eprintln!("warning: {} applies to served models, rewards and judges only; {what}, so it changes nothing here", given.join(", "));
        }
    }
}

impl From<RemoteArgs> for RemoteOptions {
    fn from(a: RemoteArgs) -> Self {
        let d = RemoteOptions::default();
        RemoteOptions {
            concurrency: a.concurrency.unwrap_or(d.concurrency),
            retries: a.retries.unwrap_or(d.retries),
            timeout_seconds: a.timeout.unwrap_or(d.timeout_seconds),
            connect_timeout_seconds: a.connect_timeout.unwrap_or(d.connect_timeout_seconds),
            api_key_env: a.api_key_env,
            ca_cert: a.ca_cert,
        }
    }
}

/// The variable read for the API key when `--api-key-env` is not given.
pub const DEFAULT_API_KEY_ENV: &str = "OPENAI_API_KEY";

/// The longest pause between attempts, `Retry-After` included.
const MAX_PAUSE: Duration = Duration::from_secs(300);

/// Why one request failed, and what to do about it.
#[derive(Debug)]
pub enum Failure {
    /// May pass if tried again; `after` is the server's `Retry-After`.
    Transient { message: String, after: Option<Duration> },
    /// This input will be refused again: a skipped row.
    Refused(String),
    /// Every request will fail alike: stop.
    Fatal(String),
}

impl Failure {
    pub fn transient(message: impl Into<String>) -> Self {
        Failure::Transient { message: message.into(), after: None }
    }

    pub fn message(self) -> String {
        match self {
            Failure::Transient { message, .. } | Failure::Refused(message) | Failure::Fatal(message) => message,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Transient { message, .. } | Failure::Refused(message) | Failure::Fatal(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Failure {}

/// `URL#MODEL` as the command lines write a served model: an http(s) URL
/// without a trailing slash, and the name the server knows the model by.
pub fn parse_url_model(text: &str, form: &str) -> Result<(String, String), String> {
    let Some((url, model)) = text.rsplit_once('#').filter(|(_, m)| !m.is_empty()) else {
        return Err(format!("'{text}': expected {form} (the '#MODEL' is missing)"));
    };
    if !url.starts_with("http://") && !url.starts_with("https://") {
        return Err(format!("'{text}': '{url}' is not an http:// or https:// URL"));
    }
    Ok((url.trim_end_matches('/').to_string(), model.to_string()))
}

/// The text of a chat completion's first choice, and whether the token
/// limit cut it (`finish_reason` "length"). No choice, an error object, a
/// null or an empty content is a failure of the server to try again, never
/// an empty answer, except when the limit cut it: a reasoning model that
/// spends every token thinking (vLLM and SGLang put that in
/// `reasoning_content`) answered nothing, and asking again would only repeat it.
pub fn chat_content(answer: &Value) -> Result<(String, bool), Failure> {
    if let Some(error) = answer.get("error").filter(|e| !e.is_null()) {
        return Err(Failure::transient(format!("HTTP 200 with an error: {error}")));
    }
    let Some(choice) = answer["choices"].get(0) else {
        return Err(Failure::transient(format!("HTTP 200 without choices: {:.300}", answer.to_string())));
    };
    let cut = choice["finish_reason"].as_str() == Some("length");
    let text = match &choice["message"]["content"] {
        Value::Null if cut => String::new(),
        Value::String(text) if cut && text.trim().is_empty() => String::new(),
        Value::String(text) if text.trim().is_empty() => return Err(Failure::transient("HTTP 200 with an empty completion")),
        Value::String(text) => text.clone(),
        Value::Null => return Err(Failure::transient("HTTP 200 with choices[0].message.content null")),
        other => return Err(Failure::Fatal(format!("choices[0].message.content is {other}, expected a string"))),
    };
    Ok((text, cut))
}

/// One agent and API key for every request to one server.
pub struct Client {
    agent: Agent,
    api_key: Option<String>,
    /// The key was named with `--api-key-env`, so it goes wherever the user
    /// pointed; the default variable's key (often a paid account's) does not
    /// travel in clear text to another machine.
    key_named: bool,
    pub opts: RemoteOptions,
}

/// Whether `url` is https, or http to this machine (loopback).
fn private_route(url: &str) -> bool {
    let Ok(uri) = url.parse::<ureq::http::Uri>() else { return false };
    match (uri.scheme_str(), uri.host()) {
        (Some("https"), _) => true,
        (Some("http"), Some(host)) => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        _ => false,
    }
}

/// The API key in `var`: none if unset or empty (an empty key would be sent
/// as a bare "Bearer "); refused, without showing it, if it holds whitespace
/// or control characters (a pasted newline), which no header may carry.
fn api_key(var: &str) -> Result<Option<String>> {
    let Some(key) = std::env::var_os(var) else { return Ok(None) };
    let Some(key) = key.to_str() else { bail!("{var}: the API key is not valid UTF-8 (not shown)") };
    if key.is_empty() {
        return Ok(None);
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("{var}: the API key holds whitespace or a control character, such as a pasted newline (the key is not shown); set it without them");
    }
    Ok(Some(key.to_string()))
}

/// The certificates of the PEM file `path` (--ca-cert).
fn ca_certificates(path: &std::path::Path) -> Result<Vec<ureq::tls::Certificate<'static>>> {
    let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("--ca-cert {}: {e}", path.display()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => bail!("--ca-cert {}: not a readable PEM file ({e})", path.display()),
        }
    }
    if certs.is_empty() {
        bail!("--ca-cert {}: no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)", path.display());
    }
    Ok(certs)
}

impl Client {
    pub fn new(opts: &RemoteOptions) -> Result<Self> {
        let api_key = match &opts.api_key_env {
            Some(var) => Some(api_key(var)?.ok_or_else(|| anyhow::anyhow!("--api-key-env {var}: that environment variable is not set, or empty"))?),
            None => api_key(DEFAULT_API_KEY_ENV)?,
        };
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(path) = &opts.ca_cert {
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&ca_certificates(path)?));
        }
        let agent: Agent = Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(opts.timeout_seconds.max(1))))
            .timeout_connect(Some(Duration::from_secs(opts.connect_timeout_seconds.max(1))))
            .http_status_as_error(false)
            .tls_config(tls.build())
            .build()
            .into();
        Ok(Client { agent, api_key, key_named: opts.api_key_env.is_some(), opts: opts.clone() })
    }

    /// The key sent to `url`, if any.
    fn key_for(&self, url: &str) -> Option<&String> {
        self.api_key.as_ref().filter(|_| self.key_named || private_route(url))
    }

    /// What requests to `url` do with the API key, for a run's description.
    pub fn key_note(&self, url: &str) -> String {
        match (&self.api_key, self.key_for(url)) {
            (_, Some(_)) => ", with an API key".into(),
            (Some(_), None) => {
                format!(", without {DEFAULT_API_KEY_ENV} (plain http to another machine; --api-key-env {DEFAULT_API_KEY_ENV} sends it)")
            }
            (None, None) => String::new(),
        }
    }

    /// Check that the server at `models_url` (an OpenAI `/models` listing)
    /// answers, accepts the key and serves `served_name`.
    pub fn check_serves(&self, models_url: &str, served_name: &str) -> Result<()> {
        let listing = match self.with_retries(|| self.call(models_url, None)) {
            Ok(v) => v,
            Err(f) => bail!("{models_url}: {}", f.message()),
        };
        let served: Vec<&str> = listing["data"].as_array().into_iter().flatten().filter_map(|m| m["id"].as_str()).collect();
        if !served.is_empty() && !served.contains(&served_name) {
            bail!("{models_url} serves {}, not '{served_name}'", served.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", "));
        }
        Ok(())
    }

    /// One request: GET when `body` is None, else POST it as JSON. The API
    /// key goes along as a Bearer token if it was named with `--api-key-env`,
    /// or, for the default variable's key, if the URL is https or loopback.
    pub fn call(&self, url: &str, body: Option<&Value>) -> Result<Value, Failure> {
        let auth = self.key_for(url).map(|k| format!("Bearer {k}"));
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
                // rustls reports a failed handshake (an unknown certificate authority, a name the
                // certificate does not hold) as invalid data: every request would fail alike.
                ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
                    Failure::Fatal(format!("TLS: {message} (a server whose certificate a private authority signed needs --ca-cert FILE)"))
                }
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
        // Some servers and proxies echo the key back in an error: it must reach
        // no message, log or file (summary.json keeps the refusals' words).
        let text = match auth.as_deref().and_then(|a| a.strip_prefix("Bearer ")) {
            Some(key) if !key.is_empty() => text.replace(key, "[API key]"),
            _ => text,
        };
        let shown: String = text.chars().take(500).collect();
        match status {
            200 => serde_json::from_str(&text).map_err(|e| Failure::transient(format!("the answer is not JSON ({e}): {shown}"))),
            408 | 429 | 500.. => Err(Failure::Transient { message: format!("HTTP {status}: {shown}"), after }),
            400 | 413 | 422 => Err(Failure::Refused(format!("HTTP {status}: {shown}"))),
            // The default variable's key was held back (plain http to another machine): say so where it matters.
            401 | 403 if self.api_key.is_some() && auth.is_none() => Err(Failure::Fatal(format!(
                "HTTP {status}: {shown} ({DEFAULT_API_KEY_ENV} was not sent: plain http to another machine; --api-key-env {DEFAULT_API_KEY_ENV} sends it)"
            ))),
            _ => Err(Failure::Fatal(format!("HTTP {status}: {shown}"))),
        }
    }

    /// POST `body` to `url` and read the answer with `parse`, trying again
    /// on transient failures (the parser's included).
    pub fn post<T>(&self, url: &str, body: &Value, parse: impl Fn(Value) -> Result<T, Failure>) -> Result<T, Failure> {
        self.with_retries(|| self.call(url, Some(body)).and_then(&parse))
    }

    /// `attempt` until it succeeds, fails for good, or the retries are used up.
    pub fn with_retries<T>(&self, mut attempt: impl FnMut() -> Result<T, Failure>) -> Result<T, Failure> {
        let mut tries = 0;
        loop {
            match attempt() {
                Err(Failure::Transient { after, message }) if tries < self.opts.retries => {
                    let wait = pause(tries, after);
                    // A wait the server asked for can be minutes: say why nothing moves.
                    if after.is_some_and(|a| a >= Duration::from_secs(5)) {
                        eprintln!("{message}: the server asked to wait (Retry-After); trying again in {:.0} s", wait.as_secs_f64());
                    }
                    std::thread::sleep(wait);
                    tries += 1;
                }
                Err(Failure::Transient { message, .. }) => {
                    return Err(Failure::Transient { message: format!("{message} (after {} attempts)", tries + 1), after: None })
                }
                other => return other,
            }
        }
    }

    /// `work(item)` for every item, `opts.concurrency` at a time, results in
    /// the items' order. Once a result `stops` the run (a dead server, an
    /// exhausted quota), no item not yet started is started: those are None,
    /// and always the last ones, so a dead server is not asked once more per
    /// item left. A `work` that panics stops the run the same way, its item's
    /// result made by `panicked` from the panic's message: the results that
    /// arrived (paid grades and verdicts) come back to be committed, where a
    /// panic let through would lose every one of them.
    pub fn in_flight<T: Sync, R: Send>(
        &self,
        items: &[T],
        work: impl Fn(&T) -> R + Sync,
        stops: impl Fn(&R) -> bool + Sync,
        panicked: impl Fn(String) -> R + Sync,
    ) -> Vec<Option<R>> {
        let (next, stopped) = (AtomicUsize::new(0), AtomicBool::new(false));
        let done: Vec<(usize, R)> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..self.opts.concurrency.clamp(1, items.len().max(1)))
                .map(|_| {
                    scope.spawn(|| {
                        let mut done = Vec::new();
                        while !stopped.load(Ordering::SeqCst) {
                            let i = next.fetch_add(1, Ordering::SeqCst);
                            let Some(item) = items.get(i) else { break };
                            let r = caught(|| work(item)).unwrap_or_else(|why| {
                                stopped.store(true, Ordering::SeqCst);
                                panicked(why)
                            });
                            if stops(&r) {
                                stopped.store(true, Ordering::SeqCst);
                            }
                            done.push((i, r));
                        }
                        done
                    })
                })
                .collect();
            // A worker cannot panic outside `work`, which is caught above.
            workers.into_iter().flat_map(|w| w.join().expect("a request thread panicked outside its request")).collect()
        });
        let mut results: Vec<Option<R>> = items.iter().map(|_| None).collect();
        for (i, r) in done {
            results[i] = Some(r);
        }
        results
    }
}

/// `f()`, or the message of its panic, for a request thread to report as a
/// fatal failure instead of unwinding through the results already received.
pub fn caught<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        let why = payload.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| payload.downcast_ref::<String>().cloned());
        format!("a request thread panicked ({}); the results that arrived before are kept", why.as_deref().unwrap_or("no message"))
    })
}

/// `Retry-After` in seconds (the HTTP-date form is rare from inference servers; it falls back to backoff),
/// at most `MAX_PAUSE`: a larger value (1e20) would overflow a Duration and panic the request thread.
fn retry_after(value: &str) -> Option<Duration> {
    let seconds = value.trim().parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0)?;
    Some(Duration::from_secs_f64(seconds.min(MAX_PAUSE.as_secs_f64())))
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_default_key_travels_only_over_https_or_to_this_machine() {
        for url in
            ["https://api.openai.com/v1", "http://localhost:8000/v1", "http://127.0.0.1:8000/v1", "http://[::1]:8000/v1", "http://user@localhost/v1"]
        {
            assert!(private_route(url), "{url}");
        }
        for url in ["http://10.0.0.5:8000/v1", "http://gpu-box:8000/v1", "http://localhost.example.com/v1", "http://127.0.0.1.example.com/v1"] {
            assert!(!private_route(url), "{url}");
        }
        let opts = RemoteOptions::default();
        let mut client = Client::new(&opts).unwrap();
        client.api_key = Some("secret".into());
        client.key_named = false;
        assert!(client.key_for("http://gpu-box:8000/v1").is_none());
        assert!(client.key_for("https://gpu-box/v1").is_some());
        assert!(client.key_note("http://gpu-box:8000/v1").contains("without OPENAI_API_KEY"));
        // Named with --api-key-env: sent wherever the user pointed.
        client.key_named = true;
        assert!(client.key_for("http://gpu-box:8000/v1").is_some());
        assert_eq!(client.key_note("http://gpu-box:8000/v1"), ", with an API key");
    }

    #[test]
    fn only_a_cut_off_completion_may_be_empty() {
        let answer = |content: Value, finish: &str| json!({"choices": [{"message": {"content": content}, "finish_reason": finish}]});
        for spent in [answer(Value::Null, "length"), answer(json!(""), "length"), answer(json!(" \n"), "length")] {
            assert_eq!(chat_content(&spent).unwrap(), (String::new(), true), "{spent}");
        }
        for fault in [answer(Value::Null, "stop"), answer(json!(""), "stop"), json!({"choices": []}), json!({"error": {"message": "busy"}})] {
            assert!(matches!(chat_content(&fault), Err(Failure::Transient { .. })), "{fault}");
        }
        assert_eq!(chat_content(&answer(json!("4"), "stop")).unwrap(), ("4".to_string(), false));
        assert_eq!(chat_content(&answer(json!("The answer"), "length")).unwrap(), ("The answer".to_string(), true));
    }

    #[test]
    fn api_keys_are_read_without_blanks_and_never_shown() {
        // Variables of this test only: tests run in parallel threads.
        std::env::set_var("WRPO_TEST_KEY_OK", "sk-abc123");
        std::env::set_var("WRPO_TEST_KEY_EMPTY", "");
        std::env::set_var("WRPO_TEST_KEY_NEWLINE", "sk-secret\n");
        assert_eq!(api_key("WRPO_TEST_KEY_OK").unwrap().as_deref(), Some("sk-abc123"));
        assert_eq!(api_key("WRPO_TEST_KEY_EMPTY").unwrap(), None);
        assert_eq!(api_key("WRPO_TEST_KEY_UNSET").unwrap(), None);
        let err = api_key("WRPO_TEST_KEY_NEWLINE").unwrap_err().to_string();
        assert!(err.contains("WRPO_TEST_KEY_NEWLINE") && err.contains("control character") && !err.contains("secret"), "{err}");
        let named = RemoteOptions { api_key_env: Some("WRPO_TEST_KEY_EMPTY".into()), ..RemoteOptions::default() };
        let err = Client::new(&named).err().unwrap().to_string();
        assert!(err.contains("--api-key-env WRPO_TEST_KEY_EMPTY") && err.contains("empty"), "{err}");
    }

    #[test]
    fn retry_after_is_seconds_capped_at_the_longest_pause() {
        assert_eq!(retry_after(" 2.5 "), Some(Duration::from_millis(2500)));
        assert_eq!(retry_after("1e20"), Some(MAX_PAUSE));
        assert_eq!(retry_after(&f64::MAX.to_string()), Some(MAX_PAUSE));
        assert_eq!(retry_after("-1"), None);
        assert_eq!(retry_after("inf"), None);
        assert_eq!(retry_after("Wed, 21 Oct 2026 07:28:00 GMT"), None);
        assert_eq!(pause(0, retry_after("1e20")), MAX_PAUSE);
    }

    #[test]
    fn a_result_that_stops_the_run_starts_no_further_item() {
        let opts = RemoteOptions { concurrency: 3, ..RemoteOptions::default() };
        let client = Client::new(&opts).unwrap();
        let items: Vec<usize> = (0..40).collect();
        let started = AtomicUsize::new(0);
        // Item 4 answers at once, the others take a while: the stop comes
        // while the other threads are inside their items.
        let work = |&i: &usize| {
            started.fetch_add(1, Ordering::SeqCst);
            if i != 4 {
                std::thread::sleep(Duration::from_millis(5));
            }
            i
        };
        let results = client.in_flight(&items, work, |&i| i == 4, |_| usize::MAX);
        // Item 4 and those started beside it finish (a loaded machine may let a thread start one more).
        assert_eq!(results[4], Some(4));
        let finished = results.iter().take_while(|r| r.is_some()).count();
        assert!((5..=12).contains(&finished), "{results:?}");
        assert!(results[finished..].iter().all(Option::is_none), "{results:?}");
        assert_eq!(started.load(Ordering::SeqCst), finished);
        // Without a stop, every item, in order.
        let all = client.in_flight(&items, work, |_| false, |_| usize::MAX);
        assert_eq!(all, items.iter().map(|&i| Some(i)).collect::<Vec<_>>());
        // A panic in one request stops the run like a fatal result, and the results that arrived are returned.
        let answered = |&i: &usize| -> Result<usize, String> {
            if i == 4 {
                panic!("Retry-After overflowed");
            }
            std::thread::sleep(Duration::from_millis(5));
            Ok(i)
        };
        let results = client.in_flight(&items, answered, Result::is_err, Err);
        let why = results[4].clone().unwrap().unwrap_err();
        assert!(why.contains("panicked (Retry-After overflowed)"), "{why}");
        assert!(results[..4].iter().all(|r| matches!(r, Some(Ok(_)))), "{results:?}");
        assert!(results.last().unwrap().is_none(), "no new item after the panic");
    }
}
