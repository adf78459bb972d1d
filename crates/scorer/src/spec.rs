//! What `--reward` names, the options that change how it loads, and
//! loading it: a reward of ours (`reward.rs`) or one measured by a server
//! (`served.rs`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use candle_core::DType;
use serde::Serialize;
use wrpo_llm::bf16::Precision;
use wrpo_remote::RemoteOptions;

use crate::{
    judge::{self, Judge},
    reward::{Exact, Numeric, Reward, RewardModel, Similarity},
    served::{self, Classify, JudgeReward, ServedSimilarity},
};

/// The weight type of a reward's model (`--dtype`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RewardDtype {
    F32,
    Bf16,
}

impl RewardDtype {
    pub fn dtype(self) -> DType {
        match self {
            RewardDtype::F32 => DType::F32,
            RewardDtype::Bf16 => DType::BF16,
        }
    }
}

/// What `--reward` names.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RewardSpec {
    /// An HF reward-model folder (a sequence-classification head, or ArmoRM).
    Rm { path: PathBuf },
    /// A reward model served for classification (vLLM `/classify`, SGLang
    /// `/v1/classify`); `render_with`: a local folder whose chat template
    /// renders the conversation here, sent as text.
    Classify { url: String, model: String, render_with: Option<PathBuf> },
    /// Cosine similarity to the reference in a sentence-transformers model's space.
    Similarity { path: PathBuf },
    /// The same through a server's `/v1/embeddings` (`url` is its …/v1 base).
    #[serde(rename = "similarity-openai")]
    SimilarityOpenai { url: String, model: String },
    /// An LLM judge's 1-10 grade through an OpenAI-compatible chat endpoint;
    /// the hash of its instructions (judge/prompts.json) is part of what a
    /// resumed run must share.
    Judge { url: String, model: String, prompts_sha256: String },
    /// 1 if the normalised response equals the normalised reference, else 0.
    Exact,
    /// 1 if the last number in the response equals the reference's within the tolerance.
    Numeric { tolerance: f64 },
}

const SPEC_FORMS: &str =
    "rm:PATH, classify:URL#MODEL, similarity:PATH, similarity:openai:URL#MODEL, judge:openai:URL#MODEL, exact or numeric[:TOLERANCE]";

