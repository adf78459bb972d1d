//! Chat templates: the model's own Jinja template rendered with minijinja as
//! transformers' apply_chat_template renders it (trim_blocks, lstrip_blocks,
//! Python string methods, raise_exception), or a built-in format for models
//! that ship none.
//!
//! No `strftime_now` is provided: templates that print today's date then
//! fall back to their fixed default, so a prompt renders the same any day.

use anyhow::{anyhow, Context, Result};
use minijinja::{context, Environment, Error, ErrorKind};
use serde::Serialize;

use crate::family::{FallbackChat, Family};

/// Gemma's turn format (as Gemma-3's template writes it: a system prompt
/// goes in front of the first user turn), for GGUF files without a template.
const GEMMA_FALLBACK: &str = "{{ bos_token }}{%- set ns = namespace(prefix='') -%}
{%- for message in messages -%}
{%- if message['role'] == 'system' -%}{%- set ns.prefix = message['content'] + '\n\n' -%}
{%- else -%}
{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
{{ '<start_of_turn>' + role + '\n' + ns.prefix + message['content'] | trim + '<end_of_turn>\n' }}
{%- set ns.prefix = '' -%}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}";

/// ChatML, for other models without a template.
const CHATML_FALLBACK: &str = "{%- for message in messages -%}
{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}";

#[derive(Clone, Debug, Serialize)]
pub struct ChatMessage<'a> {
    pub role: &'a str,
    pub content: &'a str,
}

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// The template text, for saving with a checkpoint.
    pub source: String,
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build()?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> { Err(Error::new(ErrorKind::InvalidOperation, msg)) });
        env.add_template_owned("chat", source.to_string()).map_err(|e| anyhow!("the chat template does not parse: {e:#}"))?;
        Ok(ChatTemplate { env, bos_token: bos_token.into(), eos_token: eos_token.into(), source: source.into() })
    }

    /// The model's template if it has one, else the built-in format of its family.
    pub fn for_model(template: Option<&str>, family: &Family, bos_token: &str, eos_token: &str) -> Result<Self> {
        let source = template.unwrap_or(match family.fallback_chat {
            FallbackChat::Gemma => GEMMA_FALLBACK,
            FallbackChat::ChatMl => CHATML_FALLBACK,
        });
        Self::new(source, bos_token, eos_token)
    }

    /// The prompt text for `messages`; with `add_generation_prompt`, ending
    /// where the assistant's reply begins.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self.env.get_template("chat").expect("added in new");
        template
            .render(context! {
                messages => minijinja::Value::from(minijinja::value::Serde(messages)),
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| anyhow!("{e:#}"))
            .context("cannot render the chat template")
    }
}
