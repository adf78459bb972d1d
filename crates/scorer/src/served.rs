//! Rewards computed by servers: sequence-classification reward models
//! behind vLLM's `/classify` or SGLang's `/v1/classify`, sentence embeddings
//! behind any `/v1/embeddings`, and an LLM judge's grade. Requests follow
//! `wrpo_remote`'s fault rules; an input the server refuses (400, 413, 422)
//! or a judge's unreadable verdict becomes a skipped row, never a score.

use std::{collections::HashMap, path::Path, sync::Mutex};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use wrpo_common::{dataset::Role, Message};
use wrpo_llm::{ChatMessage, ChatTemplate, Family, Tokenizer};
use wrpo_remote::{Client, Failure, RemoteOptions};

use crate::{
    judge::Judge,
    reward::{all_or_error, cosine, Item, Partial, Reward, RewardModel, Scored},
};

/// Texts per request where a server takes a list (vLLM's `/classify` input, `/v1/embeddings`).
const TEXTS_PER_REQUEST: usize = 32;

/// How a conversation reaches the classifier.
enum Form {
    /// vLLM's `/classify` with `messages`: the server renders them with the
    /// reward model's template; one conversation per request.
    Messages,
    /// `input` text rendered here with the reward model's own template
    /// (`--render-with`), `add_special_tokens: false` so no second BOS is
    /// added; a list per request for vLLM, one text for SGLang.
    Text(Box<Renderer>),
}

struct Renderer {
    tokenizer: Tokenizer,
    template: ChatTemplate,
    one_per_request: bool,
}

/// A reward model served for classification.
pub struct Classify {
    client: Client,
    url: String,
    model: String,
    form: Form,
}

/// SGLang's route: `/v1/classify` takes one text, rendered on our side.
fn is_sglang(url: &str) -> bool {
    url.ends_with("/v1/classify")
}

/// `scheme://host:port` of a URL: where `/v1/models` is listed.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    url[after_scheme..].find('/').map_or(url, |i| &url[..after_scheme + i])
}

