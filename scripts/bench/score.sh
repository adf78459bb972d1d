#!/usr/bin/env bash
# Reward scoring, side by side in one run (make bench-score): `wrpo-score
# score` against PyTorch transformers (score_peer.py) on the same
# sequence-classification model, SmolLM2-135M-Instruct's backbone (exported
# from the demo GGUF by save_hf) with a random one-label score head, scoring
# the same real samples (a third of the demo run's source samples, by
# --shard 0/3), 2 threads, each side batching as well as it can: ours at its
# default --batch-tokens, PyTorch sorted by length and padded under
# PEER_BATCH_TOKENS (1024 was its best of 1024, 2048, 4096 and 8192 here).
# Prints time, sequences/s, peak RSS, the ratio, and the largest reward
# difference between the two. Needs: make models, WORK/source-samples
# (make bench-score runs the sampler first), and a Python with torch,
# transformers and pyarrow (scripts/bench/requirements.txt; PYTHON picks it).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
WORK=${WORK:-runs/demo}
SHARD=${SHARD:-0/3}
PEER_BATCH_TOKENS=${PEER_BATCH_TOKENS:-1024}
export RAYON_NUM_THREADS=2 CANDLE_NUM_THREADS=2
cargo build --release -q --workspace --bins --examples
echo "cpu: $(target/release/examples/cpu)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
target/release/examples/save_hf models/smollm2-135m-instruct-q4_1.gguf "$work/lm" > /dev/null
"$PYTHON" - "$work/lm" "$work/rm" <<'PY'
# The backbone with a seeded random score head, as LlamaForSequenceClassification.
import json, os, shutil, sys
import torch
from safetensors.torch import load_file, save_file
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst)
for f in os.listdir(src):
    if f.startswith("tokenizer") or f.endswith(".jinja"):
        shutil.copy(os.path.join(src, f), dst)
config = json.load(open(os.path.join(src, "config.json")))
config.update(architectures=["LlamaForSequenceClassification"], id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0}, pad_token_id=0)
json.dump(config, open(os.path.join(dst, "config.json"), "w"), indent=2)
weights = {}
for f in sorted(os.listdir(src)):
    if f.endswith(".safetensors"):
        weights.update(load_file(os.path.join(src, f)))
weights.pop("lm_head.weight", None)
weights["score.weight"] = torch.randn(1, config["hidden_size"], generator=torch.Generator().manual_seed(0)) * 0.02
save_file(weights, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
PY
/usr/bin/time -f '%e %M' -o "$work/time" target/release/wrpo-score score --prompts "$WORK/prompts.parquet" --samples "$WORK/source-samples" \
  --reward "rm:$work/rm" --shard "$SHARD" --threads 2 --out "$work/ours" > /dev/null 2>&1
peer=$("$PYTHON" scripts/bench/score_peer.py "$work/rm" "$WORK/prompts.parquet" "$work/ours" "$PEER_BATCH_TOKENS" 2>/dev/null)
"$PYTHON" - "$(cat "$work/time")" "$peer" <<'PY'
import json, sys
seconds, rss_kb = map(float, sys.argv[1].split())
peer = json.loads(sys.argv[2])
n = peer["sequences"]
print(f"{n} sequences, {peer['tokens']} tokens (SmolLM2-135M backbone + score head, f32, 2 threads)")
print(f"wrpo-score  {seconds:7.1f} s  {n / seconds:6.2f} seq/s  peak RSS {rss_kb / 1024 ** 2:5.2f} GB  (whole command: load, tokenize, score, write)")
print(f"PyTorch     {peer['seconds']:7.1f} s  {peer['sequences_per_second']:6.2f} seq/s  peak RSS {peer['peak_rss_mb'] / 1024:5.2f} GB  (load, tokenize, score)")
print(f"speed ratio (ours / PyTorch sequences per second) {n / seconds / peer['sequences_per_second']:.2f}x; "
      f"largest reward difference {peer['max_abs_diff_from_ours']:.2e}")
PY