impl RewardSpec {
    /// One of `SPEC_FORMS`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (kind, arg) = text.split_once(':').map_or((text, None), |(k, a)| (k, Some(a)));
        let path = || arg.filter(|a| !a.is_empty()).map(PathBuf::from).ok_or_else(|| format!("--reward {kind}: needs a path, as {kind}:PATH"));
        let served = |form: &str| wrpo_remote::parse_url_model(arg.unwrap_or_default(), form).map_err(|e| format!("--reward {e}"));
        match kind {
            "rm" => Ok(RewardSpec::Rm { path: path()? }),
            "classify" => {
                let (url, model) = served("classify:http://HOST:PORT/classify#MODEL")?;
                Ok(RewardSpec::Classify { url, model, render_with: None })
            }
            "similarity" if arg.is_some_and(|a| a.starts_with("openai:")) => {
                let (url, model) = judge::parse_spec(arg.unwrap_or_default()).map_err(|e| format!("--reward similarity:{e}"))?;
                Ok(RewardSpec::SimilarityOpenai { url, model })
            }
            "similarity" => Ok(RewardSpec::Similarity { path: path()? }),
            "judge" => {
                let (url, model) = judge::parse_spec(arg.unwrap_or_default()).map_err(|e| format!("--reward judge:{e}"))?;
                Ok(RewardSpec::Judge { url, model, prompts_sha256: judge::prompts_sha256() })
            }
            "exact" if arg.is_none() => Ok(RewardSpec::Exact),
            "numeric" => {
                let tolerance = arg.map_or(Ok(1e-6), |a| a.parse::<f64>().map_err(|_| format!("--reward numeric:TOL: '{a}' is not a number")))?;
                if !(tolerance.is_finite() && tolerance >= 0.0) {
                    return Err(format!("--reward numeric:TOL: the tolerance must be a finite number of 0 or more, got {tolerance}"));
                }
                Ok(RewardSpec::Numeric { tolerance })
            }
            _ => Err(format!("--reward takes {SPEC_FORMS}; got '{text}'")),
        }
    }

    /// The model folders to record among a run's inputs.
    pub fn paths(&self) -> Vec<&Path> {
        match self {
            RewardSpec::Rm { path } | RewardSpec::Similarity { path } => vec![path],
            RewardSpec::Classify { render_with: Some(path), .. } => vec![path],
            _ => vec![],
        }
    }

    /// Is it measured by a server?
    pub fn served(&self) -> bool {
        matches!(self, RewardSpec::Classify { .. } | RewardSpec::SimilarityOpenai { .. } | RewardSpec::Judge { .. })
    }

    /// The spec with the options that change how it loads, each refused
    /// where this reward has no use for it: `render_with` (a served
    /// classifier's template folder, kept in the spec), the weights' `dtype`
    /// and matmul `precision` of a model of ours, and `check_against` (a
    /// local checkpoint a served classifier must score alike).
    pub fn with_options(
        mut self,
        render_with: Option<PathBuf>,
        dtype: RewardDtype,
        precision: Precision,
        check_against: Option<&Path>,
    ) -> Result<Self> {
        match (&mut self, render_with) {
            (RewardSpec::Classify { render_with, .. }, dir) => *render_with = dir,
            (_, Some(_)) => bail!("--render-with renders conversations for a served reward model (--reward classify:URL#MODEL)"),
            (_, None) => {}
        }
        if precision != Precision::F32 {
            if !matches!(self, RewardSpec::Rm { .. }) {
                bail!("--precision {}: it applies to a reward model of ours (--reward rm:PATH); this reward runs none", precision.name());
            }
            if dtype == RewardDtype::Bf16 {
                bail!(
                    "--precision {} runs bf16 matmuls on f32 weights; with --dtype bf16 the weights are bf16 already: choose one",
                    precision.name()
                );
            }
        }
        self.check_against_applies(check_against)?;
        Ok(self)
    }

    /// Refuse a `check_against` checkpoint for anything but a served classifier.
    fn check_against_applies(&self, check_against: Option<&Path>) -> Result<()> {
        if check_against.is_some() && !matches!(self, RewardSpec::Classify { .. }) {
            bail!("--check-against compares a served reward model (classify:URL#MODEL) with a local one; --reward is not one");
        }
        Ok(())
    }

    /// The reward, connected to its server where it has one; `check_against`
    /// (a served classifier only, see [`RewardSpec::with_options`]): a local
    /// checkpoint that must score alike.
    pub fn load(&self, dtype: RewardDtype, remote: &RemoteOptions, check_against: Option<&Path>) -> Result<Box<dyn Reward>> {
        // Library callers reach here without with_options.
        self.check_against_applies(check_against)?;
        let dtype = dtype.dtype();
        Ok(match self {
            RewardSpec::Rm { path } => Box::new(RewardModel::load(path, dtype)?),
            RewardSpec::Classify { url, model, render_with } => {
                let classify = Classify::connect(url, model, render_with.as_deref(), remote)?;
                if let Some(path) = check_against {
                    let (got, want) = served::check_against(&classify, path, dtype)?;
                    eprintln!("--check-against {}: served {got:.5}, local {want:.5}", path.display());
                }
                Box::new(classify)
            }
            RewardSpec::Similarity { path } => Box::new(Similarity::load(path, dtype)?),
            RewardSpec::SimilarityOpenai { url, model } => Box::new(ServedSimilarity::connect(url, model, remote)?),
            RewardSpec::Judge { url, model, .. } => Box::new(JudgeReward(Judge::connect(url, model, remote)?)),
            RewardSpec::Exact => Box::new(Exact),
            RewardSpec::Numeric { tolerance } => Box::new(Numeric { tolerance: *tolerance }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_what_is_expected() {
        assert_eq!(RewardSpec::parse("rm:models/rm").unwrap(), RewardSpec::Rm { path: "models/rm".into() });
        assert_eq!(RewardSpec::parse("numeric").unwrap(), RewardSpec::Numeric { tolerance: 1e-6 });
        assert_eq!(RewardSpec::parse("numeric:0.01").unwrap(), RewardSpec::Numeric { tolerance: 0.01 });
        // A negative or non-finite tolerance would score every correct answer 0.
        for bad in ["numeric:-1", "numeric:nan", "numeric:inf"] {
            assert!(RewardSpec::parse(bad).unwrap_err().contains("finite number of 0 or more"), "{bad}");
        }
        assert!(RewardSpec::parse("similarity:").unwrap_err().contains("needs a path"));
        assert!(RewardSpec::parse("bleu").unwrap_err().contains("rm:PATH"));
        assert_eq!(
            RewardSpec::parse("classify:http://gpu:8000/classify#Skywork/Skywork-Reward-V2-Llama-3.1-8B").unwrap(),
            RewardSpec::Classify {
                url: "http://gpu:8000/classify".into(),
                model: "Skywork/Skywork-Reward-V2-Llama-3.1-8B".into(),
                render_with: None
            }
        );
        assert_eq!(
            RewardSpec::parse("similarity:openai:http://h:8080/v1/#minilm").unwrap(),
            RewardSpec::SimilarityOpenai { url: "http://h:8080/v1".into(), model: "minilm".into() }
        );
        let RewardSpec::Judge { url, model, prompts_sha256 } = RewardSpec::parse("judge:openai:https://h/v1#gpt").unwrap() else { panic!() };
        assert_eq!((url.as_str(), model.as_str(), prompts_sha256.len()), ("https://h/v1", "gpt", 64));
        assert!(RewardSpec::parse("classify:http://gpu:8000/classify").unwrap_err().contains("'#MODEL' is missing"));
        assert!(RewardSpec::parse("judge:http://h/v1#m").unwrap_err().contains("openai:URL#MODEL"));
        assert!(RewardSpec::parse("classify:gpu:8000#m").unwrap_err().contains("not an http"));
    }

    #[test]
    fn options_a_reward_has_no_use_for_are_refused() {
        let rm = || RewardSpec::parse("rm:models/rm").unwrap();
        let classify = || RewardSpec::parse("classify:http://gpu:8000/classify#m").unwrap();
        let folder = || Some(PathBuf::from("models/rm"));
        let RewardSpec::Classify { render_with, .. } = classify().with_options(folder(), RewardDtype::F32, Precision::F32, None).unwrap() else {
            panic!()
        };
        assert_eq!(render_with, folder());
        let err = |r: Result<RewardSpec>| r.unwrap_err().to_string();
        assert!(err(rm().with_options(folder(), RewardDtype::F32, Precision::F32, None)).contains("--render-with renders"));
        assert!(err(classify().with_options(None, RewardDtype::F32, Precision::Bf16, None)).contains("applies to a reward model of ours"));
        assert!(err(rm().with_options(None, RewardDtype::Bf16, Precision::Bf16, None)).contains("choose one"));
        assert!(err(rm().with_options(None, RewardDtype::F32, Precision::F32, Some(Path::new("rm")))).contains("--check-against compares"));
        assert!(rm().with_options(None, RewardDtype::F32, Precision::Bf16, None).is_ok());
    }
}
