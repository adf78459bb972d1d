#!/usr/bin/env bash
# Sampling throughput, side by side in one run (make bench-sample):
# SmolLM2-135M-Instruct Q4_1, 16 prompts x 5 samples x up to 128 new tokens,
# temperature 0.8, top-p 0.95, 2 threads, against
#   - llama.cpp (llama-cpp-python) making the samples one after another,
#   - llama.cpp's own batched decoding (C API, 5 sequences sharing a prompt),
#   - transformers generate(num_return_sequences=5) on the f32 safetensors
#     of the same model (exported from the GGUF by our save_hf example).
# Needs: make models, and a Python with scripts/bench/requirements.txt
# (PYTHON picks it: default .venv/bin/python if present, else python3).
# Ratios are what to read: absolute speeds vary a lot with machine load.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${MODEL:-models/smollm2-135m-instruct-q4_1.gguf}
PROMPTS=${PROMPTS:-16} N=${N:-5} MAX_NEW=${MAX_NEW:-128} BATCH=${BATCH:-16}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export RAYON_NUM_THREADS=2 CANDLE_NUM_THREADS=2
cargo build --release -q --workspace --bins --examples
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
head -n "$PROMPTS" data/demo/prompts.jsonl > "$work/prompts.jsonl"
target/release/wrpo-sample import --input "$work/prompts.jsonl" --out "$work/prompts.parquet" 2>/dev/null
results="$work/results.jsonl"

target/release/wrpo-sample generate --prompts "$work/prompts.parquet" --model "smollm2=$MODEL" --out "$work/samples" \
  --n "$N" --max-new-tokens "$MAX_NEW" --temperature 0.8 --top-p 0.95 --threads 2 --batch-size "$BATCH" 2> "$work/ours.log"
"$PYTHON" - "$work/ours.log" >> "$results" <<'PY'
import json, re, sys
m = re.search(r"made (\d+) samples, (\d+) new tokens in ([\d.]+) s", open(sys.argv[1]).read())
samples, tokens, secs = int(m[1]), int(m[2]), float(m[3])
print(json.dumps({"engine": "wrpo-sample", "samples": samples, "new_tokens": tokens, "seconds": secs,
                  "tokens_per_s": round(tokens / secs, 1)}))
PY
tail -n1 "$results"
for mode in llama-sequential llama-batched; do
  "$PYTHON" scripts/bench/sample_peers.py "$mode" "$MODEL" "$work/prompts.jsonl" "$N" "$MAX_NEW" 2>/dev/null | tee -a "$results"
done
target/release/examples/save_hf "$MODEL" "$work/hf" > /dev/null
"$PYTHON" scripts/bench/sample_peers.py hf "$work/hf" "$work/prompts.jsonl" "$N" "$MAX_NEW" 2>/dev/null | tee -a "$results"

"$PYTHON" - "$results" <<'PY'
import json, sys
rows = {r["engine"]: r for r in map(json.loads, open(sys.argv[1]))}
ours = rows.pop("wrpo-sample")["tokens_per_s"]
for engine, r in rows.items():
    print(f"wrpo-sample {ours:.1f} tokens/s = {ours / r['tokens_per_s']:.2f}x {engine} ({r['tokens_per_s']:.1f})")
PY
