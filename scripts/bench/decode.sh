#!/usr/bin/env bash
# Decode throughput, side by side in one run: our quantized inference path
# (batch 1 and batch 8 sharing one prefill) against llama.cpp single-stream
# (llama-cpp-python) on the same GGUF file, same prompt, 2 threads, greedy.
# Needs: make models, and a Python with llama-cpp-python (scripts/bench/requirements.txt);
# PYTHON picks it (default: .venv/bin/python if present, else python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${MODEL:-models/smollm2-135m-instruct-q4_1.gguf}
TOKENS=${TOKENS:-128}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export RAYON_NUM_THREADS=2 CANDLE_NUM_THREADS=2
cargo build --release -q --workspace --bins --examples
echo "cpu: $(target/release/examples/cpu)"
out=$(mktemp)
"$PYTHON" scripts/bench/decode_llama_cpp.py "$MODEL" "$TOKENS" | tee -a "$out"
target/release/examples/bench_decode "$MODEL" --tokens "$TOKENS" --batches 1,8 | tee -a "$out"
"$PYTHON" - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
peer = next(r["tokens_per_s"] for r in rows if r["engine"] == "llama.cpp")
for r in rows:
    if r["engine"] == "wrpo":
        print(f"wrpo batch {r['batch']}: {r['tokens_per_s']:.1f} tokens/s = {r['tokens_per_s'] / peer:.2f}x llama.cpp single-stream ({peer:.1f})")
PY
rm -f "$out"
