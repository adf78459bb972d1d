#!/usr/bin/env bash
# Sharing the machine (make bench-contention): how much of its speed each
# engine keeps while one other process keeps a core busy, in one run.
#
# Workloads, 2 threads each:
#   - wrpo-sample generate: SmolLM2-135M Q4_1, PROMPTS prompts x 5 samples,
#     up to 128 new tokens, batch 16 (make bench-sample's source run);
#   - llama.cpp batched decoding of the same (sample_peers.py llama-batched);
#   - wrpo-train's WRPO step on SmolLM2 (bench_step, 3 x 256 tokens).
# Situations: alone; beside a busy loop pinned to CPU 1 (nice 0); beside a
# busy loop at nice 19 on any CPU. "kept" is speed there over speed alone.
# Needs: make models, and a Python with llama-cpp-python (scripts/bench/
# requirements.txt; PYTHON picks it, default .venv/bin/python if present).
# ENGINES picks a subset: ours-sample llama-batched ours-train.
set -euo pipefail
cd "$(dirname "$0")/../.."
SOURCE=${SOURCE:-models/smollm2-135m-instruct-q4_1.gguf}
PROMPTS=${PROMPTS:-16} MAX_NEW=${MAX_NEW:-128} STEPS=${STEPS:-3}
ENGINES=${ENGINES:-ours-sample llama-batched ours-train}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export RAYON_NUM_THREADS=2 CANDLE_NUM_THREADS=2
cargo build --release -q --workspace --bins --examples
echo "cpu: $(target/release/examples/cpu)"
work=$(mktemp -d)
busy=
stop_busy() { [ -z "$busy" ] || { kill "$busy" 2>/dev/null; wait "$busy" 2>/dev/null || true; busy=; }; }
trap 'stop_busy; rm -rf "$work"' EXIT
head -n "$PROMPTS" data/demo/prompts.jsonl > "$work/prompts.jsonl"
target/release/wrpo-sample import --input "$work/prompts.jsonl" --out "$work/prompts.parquet" 2>/dev/null
if [[ " $ENGINES " == *" ours-train "* ]]; then
  target/release/examples/save_hf "$SOURCE" "$work/hf" > /dev/null
  "$PYTHON" - > "$work/ids.json" <<'PY'
import json, random
r = random.Random(0)
ids = lambda n: [r.randrange(300, 40000) for _ in range(n)]
print(json.dumps({"prompt": ids(64), "y_ws": ids(192), "y_wt": ids(192), "y_l": ids(192), "ref": [-1500.0, -1500.0, -1600.0]}))
PY
fi

# speed ENGINE: one run; prints work per second (tokens/s, or steps/s).
speed() {
  case $1 in
    ours-sample)
      local out="$work/samples-$RANDOM"
      target/release/wrpo-sample generate --prompts "$work/prompts.parquet" --model "m=$SOURCE" --out "$out" --n 5 \
        --max-new-tokens "$MAX_NEW" --temperature 0.8 --top-p 0.95 --threads 2 --batch-size 16 2> "$out.log"
      sed -n 's/.*new tokens in .* (\([0-9.]*\) tokens\/s).*/\1/p' "$out.log" ;;
    llama-batched)
      "$PYTHON" scripts/bench/sample_peers.py llama-batched "$SOURCE" "$work/prompts.jsonl" 5 "$MAX_NEW" 16 2>/dev/null |
        "$PYTHON" -c "import json,sys; print(json.load(sys.stdin)['tokens_per_s'])" ;;
    ours-train)
      target/release/examples/bench_step "$work/hf" "$work/ids.json" "$STEPS" |
        "$PYTHON" -c "import json,sys; print(1 / json.load(sys.stdin)['step_seconds'])" ;;
  esac
}

printf '%-14s %-22s %10s %6s\n' engine situation speed kept
for engine in $ENGINES; do
  alone=
  for situation in alone pinned-cpu1 nice19; do
    case $situation in
      pinned-cpu1) taskset -c 1 bash -c 'while :; do :; done' & busy=$! ;;
      nice19) nice -n 19 bash -c 'while :; do :; done' & busy=$! ;;
    esac
    s=$(speed "$engine")
    stop_busy
    alone=${alone:-$s}
    printf '%-14s %-22s %10.3f %5.0f%%\n' "$engine" "$situation" "$s" "$("$PYTHON" -c "print(100 * $s / $alone)")"
  done
done
