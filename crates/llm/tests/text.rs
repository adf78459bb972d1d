//! Tokenizers and chat templates against their references: transformers'
//! tokenizer on a tokenizer.json, and apply_chat_template on the models' own
//! templates (fixtures made by scripts/fixtures/make_{tokenizer,chat}_fixtures.py).

use std::path::PathBuf;

use serde_json::Value;
use wrpo_llm::{ChatMessage, ChatTemplate, Family, Tokenizer};

fn fixtures(dir: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/fixtures").join(dir)
}

fn read_json(path: PathBuf) -> Value {
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[test]
fn tokenizer_json_ids_and_text_match_transformers() {
    let dir = fixtures("tokenizer/tiny-bpe");
    let tok = Tokenizer::from_hf_dir(&dir).unwrap();
    let expected = read_json(dir.join("expected.json"));
    for case in expected.as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(ids, want, "ids of {text:?}");
        assert_eq!(tok.decode(&ids).unwrap(), case["decoded"].as_str().unwrap(), "text of {text:?}");
    }
    // tokenizer_config.json: EOS, no BOS added, the chat template.
    assert_eq!(tok.eos_id, tok.token_to_id("<|im_end|>"));
    assert!(tok.stop_ids.contains(&tok.token_to_id("<|im_end|>").unwrap()));
    assert!(tok.chat_template.as_deref().unwrap().contains("<|im_start|>"));
}

fn messages(v: &Value) -> Vec<(String, String)> {
    v.as_array().unwrap().iter().map(|m| (m["role"].as_str().unwrap().to_string(), m["content"].as_str().unwrap().to_string())).collect()
}

#[test]
fn chat_templates_render_as_apply_chat_template() {
    let dir = fixtures("chat");
    let expected = read_json(dir.join("expected.json"));
    let tokens = |name: &str| match name {
        "smollm2" => ("<|im_start|>", "<|im_end|>"),
        "qwen2.5" => ("", "<|im_end|>"),
        "llama3.1" => ("<|begin_of_text|>", "<|eot_id|>"),
        "gemma" => ("<bos>", "<eos>"),
        "mistral" => ("<s>", "</s>"),
        "phi3" => ("<s>", "<|endoftext|>"),
        other => panic!("no tokens for {other}"),
    };
    let cases = expected["cases"].as_array().unwrap();
    assert!(cases.len() >= 40);
    for case in cases {
        let name = case["template"].as_str().unwrap();
        let (bos, eos) = tokens(name);
        let source = std::fs::read_to_string(dir.join(format!("{name}.jinja"))).unwrap();
        let template = ChatTemplate::new(&source, bos, eos).unwrap();
        let owned = messages(&case["messages"]);
        let msgs: Vec<ChatMessage> = owned.iter().map(|(r, c)| ChatMessage { role: r, content: c }).collect();
        let got = template.render(&msgs, case["add_generation_prompt"].as_bool().unwrap());
        match (case["text"].as_str(), case["error"].as_str()) {
            (Some(want), _) => assert_eq!(got.unwrap(), want, "{name}: {case}"),
            (None, Some(err)) => {
                let got = format!("{:#}", got.unwrap_err());
                assert!(got.contains(err), "{name}: expected the template's own error {err:?}, got {got}");
            }
            _ => panic!("bad case {case}"),
        }
    }
}

#[test]
fn the_gemma_fallback_writes_gemma_turns_and_folds_the_system_prompt() {
    let template = ChatTemplate::for_model(None, Family::from_model_type("gemma3_text").unwrap(), "<bos>", "<eos>").unwrap();
    let msgs = [
        ChatMessage { role: "system", content: "Be brief." },
        ChatMessage { role: "user", content: " Hi " },
        ChatMessage { role: "assistant", content: "Hello." },
        ChatMessage { role: "user", content: "Bye" },
    ];
    assert_eq!(
        template.render(&msgs, true).unwrap(),
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n\
         <start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    );
    assert!(!template.render(&msgs[1..2], false).unwrap().ends_with("model\n"));
}

#[test]
fn a_broken_template_is_reported() {
    let err = ChatTemplate::new("{% for m in messages %}", "", "").err().unwrap();
    assert!(format!("{err:#}").contains("does not parse"), "{err:#}");
}

/// Llama-3-style tokenizers add BOS through their post-processor, not
/// add_bos_token: plain text gets it as the tokenizers library's own
/// encode(add_special_tokens) gives it, also when the processor sits in a
/// Sequence; an explicit add_bos_token still decides.
#[test]
fn bos_comes_from_the_post_processor_when_the_config_does_not_say() {
    let src = fixtures("tokenizer").join("tiny-bpe");
    let mut json = read_json(src.join("tokenizer.json"));
    let bos = "<|endoftext|>";
    let bos_id = json["added_tokens"].as_array().unwrap().iter().find(|t| t["content"] == bos).unwrap()["id"].clone();
    let template = serde_json::json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}
    });
    let mut config = read_json(src.join("tokenizer_config.json"));
    config.as_object_mut().unwrap().remove("add_bos_token");
    config.as_object_mut().unwrap().remove("bos_token");
    for post in [template.clone(), serde_json::json!({"type": "Sequence", "processors": [template]})] {
        let dir = tempfile::tempdir().unwrap();
        json["post_processor"] = post;
        std::fs::write(dir.path().join("tokenizer.json"), json.to_string()).unwrap();
        std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
        let ours = Tokenizer::load(dir.path()).unwrap().encode("hello world", true).unwrap();
        let reference = tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
        let want = reference.encode("hello world", true).unwrap().get_ids().to_vec();
        assert_eq!(ours, want);
        assert_eq!(ours[0] as u64, bos_id.as_u64().unwrap());
        let mut explicit = config.clone();
        explicit["add_bos_token"] = false.into();
        std::fs::write(dir.path().join("tokenizer_config.json"), explicit.to_string()).unwrap();
        assert_eq!(Tokenizer::load(dir.path()).unwrap().encode("hello world", true).unwrap(), want[1..]);
        std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    }
}
