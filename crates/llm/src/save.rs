//! Write a model as an HF checkpoint that transformers loads:
//! config.json, model.safetensors (sharded with an index above 5 GB),
//! tokenizer.json, tokenizer_config.json with the chat template, and
//! generation_config.json. The folder appears whole or not at all.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use serde_json::{json, Value};

use crate::{Model, Tokenizer};

/// transformers' default shard size.
const MAX_SHARD_BYTES: usize = 5_000_000_000;

pub fn save_hf_checkpoint(model: &Model, tokenizer: &Tokenizer, chat_template: Option<&str>, dir: &Path) -> Result<()> {
    if model.has_quantized() {
        anyhow::bail!("a model loaded for quantized inference cannot be saved as an HF checkpoint; load it with Model::load");
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let tmp = tempfile::Builder::new().prefix(".checkpoint-").tempdir_in(parent).with_context(|| format!("cannot write in {}", parent.display()))?;
    write_files(model, tokenizer, chat_template, tmp.path(), MAX_SHARD_BYTES)?;
    replace_dir(&tmp.keep(), dir)
}

/// `dir.old`: where [`replace_dir`] sets the folder it replaces aside.
pub fn set_aside(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".old");
    dir.with_file_name(name)
}

/// Move the finished folder `new` to `dir`, replacing what is there so that
/// a crash at any point leaves the old folder or the new one whole: the old
/// one is set aside (as `dir.old`) before the new one moves in, and deleted
/// only after. If an earlier crash left only `dir.old`, that is the old one.
pub fn replace_dir(new: &Path, dir: &Path) -> Result<()> {
    let old = set_aside(dir);
    if dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).with_context(|| format!("cannot delete {}", old.display()))?;
        }
        std::fs::rename(dir, &old).with_context(|| format!("cannot set {} aside", dir.display()))?;
    }
    std::fs::rename(new, dir).with_context(|| format!("cannot move {} to {}", new.display(), dir.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).with_context(|| format!("cannot delete {}", old.display()))?;
    }
    Ok(())
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)? + "\n").with_context(|| format!("cannot write {}", path.display()))
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        DType::F64 => "float64",
        _ => "float32",
    }
}

fn write_files(model: &Model, tokenizer: &Tokenizer, chat_template: Option<&str>, dir: &Path, max_shard_bytes: usize) -> Result<()> {
    let vars = model.vars();
    let dtype = vars.first().map_or(DType::F32, |(_, v)| v.dtype());
    let mut config = model.hf_config.clone();
    config["torch_dtype"] = dtype_name(dtype).into();
    config["dtype"] = dtype_name(dtype).into();
    write_json(&dir.join("config.json"), &config)?;

    // Shards of whole tensors, in name order, each under max_shard_bytes
    // unless one tensor alone is larger.
    let mut shards: Vec<Vec<(&str, Tensor)>> = vec![vec![]];
    let mut bytes = 0;
    for (name, var) in &vars {
        let size = var.elem_count() * var.dtype().size_in_bytes();
        if bytes + size > max_shard_bytes && !shards.last().unwrap().is_empty() {
            shards.push(vec![]);
            bytes = 0;
        }
        bytes += size;
        shards.last_mut().unwrap().push((name, var.as_tensor().clone()));
    }
    let total: usize = vars.iter().map(|(_, v)| v.elem_count() * v.dtype().size_in_bytes()).sum();
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    if shards.len() == 1 {
        let path = dir.join("model.safetensors");
        safetensors::serialize_to_file(shards.remove(0), metadata, &path).with_context(|| format!("cannot write {}", path.display()))?;
    } else {
        let n = shards.len();
        let mut weight_map = serde_json::Map::new();
        for (i, shard) in shards.into_iter().enumerate() {
            let file = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
            for (name, _) in &shard {
                weight_map.insert(name.to_string(), file.clone().into());
            }
            let path = dir.join(&file);
            safetensors::serialize_to_file(shard, metadata.clone(), &path).with_context(|| format!("cannot write {}", path.display()))?;
        }
        write_json(&dir.join("model.safetensors.index.json"), &json!({"metadata": {"total_size": total}, "weight_map": weight_map}))?;
    }

    write_json(&dir.join("tokenizer.json"), tokenizer.to_json())?;
    let token = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i)).map_or(Value::Null, Value::from);
    let mut tokenizer_config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token(tokenizer.bos_id),
        "eos_token": token(tokenizer.eos_id),
        "add_bos_token": tokenizer.add_bos,
        "add_eos_token": false,
        "model_max_length": model.config.max_position_embeddings,
    });
    if let Some(t) = chat_template {
        tokenizer_config["chat_template"] = t.into();
    }
    write_json(&dir.join("tokenizer_config.json"), &tokenizer_config)?;
    write_json(
        &dir.join("generation_config.json"),
        &json!({
            "bos_token_id": tokenizer.bos_id,
            "eos_token_id": tokenizer.stop_ids,
            "pad_token_id": model.hf_config.get("pad_token_id").cloned().unwrap_or(Value::Null),
        }),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn replacing_a_folder_leaves_the_old_or_the_new_one_whole() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("final");
        let folder = |name: &str, text: &str| {
            let p = root.path().join(name);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("model.safetensors"), text).unwrap();
            p
        };
        let read = |p: &Path| std::fs::read_to_string(p.join("model.safetensors")).unwrap();
        std::fs::rename(folder("first", "old"), &dir).unwrap();
        super::replace_dir(&folder("second", "new"), &dir).unwrap();
        assert_eq!(read(&dir), "new");
        assert!(!super::set_aside(&dir).exists());
        // A crash between setting the old one aside and moving the new one in
        // leaves the old one whole as final.old; the next save replaces it.
        std::fs::rename(&dir, super::set_aside(&dir)).unwrap();
        assert_eq!(read(&super::set_aside(&dir)), "new");
        super::replace_dir(&folder("third", "newer"), &dir).unwrap();
        assert_eq!(read(&dir), "newer");
        assert!(!super::set_aside(&dir).exists());
    }

    use super::*;
    use crate::LoadOptions;

    #[test]
    fn large_models_are_sharded_with_an_index_that_loads_back() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/fixtures");
        let model = Model::load(&root.join("llm/gemma3"), &LoadOptions::trainable(DType::F32)).unwrap();
        let tokenizer = Tokenizer::from_hf_dir(&root.join("tokenizer/tiny-bpe")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        write_files(&model, &tokenizer, None, dir.path(), 100_000).unwrap();
        let index: Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("model.safetensors.index.json")).unwrap()).unwrap();
        let files: std::collections::BTreeSet<_> = index["weight_map"].as_object().unwrap().values().map(|v| v.as_str().unwrap()).collect();
        assert!(files.len() >= 3, "{files:?}");
        assert!(!dir.path().join("model.safetensors").exists());
        let back = Model::load(dir.path(), &LoadOptions::trainable(DType::F32)).unwrap();
        for ((a, x), (b, y)) in model.vars().iter().zip(back.vars().iter()) {
            assert_eq!(a, b);
            assert_eq!((x.as_tensor() - y.as_tensor()).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        }
    }
}
