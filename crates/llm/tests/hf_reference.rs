//! The decoder against HF transformers on tiny random checkpoints
//! (data/fixtures/llm, made by scripts/fixtures/make_llm_fixtures.py).

use std::{collections::HashMap, path::PathBuf};

use candle_core::{DType, Device, Tensor, D};
use wrpo_llm::{grad::GradBuffer, sampling::argmax, KvCache, LoadOptions, Model, Trainable};

const FAMILIES: [&str; 8] = ["llama", "llama_tied", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"];

fn fixture(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/fixtures/llm").join(family)
}

struct Expected {
    ids: Tensor,
    mask: Tensor,
    logits: Tensor,
    logits_row1: Tensor,
    /// transformers' greedy generate() continuations of rows 0 and 1.
    greedy: [Vec<u32>; 2],
}

fn expected(family: &str) -> Expected {
    let t = candle_core::safetensors::load(fixture(family).join("expected.safetensors"), &Device::Cpu).unwrap();
    Expected {
        ids: t["input_ids"].to_dtype(DType::U32).unwrap(),
        mask: t["attention_mask"].to_dtype(DType::U32).unwrap(),
        logits: t["logits"].clone(),
        logits_row1: t["logits_row1"].clone(),
        greedy: ["greedy_row0", "greedy_row1"].map(|k| t[k].to_dtype(DType::U32).unwrap().to_vec1().unwrap()),
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn logits_match_transformers_with_and_without_padding() {
    for family in FAMILIES {
        let model = Model::load(&fixture(family), &LoadOptions::trainable(DType::F32)).unwrap();
        let e = expected(family);
        let logits = model.forward(&e.ids, &e.mask).unwrap();
        let real = e.logits_row1.dim(1).unwrap();
        // Row 0 is all real tokens; row 1 is padded after `real` tokens, whose
        // logits are meaningless in both implementations.
        let err0 = max_abs_diff(&logits.get(0).unwrap(), &e.logits.get(0).unwrap());
        let err1 = max_abs_diff(&logits.get(1).unwrap().narrow(0, 0, real).unwrap(), &e.logits.get(1).unwrap().narrow(0, 0, real).unwrap());
        // Row 1 alone, without padding.
        let ids1 = e.ids.narrow(0, 1, 1).unwrap().narrow(1, 0, real).unwrap();
        let alone = model.forward(&ids1, &Tensor::ones_like(&ids1).unwrap()).unwrap();
        let err_alone = max_abs_diff(&alone, &e.logits_row1);
        println!("{family}: max abs error {err0:.2e} (row 0), {err1:.2e} (padded row 1), {err_alone:.2e} (row 1 alone)");
        for err in [err0, err1, err_alone] {
            assert!(err <= 1e-4, "{family}: logits differ from transformers by {err}");
        }
    }
}

/// The real tokens of both fixture rows: 12 and 7 tokens.
fn prompts(e: &Expected) -> Vec<Vec<u32>> {
    let ids = e.ids.to_vec2::<u32>().unwrap();
    let mask = e.mask.to_vec2::<u32>().unwrap();
    ids.iter().zip(&mask).map(|(r, m)| r.iter().zip(m).filter(|(_, &m)| m == 1).map(|(&t, _)| t).collect()).collect()
}

#[test]
fn greedy_decoding_with_the_cache_matches_transformers_generate() {
    for family in FAMILIES {
        let model = Model::load(&fixture(family), &LoadOptions::trainable(DType::F32)).unwrap();
        let e = expected(family);
        let prompts = prompts(&e);
        // Both rows decode together from different lengths (12 and 7).
        let mut cache = KvCache::new(&model, 2, 64).unwrap();
        let mut next: Vec<u32> =
            prompts.iter().enumerate().map(|(slot, p)| argmax(&model.prefill(&mut cache, slot, p).unwrap().to_vec1().unwrap())).collect();
        let mut generated = [vec![], vec![]];
        for step in 0..32 {
            for (g, &t) in generated.iter_mut().zip(&next) {
                g.push(t);
            }
            if step < 31 {
                let logits = model.decode(&mut cache, &next).unwrap().to_vec2::<f32>().unwrap();
                next = logits.iter().map(|l| argmax(l)).collect();
            }
        }
        assert_eq!(cache.len(0), 12 + 31);
        assert_eq!(cache.len(1), 7 + 31);
        for (r, (ours, theirs)) in generated.iter().zip(&e.greedy).enumerate() {
            assert_eq!(ours, theirs, "{family}: row {r} differs from generate()");
        }
    }
}

#[test]
fn cached_decoding_equals_full_recomputation() {
    for family in FAMILIES {
        let model = Model::load(&fixture(family), &LoadOptions::trainable(DType::F32)).unwrap();
        let e = expected(family);
        // Each row: its prompt then its greedy continuation; a shared prefix
        // copied into a third slot must continue the same way.
        let rows: Vec<Vec<u32>> = prompts(&e).into_iter().zip(&e.greedy).map(|(p, g)| [p, g[..20].to_vec()].concat()).collect();
        let mut cache = KvCache::new(&model, 3, 40).unwrap();
        model.prefill(&mut cache, 0, &rows[0][..12]).unwrap();
        model.prefill(&mut cache, 1, &rows[1][..3]).unwrap();
        model.prefill(&mut cache, 1, &rows[1][3..7]).unwrap(); // a prefill in two pieces
        cache.copy_slot(1, 2).unwrap();
        let mut stepped: Vec<Vec<Vec<f32>>> = vec![vec![]; 3];
        for i in 0..12 {
            let tokens = [rows[0][12 + i], rows[1][7 + i], rows[1][7 + i]];
            for (s, l) in model.decode(&mut cache, &tokens).unwrap().to_vec2::<f32>().unwrap().into_iter().enumerate() {
                stepped[s].push(l);
            }
        }
        for (slot, row, start) in [(0, 0, 12), (1, 1, 7), (2, 1, 7)] {
            let ids = Tensor::new(&rows[row][..start + 12], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            let full = model.forward(&ids, &Tensor::ones_like(&ids).unwrap()).unwrap().squeeze(0).unwrap();
            for (i, l) in stepped[slot].iter().enumerate() {
                let want = full.get(start + i).unwrap();
                let err = max_abs_diff(&Tensor::new(l.as_slice(), &Device::Cpu).unwrap(), &want);
                assert!(err <= 1e-4, "{family} slot {slot} step {i}: cached logits differ by {err}");
            }
        }
    }
}

/// Each fixture row's real tokens as (prompt, response): the first three
/// tokens are the prompt.
fn sequences(e: &Expected) -> Vec<(Vec<u32>, Vec<u32>)> {
    let (ids, mask) = (e.ids.to_vec2::<u32>().unwrap(), e.mask.to_vec2::<u32>().unwrap());
    ids.iter()
        .zip(&mask)
        .map(|(row, m)| {
            let real = m.iter().filter(|&&x| x == 1).count();
            (row[..3].to_vec(), row[3..real].to_vec())
        })
        .collect()
}

/// Both rows' responses after row 0's prompt, and row 1 whole: two
/// sequences share a prompt, which the packed forward computes once.
fn shared(e: &Expected) -> Vec<(Vec<u32>, Vec<u32>)> {
    let s = sequences(e);
    vec![s[0].clone(), (s[0].0.clone(), s[1].1.clone()), s[1].clone()]
}

fn borrowed(seqs: &[(Vec<u32>, Vec<u32>)]) -> Vec<(&[u32], &[u32])> {
    seqs.iter().map(|(p, r)| (p.as_slice(), r.as_slice())).collect()
}

#[test]
fn every_trainable_variable_gets_a_finite_nonzero_gradient() {
    for family in FAMILIES {
        let model = Model::load(&fixture(family), &LoadOptions::trainable(DType::F32)).unwrap();
        let e = expected(family);
        let logp = model.response_logprobs(&borrowed(&shared(&e))).unwrap();
        let grads = logp.sum_all().unwrap().backward().unwrap();
        let vars = model.vars();
        assert!(vars.len() > 10, "{family}: only {} variables", vars.len());
        for (name, var) in vars {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{family}: {name} has no gradient"));
            let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
            assert!(norm.is_finite() && norm > 0.0, "{family}: gradient of {name} has norm {norm}");
        }
    }
}

/// With a gradient buffer attached to every variable's slot, as the
/// optimizer attaches them, the training ops add their weights' gradients into the
/// buffers and give candle none: what a buffer holds plus what candle still
/// has (biases) equals candle's gradient without buffers, summed over two
/// backward passes as over two micro-batches, for every family.
#[test]
fn gradient_buffers_receive_the_gradients_candle_would_hold() {
    for family in FAMILIES {
        let model = Model::load(&fixture(family), &LoadOptions::trainable(DType::F32)).unwrap();
        let seqs = shared(&expected(family));
        let backward = || model.response_logprobs(&borrowed(&seqs)).unwrap().sum_all().unwrap().backward().unwrap();
        let want = backward();
        let vars = model.trainable();
        let buffers: Vec<_> = vars
            .iter()
            .map(|p| {
                let buffer = GradBuffer::new(p.var.elem_count());
                p.grad.attach(buffer.clone());
                buffer
            })
            .collect();
        let got = [backward(), backward()];
        for (Trainable { name, var, grad: slot }, buffer) in vars.iter().zip(&buffers) {
            slot.detach();
            let in_candle: Vec<&Tensor> = got.iter().filter_map(|g| g.get(var.as_tensor())).collect();
            // The matrices, the embedding and the norms take the direct path.
            if var.rank() == 2 || name.ends_with("norm.weight") {
                assert!(buffer.take_received() && in_candle.is_empty(), "{family}: {name}'s gradient went through candle");
            }
            let mut sum = Tensor::from_slice(&buffer.lock(), var.shape(), &Device::Cpu).unwrap();
            for g in in_candle {
                sum = (sum + g).unwrap();
            }
            let twice = (want.get(var.as_tensor()).unwrap() * 2.0).unwrap();
            let scale = twice.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            let err = (&sum - &twice).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(err <= 1e-5 * scale + 1e-7, "{family}: {name}'s gradient differs by {err} (largest {scale})");
        }
    }
}

#[test]
fn response_logprobs_sum_the_response_tokens_log_softmax() {
    let family = "qwen2";
    let model = Model::load(&fixture(family), &LoadOptions::trainable(DType::F32)).unwrap();
    let e = expected(family);
    let seqs = sequences(&e);
    let got = model.response_logprobs(&borrowed(&seqs)).unwrap().to_vec1::<f32>().unwrap();
    // Against the full-vocabulary log-softmax of transformers' logits.
    let logp = candle_nn::ops::log_softmax(&e.logits, D::Minus1).unwrap();
    for (b, (prompt, response)) in seqs.iter().enumerate() {
        let mut want = 0f32;
        for (j, &token) in response.iter().enumerate() {
            want += logp.get(b).unwrap().get(prompt.len() + j - 1).unwrap().get(token as usize).unwrap().to_scalar::<f32>().unwrap();
        }
        assert!((got[b] - want).abs() < 1e-3, "row {b}: {} vs {want}", got[b]);
    }
}

/// Sequences packed after one shared prompt give the log-probs and the
/// gradients that each computed alone gives, for every family (Gemma's
/// sliding windows and soft-capping included).
#[test]
fn a_shared_prompt_computed_once_changes_no_log_prob_or_gradient() {
    for family in FAMILIES {
        let model = Model::load(&fixture(family), &LoadOptions::trainable(DType::F64)).unwrap();
        let seqs = shared(&expected(family));
        let packed = model.response_logprobs(&borrowed(&seqs)).unwrap();
        let alone: Vec<Tensor> = seqs.iter().map(|(p, r)| model.response_logprobs(&[(p, r)]).unwrap()).collect();
        let alone = Tensor::cat(&alone, 0).unwrap();
        let err = (&packed - &alone).unwrap().abs().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
        assert!(err < 1e-9, "{family}: packed log-probs differ from separate ones by {err}");
        let (g_packed, g_alone) = (packed.sum_all().unwrap().backward().unwrap(), alone.sum_all().unwrap().backward().unwrap());
        for (name, var) in model.vars() {
            let (a, b) = (g_packed.get(var.as_tensor()).unwrap(), g_alone.get(var.as_tensor()).unwrap());
            let err = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
            assert!(err < 1e-9, "{family}: the gradient of {name} differs by {err}");
        }
    }
}

#[test]
fn backward_agrees_with_finite_differences() {
    // f64 so that central differences are accurate to ~1e-8.
    for family in ["llama", "gemma2", "gemma3", "phi3", "qwen3"] {
        let model = Model::load(&fixture(family), &LoadOptions::trainable(DType::F64)).unwrap();
        let e = expected(family);
        let seqs = shared(&e);
        let f = || model.response_logprobs(&borrowed(&seqs)).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        let grads = model.response_logprobs(&borrowed(&seqs)).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, var) in model
            .vars()
            .into_iter()
            .filter(|(n, _)| n.contains("layers.0.") && (n.ends_with("norm.weight") || n.contains("proj")) || n.starts_with("model.embed"))
        {
            let analytic = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            // The element with the largest gradient, so the check is not vacuous.
            let k = (0..analytic.len()).max_by(|&a, &b| analytic[a].abs().total_cmp(&analytic[b].abs())).unwrap();
            let original = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let eps = 1e-5;
            let at = |delta: f64| {
                let mut w = original.clone();
                w[k] += delta;
                var.set(&Tensor::from_vec(w, var.shape(), &Device::Cpu).unwrap()).unwrap();
                f()
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            var.set(&Tensor::from_vec(original.clone(), var.shape(), &Device::Cpu).unwrap()).unwrap();
            let tol = 1e-6 + 1e-4 * analytic[k].abs();
            assert!((numeric - analytic[k]).abs() < tol, "{family} {name}[{k}]: backward {} vs finite difference {numeric}", analytic[k]);
        }
    }
}

/// A temporary model folder with `family`'s config.json, and the fixture's
/// tensors for the test to write back altered.
fn rewritable_fixture(family: &str) -> (tempfile::TempDir, HashMap<String, Tensor>) {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture(family);
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    (dir, candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap())
}

#[test]
fn a_missing_or_misshapen_tensor_is_named() {
    let (dir, tensors) = rewritable_fixture("llama");
    let mut partial = tensors.clone();
    partial.remove("model.layers.1.mlp.up_proj.weight");
    candle_core::safetensors::save(&partial, dir.path().join("model.safetensors")).unwrap();
    let err = format!("{:#}", Model::load(dir.path(), &LoadOptions::trainable(DType::F32)).err().unwrap());
    assert!(err.contains("tensor 'model.layers.1.mlp.up_proj.weight' is missing"), "{err}");

    let mut bad = tensors;
    bad.insert("model.norm.weight".into(), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap());
    candle_core::safetensors::save(&bad, dir.path().join("model.safetensors")).unwrap();
    let err = format!("{:#}", Model::load(dir.path(), &LoadOptions::trainable(DType::F32)).err().unwrap());
    assert!(err.contains("tensor 'model.norm.weight' has shape [3], expected [64]"), "{err}");
}

#[test]
fn a_tied_checkpoint_shipping_lm_head_trains_and_saves_no_stale_copy() {
    let (dir, mut tensors) = rewritable_fixture("llama_tied");
    let embed = tensors["model.embed_tokens.weight"].clone();
    tensors.insert("lm_head.weight".into(), (embed.clone() * 3.0).unwrap());
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    let model = Model::load(dir.path(), &LoadOptions::trainable(DType::F32)).unwrap();
    assert!(model.vars().iter().all(|(n, _)| *n != "lm_head.weight"), "the stale head is a variable");
    // The head is the embedding: the logits are those of the fixture (row 0 has no padding).
    let e = expected("llama_tied");
    let got = model.forward(&e.ids, &e.mask).unwrap();
    assert!(max_abs_diff(&got.get(0).unwrap(), &e.logits.get(0).unwrap()) <= 1e-4);
}

#[test]
fn bf16_checkpoints_load_as_f32() {
    let (dir, tensors) = rewritable_fixture("qwen3");
    let bf16: HashMap<_, _> = tensors.iter().map(|(k, v)| (k.clone(), v.to_dtype(DType::BF16).unwrap())).collect();
    candle_core::safetensors::save(&bf16, dir.path().join("model.safetensors")).unwrap();
    let model = Model::load(dir.path(), &LoadOptions::trainable(DType::F32)).unwrap();
    let e = expected("qwen3");
    let logits = model.forward(&e.ids, &e.mask).unwrap();
    assert_eq!(logits.dtype(), DType::F32);
    // bf16 rounding of the weights moves the logits a little, not a lot.
    let err = max_abs_diff(&logits.get(0).unwrap(), &e.logits.get(0).unwrap());
    assert!(err > 0.0 && err < 0.5, "{err}");
}

#[test]
fn sharded_checkpoints_load_through_their_index() {
    let (dir, tensors) = rewritable_fixture("gemma3");
    let mut names: Vec<_> = tensors.keys().cloned().collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (i, chunk) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let part: HashMap<_, _> = chunk.iter().map(|n| (n.clone(), tensors[n].clone())).collect();
        candle_core::safetensors::save(&part, dir.path().join(&file)).unwrap();
        for n in chunk {
            weight_map.insert(n.clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    let e = expected("gemma3");
    let sharded = Model::load(dir.path(), &LoadOptions::trainable(DType::F32)).unwrap().forward(&e.ids, &e.mask).unwrap();
    let whole = Model::load(&fixture("gemma3"), &LoadOptions::trainable(DType::F32)).unwrap().forward(&e.ids, &e.mask).unwrap();
    assert_eq!(max_abs_diff(&sharded, &whole), 0.0);
}

/// Greedy continuation of `prompt` through the KV cache.
fn greedy(model: &Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = KvCache::new(model, 1, prompt.len() + n).unwrap();
    let mut next = argmax(&model.prefill(&mut cache, 0, prompt).unwrap().to_vec1().unwrap());
    let mut out = vec![next];
    while out.len() < n {
        next = argmax(&model.decode(&mut cache, &[next]).unwrap().get(0).unwrap().to_vec1().unwrap());
        out.push(next);
    }
    out
}

#[test]
fn gguf_files_match_transformers_own_gguf_loader() {
    let dir = fixture("gguf");
    for name in ["llama", "gemma3"] {
        let model = Model::load(&dir.join(format!("{name}.gguf")), &LoadOptions::trainable(DType::F32)).unwrap();
        let t = candle_core::safetensors::load(dir.join(format!("{name}.expected.safetensors")), &Device::Cpu).unwrap();
        let (ids, mask) = (t["input_ids"].to_dtype(DType::U32).unwrap(), t["attention_mask"].to_dtype(DType::U32).unwrap());
        let logits = model.forward(&ids, &mask).unwrap();
        let real = mask.get(1).unwrap().sum_all().unwrap().to_scalar::<u32>().unwrap() as usize;
        let err = max_abs_diff(&logits.get(0).unwrap(), &t["logits"].get(0).unwrap())
            .max(max_abs_diff(&logits.get(1).unwrap().narrow(0, 0, real).unwrap(), &t["logits"].get(1).unwrap().narrow(0, 0, real).unwrap()));
        println!("{name}.gguf: max abs error {err:.2e}");
        assert!(err <= 1e-4, "{name}.gguf: logits differ from transformers' by {err}");
        let prompt = &ids.get(1).unwrap().to_vec1::<u32>().unwrap()[..real];
        let want: Vec<u32> = t["greedy_row1"].to_dtype(DType::U32).unwrap().to_vec1().unwrap();
        assert_eq!(greedy(&model, prompt, want.len()), want, "{name}.gguf: greedy continuation");

        // The Q8_0 file dequantizes to nearly the same model.
        let q8 = Model::load(&dir.join(format!("{name}.q8_0.gguf")), &LoadOptions::trainable(DType::F32)).unwrap();
        let err = max_abs_diff(&q8.forward(&ids, &mask).unwrap().get(0).unwrap(), &logits.get(0).unwrap());
        assert!(err > 0.0 && err < 0.25, "{name}.q8_0.gguf: logits moved by {err}");
    }
}

#[test]
fn a_llama_gguf_holds_exactly_the_hf_weights_once_q_and_k_are_unpermuted() {
    let hf = Model::load(&fixture("llama_tied"), &LoadOptions::trainable(DType::F32)).unwrap();
    let gguf = Model::load(&fixture("gguf").join("llama.gguf"), &LoadOptions::trainable(DType::F32)).unwrap();
    assert_eq!(gguf.config, hf.config);
    let (a, b) = (hf.vars(), gguf.vars());
    assert_eq!(a.iter().map(|v| v.0).collect::<Vec<_>>(), b.iter().map(|v| v.0).collect::<Vec<_>>());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert_eq!(max_abs_diff(x.as_tensor(), y.as_tensor()), 0.0, "{name}");
    }
}

#[test]
fn the_quantized_inference_path_follows_the_dequantized_model() {
    for name in ["llama", "gemma3"] {
        let path = fixture("gguf").join(format!("{name}.q8_0.gguf"));
        let dense = Model::load(&path, &LoadOptions::trainable(DType::F32)).unwrap();
        let quantized = Model::load(&path, &LoadOptions::quantized(None)).unwrap();
        let e = expected(if name == "llama" { "llama_tied" } else { "gemma3" });
        let prompt = &prompts(&e)[0];
        let mut cache = KvCache::new(&quantized, 1, 64).unwrap();
        let first = quantized.prefill(&mut cache, 0, prompt).unwrap();
        let ids = Tensor::new(prompt.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let want = dense.forward(&ids, &Tensor::ones_like(&ids).unwrap()).unwrap().get(0).unwrap().get(prompt.len() - 1).unwrap();
        // Activations are quantized to 8 bits inside the quantized matmul.
        let err = max_abs_diff(&first, &want);
        assert!(err > 0.0 && err < 0.1, "{name}: quantized logits differ by {err}");
        let steps = greedy(&quantized, prompt, 8);
        assert_eq!(steps[0], argmax(&want.to_vec1::<f32>().unwrap()), "{name}: first greedy token");
        // Its projections are not variables: saving it would lose them.
        let tokenizer = wrpo_llm::Tokenizer::from_hf_dir(&fixture("../tokenizer/tiny-bpe")).unwrap();
        let out = tempfile::tempdir().unwrap();
        let err = wrpo_llm::save_hf_checkpoint(&quantized, &tokenizer, None, &out.path().join("ckpt")).unwrap_err();
        assert!(err.to_string().contains("cannot be saved"), "{err}");
        assert!(!out.path().join("ckpt").exists());
    }
}

#[test]
fn a_gguf_rope_scaling_we_do_not_implement_is_refused_by_name() {
    use candle_core::quantized::gguf_file::{self, Value};
    let src = fixture("gguf").join("llama.gguf");
    let mut reader = std::io::BufReader::new(std::fs::File::open(&src).unwrap());
    let content = gguf_file::Content::read(&mut reader).unwrap();
    let tensors: Vec<(String, candle_core::quantized::QTensor)> =
        content.tensor_infos.keys().map(|n| (n.clone(), content.tensor(&mut reader, n, &Device::Cpu).unwrap())).collect();
    let arch = content.metadata["general.architecture"].to_string().unwrap().clone();
    let yarn = Value::String("yarn".into());
    let mut metadata: Vec<(&str, &Value)> = content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let key = format!("{arch}.rope.scaling.type");
    metadata.push((&key, &yarn));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("yarn.gguf");
    let mut out = std::fs::File::create(&path).unwrap();
    gguf_file::write(&mut out, &metadata, &tensors.iter().map(|(n, t)| (n.as_str(), t)).collect::<Vec<_>>()).unwrap();
    drop(out);
    let err = format!("{:#}", Model::load(&path, &LoadOptions::trainable(DType::F32)).err().unwrap());
    assert!(err.contains("unsupported rope type 'yarn'"), "{err}");
}