impl Classify {
    pub fn connect(url: &str, model: &str, render_with: Option<&Path>, opts: &RemoteOptions) -> Result<Self> {
        let form = match render_with {
            Some(dir) => {
                let config: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).with_context(|| format!("--render-with {}", dir.display()))?)
                    .with_context(|| format!("{}/config.json is not valid JSON", dir.display()))?;
                let family = Family::from_model_type(config["model_type"].as_str().unwrap_or(""))?;
                let tokenizer = Tokenizer::load(dir)?;
                // The server renders messages with the model's own template; a
                // fallback here (ChatML) would send it another text to score.
                if tokenizer.chat_template.is_none() {
                    bail!(
                        "--render-with {}: it has no chat template (tokenizer_config.json's chat_template or chat_template.jinja); give the reward model's own folder",
                        dir.display()
                    );
                }
                let template = tokenizer.chat_template_for(family)?;
                Form::Text(Box::new(Renderer { tokenizer, template, one_per_request: is_sglang(url) }))
            }
            None if is_sglang(url) => bail!(
                "{url}: SGLang's /v1/classify takes text only; pass --render-with with the reward model's folder (its tokenizer and chat template) to render the conversation here"
            ),
            None => Form::Messages,
        };
        let client = Client::new(opts)?;
        client.check_serves(&format!("{}/v1/models", origin(url)), model).context("the reward model's server")?;
        Ok(Classify { client, url: url.to_string(), model: model.to_string(), form })
    }

    /// The request body for `items`: `messages` for one, `input` for texts.
    fn body(&self, items: &[&Item]) -> Result<Value> {
        let conversation =
            |item: &Item| -> Vec<Message> { item.messages.iter().cloned().chain([Message::new(Role::Assistant, item.response)]).collect() };
        let mut body = match &self.form {
            Form::Messages => {
                let [item] = items else { unreachable!("one conversation per request") };
                json!({"model": self.model, "messages": conversation(item)})
            }
            Form::Text(r) => {
                let Renderer { tokenizer, template, one_per_request } = r.as_ref();
                let texts = items
                    .iter()
                    .map(|item| {
                        let turns = conversation(item);
                        let turns: Vec<ChatMessage> = turns.iter().map(|m| ChatMessage { role: m.role.as_str(), content: &m.content }).collect();
                        Ok(tokenizer.chat_text(&template.render(&turns, false)?))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let input = if *one_per_request { json!(texts[0]) } else { json!(texts) };
                json!({"model": self.model, "input": input, "add_special_tokens": false})
            }
        };
        if !is_sglang(&self.url) {
            // Raw logits, as a local run of the head gives; vLLM would apply the head's activation.
            body["use_activation"] = json!(false);
        }
        Ok(body)
    }

    fn per_request(&self) -> usize {
        match self.form {
            Form::Text(ref r) if !r.one_per_request => TEXTS_PER_REQUEST,
            _ => 1,
        }
    }

    fn request(&self, items: &[&Item]) -> Result<Vec<Scored>> {
        let body = self.body(items)?;
        let answer = self.client.post(&self.url, &body, |answer| one_label_scores(&answer, items.len(), is_sglang(&self.url)));
        split_refusals(answer, items, |one| self.request(one)).with_context(|| format!("{} ({})", self.url, self.model))
    }
}

/// `data[i].probs[0]` in `index` order; a reward head has one label.
fn one_label_scores(answer: &Value, n: usize, sglang: bool) -> Result<Vec<f64>, Failure> {
    let data = indexed_data(answer, n)?;
    data.iter()
        .map(|d| match d["probs"].as_array().map(Vec::as_slice) {
            // SGLang's route takes a softmax over the labels: one label always gives 1.
            Some([_]) if sglang => Err(Failure::Fatal(
                "SGLang's /v1/classify applies a softmax over the head's labels, so a one-label reward head scores 1 for every input; \
                 serve the reward model with vLLM (vllm serve MODEL --runner pooling, route /classify) or score it here with rm:PATH"
                    .into(),
            )),
            Some([p]) => p.as_f64().ok_or_else(|| Failure::transient(format!("probs holds {p}, not a number"))),
            Some(probs) => Err(Failure::Fatal(format!("the served model has {} labels; a reward model has one", probs.len()))),
            None => Err(Failure::transient(format!("an answer without probs: {:.300}", d.to_string()))),
        })
        .collect()
}

/// `data` in input order: exactly `n` results whose `index` values are
/// 0..n-1, each once. A result without an index, or with one that is
/// repeated, out of range or not a whole number, would put a reward on
/// another sample: a server that answers so is not trusted again (fatal).
fn indexed_data(answer: &Value, n: usize) -> Result<Vec<Value>, Failure> {
    let data = answer["data"].as_array().cloned().unwrap_or_default();
    if data.len() != n {
        return Err(Failure::transient(format!("HTTP 200 with {} results for {n} inputs: {:.300}", data.len(), answer.to_string())));
    }
    let mut placed: Vec<Option<Value>> = vec![None; n];
    for d in data {
        let index = d["index"].clone();
        match index.as_u64().and_then(|i| placed.get_mut(i as usize)).filter(|slot| slot.is_none()) {
            Some(slot) => *slot = Some(d),
            None => {
                return Err(Failure::Fatal(format!(
                    "HTTP 200 with a result whose index ({index}) is missing, repeated or not one of 0..{n}: its reward would land on another sample; {:.300}",
                    answer.to_string()
                )))
            }
        }
    }
    Ok(placed.into_iter().flatten().collect())
}

/// The embeddings of an `/embeddings` answer for `n` inputs, in input order:
/// each non-empty, finite, and all of one length.
fn embeddings(answer: &Value, n: usize) -> Result<Vec<Vec<f32>>, Failure> {
    let vectors = indexed_data(answer, n)?
        .iter()
        .map(|d| {
            let values =
                d["embedding"].as_array().ok_or_else(|| Failure::transient(format!("an answer without an embedding: {:.200}", d.to_string())))?;
            values
                .iter()
                .map(|v| {
                    v.as_f64()
                        .map(|x| x as f32)
                        .filter(|x| x.is_finite())
                        .ok_or_else(|| Failure::Fatal(format!("an embedding holds {v}, not a finite number")))
                })
                .collect::<Result<Vec<f32>, Failure>>()
        })
        .collect::<Result<Vec<Vec<f32>>, Failure>>()?;
    match vectors.iter().map(Vec::len).fold((usize::MAX, 0), |(lo, hi), l| (lo.min(l), hi.max(l))) {
        (0, _) => Err(Failure::Fatal("an empty embedding: no similarity can be computed from it".into())),
        (lo, hi) if lo != hi => Err(Failure::Fatal(format!("embeddings of {lo} and {hi} values in one answer: a cosine needs equal lengths"))),
        _ => Ok(vectors),
    }
}

/// The cosine of a response's and its reference's served embeddings; an
/// all-zero embedding, whose cosine is undefined, refuses the sample (a
/// skipped row), and embeddings of different lengths stop the run.
fn served_cosine(response: &[f32], reference: &[f32]) -> Result<Result<f64, String>> {
    if response.len() != reference.len() {
        bail!(
            "a response's embedding has {} values and its reference's {}: the server changed its embedding size mid-run",
            response.len(),
            reference.len()
        );
    }
    let zero = |v: &[f32]| v.iter().all(|x| *x == 0.0);
    Ok(match (zero(response), zero(reference)) {
        (false, false) => Ok(cosine(response, reference)),
        (true, _) => Err("the server embedded the response as all zeros, whose cosine is undefined".into()),
        (false, true) => Err("the server embedded the reference answer as all zeros, whose cosine is undefined".into()),
    })
}

/// One outcome per input: a value, or why the server refused the input.
type PerInput<T> = Vec<Result<T, String>>;

/// A request's outcome per input. A refusal of several inputs at once says
/// nothing of which one is at fault: each is then asked `alone`, and only
/// the ones refused alone are skipped.
fn split_refusals<I, T, E: From<Failure>>(
    answer: Result<Vec<T>, Failure>,
    inputs: &[I],
    alone: impl Fn(&[I]) -> Result<PerInput<T>, E>,
) -> Result<PerInput<T>, E> {
    match answer {
        Ok(values) => Ok(values.into_iter().map(Ok).collect()),
        Err(Failure::Refused(why)) if inputs.len() == 1 => Ok(vec![Err(format!("the server refused it: {why}"))]),
        Err(Failure::Refused(_)) => inputs.iter().map(|i| alone(std::slice::from_ref(i)).map(|mut v| v.remove(0))).collect(),
        Err(f) => Err(E::from(f)),
    }
}

/// `inputs` in requests of `per_request`, several in flight, the outcomes in
/// order: None for the inputs of a request that failed or, after a failure,
/// was never sent; and the first failure.
fn in_requests<I: Sync, T: Send, E: Send + From<Failure>>(
    client: &Client,
    inputs: &[I],
    per_request: usize,
    request: impl Fn(&[I]) -> Result<Vec<T>, E> + Sync,
) -> (Vec<Option<T>>, Option<E>) {
    let chunks: Vec<&[I]> = inputs.chunks(per_request).collect();
    let answers = client.in_flight(&chunks, |chunk| request(chunk), Result::is_err, |why| Err(E::from(Failure::Fatal(why))));
    let (mut outcomes, mut failure) = (Vec::with_capacity(inputs.len()), None);
    for (chunk, answer) in chunks.iter().zip(answers) {
        match answer {
            Some(Ok(values)) => outcomes.extend(values.into_iter().map(Some)),
            Some(Err(e)) => {
                outcomes.extend(chunk.iter().map(|_| None));
                failure.get_or_insert(e);
            }
            None => outcomes.extend(chunk.iter().map(|_| None)),
        }
    }
    (outcomes, failure)
}

impl Reward for Classify {
    fn name(&self) -> String {
        format!("classify:{}", self.model)
    }
    fn checkable(&self, _: Option<&str>) -> bool {
        true
    }
    fn cost(&self, _: &Item) -> Result<usize> {
        Ok(0)
    }
    fn score_or_refuse(&self, items: &[Item]) -> Result<Vec<Scored>> {
        all_or_error(self.score_partial(items))
    }
    fn score_partial(&self, items: &[Item]) -> Partial {
        let items: Vec<&Item> = items.iter().collect();
        in_requests(&self.client, &items, self.per_request(), |chunk| self.request(chunk))
    }
}

/// The conversation `--check-against` scores both ways.
const CHECK_PROMPT: &str = "What is the capital of France?";
const CHECK_RESPONSE: &str = "The capital of France is Paris.";

/// Refuse a served reward model that scores a known conversation otherwise
/// than the local checkpoint `path` does (another checkpoint, another
/// template, an activation applied).
pub fn check_against(served: &Classify, path: &Path, dtype: candle_core::DType) -> Result<(f64, f64)> {
    let local = RewardModel::load(path, dtype)?;
    let messages = [Message::new(Role::User, CHECK_PROMPT)];
    let item = Item { messages: &messages, response: CHECK_RESPONSE, reference: None };
    let want = local.score(std::slice::from_ref(&item))?[0];
    let got = match served.score_or_refuse(std::slice::from_ref(&item))?.remove(0) {
        Ok(r) => r,
        Err(why) => bail!("--check-against: the server refused the check conversation: {why}"),
    };
    // Served models often run in bf16: agree to about two digits.
    if (got - want).abs() > 0.02 * want.abs().max(1.0) {
        bail!(
            "--check-against {}: the server scores the check conversation {got}, the local checkpoint {want}; they are not the same reward model, template or activation",
            path.display()
        );
    }
    Ok((got, want))
}

/// Cosine similarity to the reference in a served embedding model's space.
pub struct ServedSimilarity {
    client: Client,
    url: String,
    model: String,
    /// Embeddings of references already seen: the N samples of a prompt share one.
    references: Mutex<HashMap<String, Vec<f32>>>,
}

impl ServedSimilarity {
    /// `url` is the OpenAI-compatible base (…/v1).
    pub fn connect(url: &str, model: &str, opts: &RemoteOptions) -> Result<Self> {
        let client = Client::new(opts)?;
        client.check_serves(&format!("{url}/models"), model).context("the embedding server")?;
        Ok(ServedSimilarity { client, url: url.to_string(), model: model.to_string(), references: Mutex::default() })
    }

    fn embed(&self, texts: &[&str]) -> Result<PerInput<Vec<f32>>, Failure> {
        let body = json!({"model": self.model, "input": texts, "encoding_format": "float"});
        let answer = self.client.post(&format!("{}/embeddings", self.url), &body, |answer| embeddings(&answer, texts.len()));
        split_refusals(answer, texts, |one| self.embed(one))
    }

    fn embed_all(&self, texts: &[&str]) -> Result<PerInput<Vec<f32>>> {
        match in_requests(&self.client, texts, TEXTS_PER_REQUEST, |chunk| self.embed(chunk)) {
            (_, Some(f)) => Err(anyhow!("{}/embeddings: {f}", self.url)),
            (embedded, None) => Ok(embedded.into_iter().flatten().collect()),
        }
    }
}

impl Reward for ServedSimilarity {
    fn name(&self) -> String {
        format!("similarity:openai:{}", self.model)
    }
    fn cost(&self, _: &Item) -> Result<usize> {
        Ok(0)
    }
    fn score_or_refuse(&self, items: &[Item]) -> Result<Vec<Scored>> {
        let mut missing: Vec<&str> = Vec::new();
        for item in items {
            let r = item.reference()?;
            if !self.references.lock().unwrap().contains_key(r) && !missing.contains(&r) {
                missing.push(r);
            }
        }
        let mut refused: HashMap<&str, String> = HashMap::new();
        for (r, e) in missing.iter().zip(self.embed_all(&missing)?) {
            match e {
                Ok(e) => _ = self.references.lock().unwrap().insert(r.to_string(), e),
                Err(why) => _ = refused.insert(r, format!("its reference answer: {why}")),
            }
        }
        let responses = self.embed_all(&items.iter().map(|i| i.response).collect::<Vec<_>>())?;
        let refs = self.references.lock().unwrap();
        items
            .iter()
            .zip(responses)
            .map(|(item, e)| {
                let r = item.reference()?;
                Ok(match (e, refused.get(r)) {
                    (_, Some(why)) => Err(why.clone()),
                    (Err(why), _) => Err(why),
                    (Ok(e), None) => served_cosine(&e, &refs[r]).with_context(|| format!("{}/embeddings", self.url))?,
                })
            })
            .collect()
    }
}

/// The judge's 1-10 grade as the reward (MT-Bench's single-answer grading),
/// the reference shown to the judge where the prompt has one.
pub struct JudgeReward(pub Judge);

impl Reward for JudgeReward {
    fn name(&self) -> String {
        format!("judge:{}", self.0.settings.model)
    }
    fn checkable(&self, _: Option<&str>) -> bool {
        true
    }
    fn cost(&self, _: &Item) -> Result<usize> {
        Ok(0)
    }
    fn score_or_refuse(&self, items: &[Item]) -> Result<Vec<Scored>> {
        all_or_error(self.score_partial(items))
    }
    fn score_partial(&self, items: &[Item]) -> Partial {
        let graded = self.0.client().in_flight(
            items,
            |item| self.0.grade(item.messages, item.response, item.reference),
            |g| matches!(g, Err(f) if !matches!(f, Failure::Refused(_))),
            |why| Err(Failure::Fatal(why)),
        );
        let mut fatal = None;
        let scored = graded
            .into_iter()
            .map(|g| match g? {
                Ok(judged) => Some(Ok(judged.verdict)),
                Err(Failure::Refused(why)) => Some(Err(why)),
                Err(f) => {
                    fatal.get_or_insert_with(|| anyhow!("{}/chat/completions: {}", self.0.settings.url, f.message()));
                    None
                }
            })
            .collect();
        (scored, fatal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fatal(r: Result<impl std::fmt::Debug, Failure>) -> String {
        match r {
            Err(Failure::Fatal(why)) => why,
            other => panic!("expected a fatal failure, got {other:?}"),
        }
    }

    #[test]
    fn served_results_must_name_each_input_once() {
        let answer = |indices: Value| {
            let data: Vec<Value> = indices.as_array().unwrap().iter().enumerate().map(|(k, i)| json!({"index": i, "probs": [k as f64]})).collect();
            json!({ "data": data })
        };
        // A permutation is put back in input order.
        let placed = indexed_data(&answer(json!([2, 0, 1])), 3).unwrap();
        assert_eq!(placed.iter().map(|d| d["index"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(one_label_scores(&answer(json!([2, 0, 1])), 3, false).unwrap(), [1.0, 2.0, 0.0]);
        // Missing, repeated, out of range, a string, a fraction: each would misplace a reward.
        for bad in [json!([0, null, 1]), json!([0, 0, 1]), json!([0, 1, 3]), json!([0, "1", 2]), json!([0, 1.5, 2]), json!([0, -1, 2])] {
            let why = fatal(indexed_data(&answer(bad.clone()), 3));
            assert!(why.contains("missing, repeated or not one of 0..3"), "{bad}: {why}");
        }
        assert!(matches!(indexed_data(&answer(json!([0, 1])), 3), Err(Failure::Transient { .. })));
    }

    #[test]
    fn served_embeddings_are_checked_before_a_cosine() {
        let answer = |vectors: Value| {
            let data: Vec<Value> = vectors.as_array().unwrap().iter().enumerate().map(|(i, e)| json!({"index": i, "embedding": e})).collect();
            json!({ "data": data })
        };
        assert_eq!(embeddings(&answer(json!([[1.0, 0.0], [0.0, 2.0]])), 2).unwrap(), [vec![1.0, 0.0], vec![0.0, 2.0]]);
        assert!(fatal(embeddings(&answer(json!([[1.0, 0.0], [1.0]])), 2)).contains("of 1 and 2 values"));
        assert!(fatal(embeddings(&answer(json!([[], []])), 2)).contains("empty embedding"));
        assert!(fatal(embeddings(&answer(json!([[1e300, 0.0]])), 1)).contains("not a finite number"));
        assert!(fatal(embeddings(&answer(json!([["x", 0.0]])), 1)).contains("not a finite number"));
        // A zero vector refuses its sample; different lengths stop the run.
        assert_eq!(served_cosine(&[1.0, 0.0], &[2.0, 0.0]).unwrap(), Ok(1.0));
        assert!(served_cosine(&[0.0, 0.0], &[1.0, 0.0]).unwrap().unwrap_err().contains("response as all zeros"));
        assert!(served_cosine(&[1.0, 0.0], &[0.0, 0.0]).unwrap().unwrap_err().contains("reference answer as all zeros"));
        assert!(served_cosine(&[1.0, 0.0], &[1.0, 0.0, 0.0]).unwrap_err().to_string().contains("2 values and its reference's 3"));
    }
}
