//! What every sampling engine shares: the settings that fix a sample's text,
//! the work it is given, what it hands back, and the `Backend` trait that the
//! local engine (`local.rs`) and OpenAI-compatible servers (`served.rs`) implement.

use anyhow::Result;
use serde::Serialize;
use wrpo_common::prompts::Prompt;
use wrpo_llm::SamplingParams;

/// Everything that fixes a sample's text. A resumed run must use the same.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Settings {
    /// Samples per prompt.
    pub n: u32,
    pub sampling: SamplingParams,
    pub max_new_tokens: usize,
    pub seed: u64,
    /// Generation also stops at these strings (cut from the response).
    pub stop: Vec<String>,
    /// How an HF folder's weights are quantized at load (GGUF files keep theirs).
    pub quantize: Quantize,
    /// Common random numbers: sample k of a prompt uses the same seed
    /// whatever the model, so that models compared on held-out prompts differ
    /// by less sampling noise.
    pub common_seeds: bool,
}

impl Settings {
    /// The seed of sample `sample_index` of `prompt_id` by model `alias`.
    pub fn sample_seed(&self, prompt_id: &str, alias: &str, sample_index: u32) -> u64 {
        wrpo_common::hash::sample_seed(self.seed, prompt_id, if self.common_seeds { "" } else { alias }, sample_index)
    }
}

/// Quantization of an HF checkpoint's projections and LM head at load, for sampling.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, clap::ValueEnum)]
pub enum Quantize {
    /// 8-bit blocks of 32 (llama.cpp's Q8_0): near-exact, the fast kernel.
    #[value(name = "q8_0")]
    #[serde(rename = "q8_0")]
    Q8_0,
    /// 4-bit blocks of 32 with an offset (Q4_1): faster still, less exact.
    #[value(name = "q4_1")]
    #[serde(rename = "q4_1")]
    Q4_1,
    /// f32 as stored: exact, several times slower.
    #[value(name = "none")]
    #[serde(rename = "none")]
    None,
}

impl Quantize {
    pub fn ggml(self) -> Option<candle_core::quantized::GgmlDType> {
        match self {
            Quantize::Q8_0 => Some(candle_core::quantized::GgmlDType::Q8_0),
            Quantize::Q4_1 => Some(candle_core::quantized::GgmlDType::Q4_1),
            Quantize::None => None,
        }
    }
}

/// How one sample ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Finish {
    Stop,
    Length,
    Skipped(String),
}

/// What an engine produced for one (prompt, sample_index).
#[derive(Clone, Debug)]
pub struct Outcome {
    pub prompt_text: String,
    pub response: String,
    pub prompt_tokens: u32,
    pub response_tokens: u32,
    pub finish: Finish,
    pub seconds: f64,
}

/// The samples still to make for one prompt.
pub struct Job<'a> {
    pub prompt: &'a Prompt,
    pub sample_indices: Vec<u32>,
}

/// Where engines hand finished samples.
pub trait Sink {
    fn push(&mut self, prompt_id: &str, sample_index: u32, outcome: Outcome) -> Result<()>;
    /// Ctrl-C was pressed: stop taking new work.
    fn interrupted(&self) -> bool;
    /// The output already holds samples of this model from earlier runs:
    /// refusals of the remaining prompts then say nothing about the settings.
    fn has_earlier_samples(&self) -> bool;
}

/// A model that makes samples.
pub trait Backend {
    /// One line for the log: what runs and how.
    fn describe(&self) -> String;

    /// Make every sample `jobs` asks for, handing each to `sink` as it
    /// finishes. A prompt the model cannot take (too long for its context)
    /// becomes `Finish::Skipped` rows; an error stops the run, and the
    /// samples already handed to `sink` stay.
    fn generate(&self, jobs: &[Job], settings: &Settings, alias: &str, sink: &mut dyn Sink) -> Result<()>;
}
