//! Checks on the real demo models (SmolLM2-135M-Instruct Q4_1 and
//! Gemma-3-270M Q4_K_M GGUF files), which `make models` fetches into
//! models/. Ignored by plain `cargo test`; `make test` fetches the models
//! and runs every test with --include-ignored (one cargo invocation: a
//! separate `--test demo_models` run resolves features differently and
//! rebuilds candle).

use std::path::PathBuf;

use serde_json::Value;
use wrpo_llm::{gguf::Gguf, Tokenizer};

const MODELS: [(&str, &str); 2] = [("smollm2", "smollm2-135m-instruct-q4_1.gguf"), ("gemma3", "gemma-3-270m-q4_k_m.gguf")];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model(file: &str) -> PathBuf {
    let path = root().join("models").join(file);
    assert!(path.exists(), "{} is missing: run 'make models'", path.display());
    path
}

fn read_json(path: PathBuf) -> Value {
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[test]
#[ignore = "needs the demo models: make models"]
fn gguf_tokenizers_match_llama_cpp() {
    let corpus: Vec<String> = serde_json::from_value(read_json(root().join("data/fixtures/tokenizer/corpus.json"))).unwrap();
    for (name, file) in MODELS {
        let tok = Tokenizer::from_gguf(&Gguf::open(&model(file)).unwrap()).unwrap();
        let reference = read_json(root().join(format!("data/fixtures/tokenizer/{name}.llama_cpp.json")));
        let want: Vec<Vec<u32>> = serde_json::from_value(reference["ids"].clone()).unwrap();
        let mut failures = vec![];
        for (text, want) in corpus.iter().zip(&want) {
            let ids = tok.encode(text, false).unwrap();
            if &ids != want {
                failures.push(format!("{text:?}\n  ours:      {ids:?}\n  llama.cpp: {want:?}"));
            }
        }
        assert!(failures.is_empty(), "{name}: {} of {} strings differ:\n{}", failures.len(), corpus.len(), failures.join("\n"));
    }
}

/// Greedy continuation through the KV cache.
fn greedy(model: &wrpo_llm::Model, prompt: &[u32], n: usize) -> (Vec<f32>, Vec<u32>) {
    use wrpo_llm::{sampling::argmax, KvCache};
    let mut cache = KvCache::new(model, 1, prompt.len() + n).unwrap();
    let first = model.prefill(&mut cache, 0, prompt).unwrap().to_vec1::<f32>().unwrap();
    let mut out = vec![argmax(&first)];
    while out.len() < n {
        let logits = model.decode(&mut cache, &[*out.last().unwrap()]).unwrap().get(0).unwrap().to_vec1::<f32>().unwrap();
        out.push(argmax(&logits));
    }
    (first, out)
}

#[test]
#[ignore = "needs the demo models: make models"]
fn demo_models_match_transformers_gguf_loader_and_the_quantized_path_follows() {
    use candle_core::DType;
    use wrpo_llm::LoadOptions;
    for (name, file) in MODELS {
        let reference = read_json(root().join(format!("data/fixtures/demo/{name}.json")));
        let dense = wrpo_llm::Model::load(&model(file), &LoadOptions::trainable(DType::F32)).unwrap();
        let quantized = wrpo_llm::Model::load(&model(file), &LoadOptions::quantized(None)).unwrap();
        for case in reference["cases"].as_array().unwrap() {
            let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            let top: Vec<usize> = serde_json::from_value(case["top_ids"].clone()).unwrap();
            let top_logits: Vec<f32> = serde_json::from_value(case["top_logits"].clone()).unwrap();
            let want: Vec<u32> = serde_json::from_value(case["greedy"].clone()).unwrap();
            let (logits, tokens) = greedy(&dense, &ids, want.len());
            let err = top.iter().zip(&top_logits).map(|(&i, &l)| (logits[i] - l).abs()).fold(0f32, f32::max);
            println!("{name} {:?}: max abs error over the top 20 logits {err:.2e}", case["text"]);
            assert!(err <= 1e-3, "{name}: logits differ from transformers' by {err}");
            assert_eq!(tokens, want, "{name}: greedy continuation of {:?}", case["text"]);
            // 8-bit activations in the quantized matmul move logits by a few
            // tenths: its first choice must be one transformers ranks within
            // half a logit of its best (near-ties may swap).
            let (qlogits, qtokens) = greedy(&quantized, &ids, 4);
            let qerr = top.iter().zip(&top_logits).map(|(&i, &l)| (qlogits[i] - l).abs()).fold(0f32, f32::max);
            println!("{name} quantized path: max abs error over the top 20 logits {qerr:.2e}, greedy {qtokens:?} vs {:?}", &want[..4]);
            let rank = top.iter().position(|&i| i as u32 == qtokens[0]);
            let gap = rank.map(|r| top_logits[0] - top_logits[r]);
            assert!(gap.is_some_and(|g| g < 0.5), "{name}: the quantized path's first token {} is {gap:?} below transformers' best", qtokens[0]);
            assert!(qerr < 1.0, "{name}: quantized logits differ by {qerr}");
        }
    }
}

#[test]
#[ignore = "needs the demo models: make models"]
fn an_hf_checkpoint_quantized_at_load_follows_its_f32_model() {
    use candle_core::{quantized::GgmlDType, DType};
    use wrpo_llm::{LoadOptions, Model};
    let dir = tempfile::tempdir().unwrap();
    for (name, file) in MODELS {
        // The GGUF model as an f32 HF checkpoint, as `wrpo-train sft` writes one.
        let dense = Model::load(&model(file), &LoadOptions::trainable(DType::F32)).unwrap();
        let tokenizer = Tokenizer::from_gguf(&Gguf::open(&model(file)).unwrap()).unwrap();
        let hf = dir.path().join(name);
        wrpo_llm::save_hf_checkpoint(&dense, &tokenizer, None, &hf).unwrap();
        drop(dense);
        // transformers refuses a config whose integer fields hold floats.
        let config = read_json(hf.join("config.json"));
        for key in ["query_pre_attn_scalar", "head_dim", "sliding_window", "num_key_value_heads"] {
            assert!(config[key].is_null() || config[key].is_u64(), "{name}: config.json's {key} is {}, not an integer", config[key]);
        }
        let exact = Model::load(&hf, &LoadOptions::quantized(None)).unwrap();
        let q8 = Model::load(&hf, &LoadOptions::quantized(Some(GgmlDType::Q8_0))).unwrap();
        // Gemma's k-quant GGUF runs as Q8_0 of the same values: its Q8_0
        // equivalent, which the HF checkpoint quantized at load must equal.
        let gguf_q8 = (name == "gemma3").then(|| Model::load(&model(file), &LoadOptions::quantized(None)).unwrap());
        let reference = read_json(root().join(format!("data/fixtures/demo/{name}.json")));
        for case in reference["cases"].as_array().unwrap() {
            let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            let (logits, tokens) = greedy(&exact, &ids, 16);
            let (qlogits, qtokens) = greedy(&q8, &ids, 16);
            // Over the f32 model's 20 most likely tokens, as the GGUF check above.
            let mut top: Vec<usize> = (0..logits.len()).collect();
            top.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
            let err = top[..20].iter().map(|&i| (logits[i] - qlogits[i]).abs()).fold(0f32, f32::max);
            let same = tokens.iter().zip(&qtokens).take_while(|(a, b)| a == b).count();
            println!(
                "{name} {:?}: q8_0 top-20 first-step logits within {err:.2e} of f32; greedy equal for {same} of 16 tokens{}",
                case["text"],
                if same < 16 { format!(" (first difference: {} vs {})", qtokens[same], tokens[same]) } else { String::new() }
            );
            assert!(err < 1.0, "{name}: q8_0 logits differ from f32 by {err}");
            // Its first choice is the f32 model's, or a near-tie of it.
            let best = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert!(
                best - logits[qtokens[0] as usize] < 0.5,
                "{name}: q8_0's first token is {} below f32's best",
                best - logits[qtokens[0] as usize]
            );
            if let Some(gguf_q8) = &gguf_q8 {
                let (glogits, gtokens) = greedy(gguf_q8, &ids, 16);
                let gerr = top[..20].iter().map(|&i| (glogits[i] - qlogits[i]).abs()).fold(0f32, f32::max);
                println!(
                    "{name} {:?}: the GGUF as Q8_0 and the HF checkpoint at q8_0: top-20 logits within {gerr:.1e}, greedy equal {}",
                    case["text"],
                    gtokens == qtokens
                );
                assert_eq!(gtokens, qtokens, "{name}: greedy text of the HF checkpoint at q8_0 differs from the GGUF's Q8_0");
            }
        }
        // Gemma's f32 checkpoint is 1 GB: one on disk at a time.
        std::fs::remove_dir_all(&hf).unwrap();
    }
}
