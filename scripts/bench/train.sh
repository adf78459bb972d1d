#!/usr/bin/env bash
# One WRPO optimizer step, side by side in one run (make bench-train): our
# trainer (examples/bench_step) against PyTorch eager (train_peer.py), each
# in f32 and in bf16 (ours: --precision bf16; PyTorch: autocast), on the
# same f32 model folder (exported from the demo GGUF by save_hf), the same 3
# sequences x 256 tokens of which 64 are the shared prompt, reference
# log-probs given, AdamW, gradient clipping, 2 threads. For SmolLM2-135M and
# Gemma-3-270M (262k vocabulary). Prints step times, peak RSS, ratios, and
# each side's matmul speed measured in the same run, and our step's useful
# FLOPs per second as a fraction of that matmul speed. ROUNDS (default 2)
# alternates the four sides (ours, PyTorch, ours, ...) and averages each
# side's step time over its rounds: these machines' speed drifts by a
# third within minutes, which one run of each side in turn reads as a
# speed ratio.
# Needs: make models, and a Python with torch and transformers
# (scripts/bench/requirements.txt; PYTHON picks it, default .venv/bin/python if present).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
STEPS=${STEPS:-4}
ROUNDS=${ROUNDS:-2}
export RAYON_NUM_THREADS=2 CANDLE_NUM_THREADS=2
cargo build --release -q --workspace --bins --examples
echo "cpu: $(target/release/examples/cpu)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for model in smollm2-135m-instruct-q4_1 gemma-3-270m-q4_k_m; do
  target/release/examples/save_hf "models/$model.gguf" "$work/$model" > /dev/null
  vocab=$("$PYTHON" -c "import json,sys; print(json.load(open(sys.argv[1]))['vocab_size'])" "$work/$model/config.json")
  # Random ids (above the special tokens): 64 prompt tokens, 192 per response.
  "$PYTHON" - "$vocab" > "$work/ids.json" <<'PY'
import json, random, sys
v = int(sys.argv[1]); r = random.Random(0)
ids = lambda n: [r.randrange(300, min(v, 40000)) for _ in range(n)]
print(json.dumps({"prompt": ids(64), "y_ws": ids(192), "y_wt": ids(192), "y_l": ids(192), "ref": [-1500.0, -1500.0, -1600.0]}))
PY
  # Four sides, alternated within each round: ours and PyTorch, each in f32
  # and in bf16 (ours on the CPU's bf16 units, PyTorch under autocast).
  runs=()
  for _ in $(seq "$ROUNDS"); do
    for precision in f32 bf16; do
      runs+=("$(target/release/examples/bench_step "$work/$model" "$work/ids.json" "$STEPS" "$precision")")
      runs+=("$("$PYTHON" scripts/bench/train_peer.py "$work/$model" "$work/ids.json" "$STEPS" "$precision" 2>/dev/null)")
    done
  done
  "$PYTHON" - "$model" "$(printf '%s\n' "${runs[@]}")" <<'PY'
import json, sys
name = sys.argv[1]
sides = {}
for line in sys.argv[2].splitlines():
    if line.strip():
        r = json.loads(line)
        sides.setdefault(r['engine'], []).append(r)
def side(runs):
    """Step time and matmul speed averaged over the rounds (each round's step printed), peak RSS
    the largest, the rest (losses, FLOPs) from the first round."""
    r = dict(runs[0])
    r['rounds'] = [x['step_seconds'] for x in runs]
    r['step_seconds'] = sum(r['rounds']) / len(runs)
    r['peak_rss_mb'] = max(x['peak_rss_mb'] for x in runs)
    r['matmul_gflops'] = sum(x['matmul_gflops'] for x in runs) / len(runs)
    return r
sides = {k: side(v) for k, v in sides.items()}
ours = {k.split()[1]: v for k, v in sides.items() if k.startswith('wrpo-train')}
peer = {k.split()[1]: v for k, v in sides.items() if k.startswith('pytorch')}
# The same useful work (our step's FLOP count: PyTorch computes more, e.g. the prompt three
# times) per second, as a fraction of each side's own matmul speed measured in the same run.
useful = ours['f32']['step_gflop']
for r in sides.values():
    print(f"{name:28s} {r['engine']:24s} step {r['step_seconds']:6.2f} s (rounds {' '.join(f'{s:.2f}' for s in r['rounds'])})  "
          f"peak RSS {r['peak_rss_mb'] / 1024:5.2f} GB  matmul {r['matmul_gflops']:6.1f} GFLOP/s  "
          f"useful work {useful / r['step_seconds'] / r['matmul_gflops']:4.0%} of it  losses {[round(l, 4) for l in r['losses']]}")
# Speed: PyTorch's step time over ours (above 1: ours is faster); memory: ours over PyTorch's.
for o in ours:
    for p in peer:
        print(f"{name:28s} ours {o} against PyTorch {p}: speed {peer[p]['step_seconds'] / ours[o]['step_seconds']:.2f}x, "
              f"memory {ours[o]['peak_rss_mb'] / peer[p]['peak_rss_mb']:.2f}")
print(f"{name:28s} bf16 against f32: ours {ours['f32']['step_seconds'] / ours['bf16']['step_seconds']:.2f}x, "
      f"PyTorch {peer['f32']['step_seconds'] / peer['bf16']['step_seconds']:.2f}x")
PY
done
