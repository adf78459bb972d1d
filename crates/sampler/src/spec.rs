//! `--model` specifications: `[alias=]PATH` for a local HF folder or GGUF
//! file, `alias=openai:URL#served-name` for an OpenAI-compatible server.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Source {
    Local {
        path: PathBuf,
    },
    /// `base_url` ends in `/v1` (or wherever `/chat/completions` hangs).
    Openai {
        base_url: String,
        served_name: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModelSpec {
    /// The `model` column's value and the output folder's name.
    pub alias: String,
    pub source: Source,
}

impl ModelSpec {
    pub fn parse(spec: &str) -> Result<Self> {
        let (alias, rest) = match spec.split_once('=') {
            Some((a, r)) if !a.contains(['/', ':']) => (Some(a.to_string()), r),
            _ => (None, spec),
        };
        if let Some(url) = rest.strip_prefix("openai:") {
            let (base_url, served_name) = wrpo_remote::parse_url_model(url, "alias=openai:http://HOST:PORT/v1#served-name")
                .map_err(|e| anyhow::anyhow!("model '{spec}': {e}"))?;
            let Some(alias) = alias else {
                bail!("model '{spec}': a remote model needs an alias, as in name=openai:{url}");
            };
            check_alias(&alias).with_context(|| format!("model '{spec}'"))?;
            let source = Source::Openai { base_url, served_name };
            return Ok(ModelSpec { alias, source });
        }
        let path = PathBuf::from(rest);
        // Named after the folder (Qwen2.5-7B) or the GGUF file without its extension.
        let is_gguf = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        let alias = match alias {
            Some(a) => a,
            None => if is_gguf { path.file_stem() } else { path.file_name() }
                .map(|s| s.to_string_lossy().into_owned())
                .filter(|s| !s.is_empty())
                .ok_or_else(|| anyhow::anyhow!("model '{spec}': cannot name it after its path; write alias=PATH"))?,
        };
        check_alias(&alias).with_context(|| format!("model '{spec}'"))?;
        Ok(ModelSpec { alias, source: Source::Local { path } })
    }
}

/// Aliases name output folders: keep them to characters every file system
/// takes. '@' marks a training seed (`wrpo@1`), which `wrpo-score report` pools.
pub fn check_alias(alias: &str) -> Result<()> {
    let ok = !alias.is_empty() && !alias.starts_with('.') && alias.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
    if !ok {
        bail!("alias '{alias}' may only hold letters, digits, '-', '_', '.' and '@', and may not start with '.'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_local_and_remote_specs() {
        let s = ModelSpec::parse("models/smollm2-135m.gguf").unwrap();
        assert_eq!(s.alias, "smollm2-135m");
        assert_eq!(s.source, Source::Local { path: "models/smollm2-135m.gguf".into() });
        let s = ModelSpec::parse("qwen=/data/Qwen2.5-7B").unwrap();
        assert_eq!(s.alias, "qwen");
        let s = ModelSpec::parse("big=openai:http://10.0.0.2:8000/v1/#meta-llama/Llama-3.1-70B").unwrap();
        assert_eq!(s.source, Source::Openai { base_url: "http://10.0.0.2:8000/v1".into(), served_name: "meta-llama/Llama-3.1-70B".into() });
    }

    #[test]
    fn a_model_is_named_after_its_whole_folder_name_or_its_gguf_file() {
        assert_eq!(ModelSpec::parse("models/Qwen2.5-7B").unwrap().alias, "Qwen2.5-7B");
        assert_eq!(ModelSpec::parse("models/Qwen2.5-7B/").unwrap().alias, "Qwen2.5-7B");
        assert_eq!(ModelSpec::parse("models/smollm2-135m-instruct-q4_1.gguf").unwrap().alias, "smollm2-135m-instruct-q4_1");
    }

    #[test]
    fn rejects_bad_specs_with_the_reason() {
        let e = ModelSpec::parse("big=openai:http://host:8000/v1").unwrap_err().to_string();
        assert!(e.contains("#served-name"), "{e}");
        let e = ModelSpec::parse("openai:http://host:8000/v1#m").unwrap_err().to_string();
        assert!(e.contains("needs an alias"), "{e}");
        let e = format!("{:#}", ModelSpec::parse("a b=models/x.gguf").unwrap_err());
        assert!(e.contains("alias 'a b'"), "{e}");
        let e = ModelSpec::parse("x=openai:ftp://host/v1#m").unwrap_err().to_string();
        assert!(e.contains("not an http"), "{e}");
    }
}
