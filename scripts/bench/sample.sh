#!/usr/bin/env bash
# Sampling throughput, side by side in one run (make bench-sample), 2 threads,
# up to 128 new tokens, temperature 0.8, top-p 0.95, BATCH=16 sequences:
#
# The source, SmolLM2-135M-Instruct Q4_1, 16 prompts x 5 samples, against
#   - llama.cpp (llama-cpp-python) making the samples one after another,
#   - llama.cpp's own batched decoding (C API, sampling in C, 3 prompts x 5
#     sequences at a time, each prompt's prefill shared),
#   - transformers generate(num_return_sequences=5) on the f32 safetensors
#     of the same model (exported from the GGUF by our save_hf example).
# The target, Gemma-3-270M Q4_K_M, 16 prompts x 4 samples, against
#   - llama.cpp batched (4 prompts x 4 sequences at a time),
#   - and our run of its f32 HF checkpoint (save_hf) with --quantize q8_0,
#     the form a model trained by wrpo-train takes.
# Needs: make models, and a Python with scripts/bench/requirements.txt
# (PYTHON picks it: default .venv/bin/python if present, else python3).
# Ratios are what to read: absolute speeds vary a lot with machine load.
# WRPO_ISA=avx2 (or scalar, avx512bw, avxvnni, avx512vnni) runs our int8 kernels at a
# lower tier than the CPU has, to measure a CPU without VNNI on one with it.
set -euo pipefail
cd "$(dirname "$0")/../.."
SOURCE=${SOURCE:-models/smollm2-135m-instruct-q4_1.gguf}
TARGET=${TARGET:-models/gemma-3-270m-q4_k_m.gguf}
PROMPTS=${PROMPTS:-16} MAX_NEW=${MAX_NEW:-128} BATCH=${BATCH:-16}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export RAYON_NUM_THREADS=2 CANDLE_NUM_THREADS=2
cargo build --release -q --workspace --bins --examples
echo "cpu: $(target/release/examples/cpu)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
head -n "$PROMPTS" data/demo/prompts.jsonl > "$work/prompts.jsonl"
target/release/wrpo-sample import --input "$work/prompts.jsonl" --out "$work/prompts.parquet" 2>/dev/null

# ours RESULTS ENGINE MODEL N [FLAGS...]: one wrpo-sample generate run, as a JSON line.
ours() {
  local results=$1 engine=$2 model=$3 n=$4 out="$work/samples-$RANDOM"
  shift 4
  target/release/wrpo-sample generate --prompts "$work/prompts.parquet" --model "m=$model" --out "$out" \
    --n "$n" --max-new-tokens "$MAX_NEW" --temperature 0.8 --top-p 0.95 --threads 2 --batch-size "$BATCH" "$@" 2> "$out.log"
  "$PYTHON" - "$out.log" "$engine" <<'PY' | tee -a "$results"
import json, re, sys
m = re.search(r"made (\d+) samples, (\d+) new tokens in ([\d.]+) s", open(sys.argv[1]).read())
samples, tokens, secs = int(m[1]), int(m[2]), float(m[3])
print(json.dumps({"engine": sys.argv[2], "samples": samples, "new_tokens": tokens, "seconds": secs,
                  "tokens_per_s": round(tokens / secs, 1)}))
PY
}

# ratios RESULTS: every other row against the first.
ratios() {
  "$PYTHON" - "$1" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
ours = rows[0]
for r in rows[1:]:
    print(f"{ours['engine']} {ours['tokens_per_s']:.1f} tokens/s = {ours['tokens_per_s'] / r['tokens_per_s']:.2f}x {r['engine']} ({r['tokens_per_s']:.1f})")
PY
}

echo "== source: $SOURCE, $PROMPTS prompts x 5 samples"
ours "$work/source.jsonl" "wrpo-sample" "$SOURCE" 5
for mode in llama-sequential llama-batched; do
  "$PYTHON" scripts/bench/sample_peers.py "$mode" "$SOURCE" "$work/prompts.jsonl" 5 "$MAX_NEW" "$BATCH" 2>/dev/null | tee -a "$work/source.jsonl"
done
target/release/examples/save_hf "$SOURCE" "$work/source-hf" > /dev/null
"$PYTHON" scripts/bench/sample_peers.py hf "$work/source-hf" "$work/prompts.jsonl" 5 "$MAX_NEW" 2>/dev/null | tee -a "$work/source.jsonl"

echo "== target: $TARGET, $PROMPTS prompts x 4 samples"
ours "$work/target.jsonl" "wrpo-sample" "$TARGET" 4
"$PYTHON" scripts/bench/sample_peers.py llama-batched "$TARGET" "$work/prompts.jsonl" 4 "$MAX_NEW" "$BATCH" 2>/dev/null | tee -a "$work/target.jsonl"
target/release/examples/save_hf "$TARGET" "$work/target-hf" > /dev/null
ours "$work/target.jsonl" "wrpo-sample, f32 HF checkpoint at --quantize q8_0" "$work/target-hf" 4 --quantize q8_0

echo "== ratios"
ratios "$work/source.jsonl"
ratios "$work/target.jsonl"
