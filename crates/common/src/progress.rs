//! Progress of a long job (generation, scoring, training): a bar (items,
//! tokens/s, ETA) on a terminal, a plain log line every ten seconds otherwise.

use std::{
    io::IsTerminal,
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    done: u64,
    tokens: u64,
    started: Instant,
    last_line: Instant,
    model: String,
    /// What the items are: "samples", "steps", ...
    unit: &'static str,
    /// Extra text shown after the rate (e.g. the loss).
    note: String,
}

const LOG_EVERY: Duration = Duration::from_secs(10);

impl Progress {
    pub fn new(total: u64, unit: &'static str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(&format!("{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit}, {{msg}}, ETA {{eta}}"))
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar
        });
        let now = Instant::now();
        Progress { bar, total, done: 0, tokens: 0, started: now, last_line: now, model: String::new(), unit, note: String::new() }
    }

    pub fn set_model(&mut self, alias: &str) {
        self.model = alias.to_string();
        if let Some(bar) = &self.bar {
            bar.set_prefix(alias.to_string());
        }
    }

    /// A message that must not be overdrawn by the bar.
    pub fn log(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Shown after the rate until replaced, e.g. "loss 0.693".
    pub fn set_note(&mut self, note: String) {
        self.note = note;
    }

    pub fn add(&mut self, items: u64, tokens: u64) {
        self.done += items;
        self.tokens += tokens;
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let rate = format!("{:.1} {}/s, {:.1} tokens/s{}", self.done as f64 / secs, self.unit, self.tokens as f64 / secs, self.note);
        match &self.bar {
            Some(bar) => {
                bar.set_message(rate);
                bar.set_position(self.done);
            }
            None if self.last_line.elapsed() >= LOG_EVERY || self.done == self.total => {
                self.last_line = Instant::now();
                let left = self.total.saturating_sub(self.done);
                let eta = secs / self.done.max(1) as f64 * left as f64;
                eprintln!("{}: {}/{} {}, {rate}, ETA {eta:.0} s", self.model, self.done, self.total, self.unit);
            }
            None => {}
        }
    }

    pub fn finish(&self) {
        let secs = self.started.elapsed().as_secs_f64();
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        eprintln!("{} {}, {} tokens in {secs:.1} s ({:.1} tokens/s)", self.done, self.unit, self.tokens, self.tokens as f64 / secs.max(1e-9));
    }
}
