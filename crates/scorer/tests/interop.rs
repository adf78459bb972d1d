//! Interop with the GPU world: scored data in the shape of
//! princeton-nlp/llama3-ultrafeedback-armorm imported by `wrpo-sample
//! import-scored`, through `sft-set` and `pairs`, exported for the official
//! WRPO recipe and for TRL.

use std::{path::Path, process::Command};

use serde_json::{json, Value};
use wrpo_common::{pairs::Pair, prompts::Prompt, read_dataset, write_dataset, Provenance};
use wrpo_sampler::import::{import_prompts, import_scored, ImportOptions};

fn write_jsonl(path: &Path, rows: &[Value]) {
    std::fs::write(path, rows.iter().map(|r| r.to_string() + "\n").collect::<String>()).unwrap();
}

fn wrpo_score(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_wrpo-score")).args(args).output().unwrap();
    assert!(out.status.success(), "wrpo-score {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn imported_scores_give_the_pairs_picked_by_hand_and_export_to_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    // Two prompts; a source model and a target model, three responses each.
    let source = [
        json!({"prompt_id": "a", "prompt": "Capital of France?", "all_generated_responses": ["Lyon.", "Paris.", "Nice."], "all_rm_scores": [0.2, 0.9, 0.1]}),
        json!({"prompt_id": "b", "prompt": "2+2?", "all_generated_responses": ["4", "5", "four"], "all_rm_scores": [0.8, -1.0, 0.85]}),
    ];
    let target = [
        json!({"prompt_id": "a", "prompt": "Capital of France?", "all_generated_responses": ["Paris", "Marseille", "paris!"], "all_rm_scores": [0.7, -0.5, 0.6]}),
        json!({"prompt_id": "b", "prompt": "2+2?", "all_generated_responses": ["22", "4.", "3"], "all_rm_scores": [-0.9, 0.5, -0.2]}),
    ];
    write_jsonl(Path::new(&p("source.jsonl")), &source);
    write_jsonl(Path::new(&p("target.jsonl")), &target);
    let prov = Provenance::new("test", &json!({})).unwrap();
    let prompts = import_prompts(Path::new(&p("source.jsonl")), &ImportOptions::default()).unwrap().prompts;
    write_dataset::<Prompt>(Path::new(&p("prompts.parquet")), &prompts, &prov).unwrap();
    for (file, model) in [("source.jsonl", "llama3"), ("target.jsonl", "target")] {
        let imported = import_scored(Path::new(&p(file)), model, "ArmoRM").unwrap();
        assert!(imported.rejected.is_empty());
        write_dataset(Path::new(&p(&format!("{model}-scores.parquet"))), &imported.scored, &prov).unwrap();
    }
    wrpo_score(&[
        "sft-set",
        "--prompts",
        &p("prompts.parquet"),
        "--source-scores",
        &p("llama3-scores.parquet"),
        "--sft-fraction",
        "0",
        "--out",
        &p("sft.parquet"),
        "--out-preference",
        &p("pref.parquet"),
    ]);
    wrpo_score(&[
        "pairs",
        "--prompts",
        &p("pref.parquet"),
        "--source-scores",
        &p("llama3-scores.parquet"),
        "--target-scores",
        &p("target-scores.parquet"),
        "--out",
        &p("pairs.parquet"),
    ]);
    let mut pairs = read_dataset::<Pair>(Path::new(&p("pairs.parquet"))).unwrap();
    pairs.sort_by(|x, y| x.prompt_id.cmp(&y.prompt_id));
    let picked: Vec<(&str, &str, &str, &str)> =
        pairs.iter().map(|q| (q.prompt_id.as_str(), q.y_ws.as_str(), q.y_wt.as_str(), q.y_l.as_str())).collect();
    assert_eq!(picked, [("a", "Paris.", "Paris", "Marseille"), ("b", "four", "4.", "22")]);

    // The official recipe's shape: chosen = [y_ws, y_wt], rejected = [y_l].
    wrpo_score(&["export", "--pairs", &p("pairs.parquet"), "--format", "wrpo", "--out", &p("wrpo.jsonl")]);
    let rows: Vec<Value> = std::fs::read_to_string(p("wrpo.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let first = rows.iter().find(|r| r["prompt_id"] == "a").unwrap();
    assert_eq!(first["prompt"], json!([{"role": "user", "content": "Capital of France?"}]));
    assert_eq!(first["chosen"], json!([{"role": "assistant", "content": "Paris."}, {"role": "assistant", "content": "Paris"}]));
    assert_eq!(first["rejected"], json!([{"role": "assistant", "content": "Marseille"}]));

    // TRL's conversational preference shape, chosen = y_ws or y_wt; Parquet too.
    for (chosen, want) in [("source", "four"), ("target", "4.")] {
        let out = p(&format!("trl-{chosen}.jsonl"));
        wrpo_score(&["export", "--pairs", &p("pairs.parquet"), "--format", "trl", "--chosen", chosen, "--out", &out]);
        let rows: Vec<Value> = std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let b = rows.iter().find(|r| r["prompt"][0]["content"] == "2+2?").unwrap();
        assert_eq!(b.as_object().unwrap().keys().collect::<Vec<_>>(), ["chosen", "prompt", "rejected"]);
        assert_eq!((b["chosen"][0]["content"].as_str(), b["rejected"][0]["content"].as_str()), (Some(want), Some("22")));
    }
    wrpo_score(&["export", "--pairs", &p("pairs.parquet"), "--format", "trl", "--out", &p("trl.parquet")]);
    assert_eq!(read_dataset::<wrpo_common::export::TrlExample>(Path::new(&p("trl.parquet"))).unwrap().len(), 2);
    let bad = Command::new(env!("CARGO_BIN_EXE_wrpo-score"))
        .args(["export", "--pairs", &p("pairs.parquet"), "--format", "trl", "--out", &p("trl.csv")])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains(".parquet or .jsonl"));
}
