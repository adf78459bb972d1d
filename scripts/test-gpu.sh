#!/usr/bin/env bash
# `make test-gpu`: the paper-scale path on one CUDA GPU, as the recipe runs it
# (python/wrpo_trl/tests/check_gpu.py): the demo's SmolLM2 trained by wrpo_trl for
# 20 steps in bf16 under DeepSpeed ZeRO-3 on one process, against wrpo-train's f32
# run of the same pairs. Without a CUDA GPU it says so and exits 0; DEVICE=cpu runs
# the same check on the CPU (DeepSpeed's CPU accelerator, bf16; minutes on two
# cores). Installs python/wrpo_trl's pinned requirements (with DeepSpeed) as
# `make test-gpu-path` does.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
if [ -z "${PYTHON:-}" ]; then
  [ -x .venv-gpu-path/bin/python ] || python3 -m venv .venv-gpu-path
  PYTHON=.venv-gpu-path/bin/python
fi
if [ "$DEVICE" = cuda ] && ! command -v nvidia-smi > /dev/null; then
  echo "make test-gpu: skipped: no CUDA GPU here (nvidia-smi not found); DEVICE=cpu runs the check on the CPU"
  exit 0
fi
"$PYTHON" -m pip install --quiet --disable-pip-version-check -r python/wrpo_trl/requirements.txt -e python/wrpo_trl
if [ "$DEVICE" = cuda ] && ! "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  echo "make test-gpu: skipped: torch sees no CUDA GPU; DEVICE=cpu runs the check on the CPU"
  exit 0
fi
cargo build --release --workspace --bins --examples
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
target/release/examples/save_hf models/smollm2-135m-instruct-q4_1.gguf "$work/smollm2" > /dev/null
"$PYTHON" python/wrpo_trl/tests/check_gpu.py target/release "$work/smollm2" \
  models/smollm2-135m-instruct-q4_1.gguf "$work/check" --device "$DEVICE"
