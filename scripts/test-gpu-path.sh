#!/usr/bin/env bash
# `make test-gpu-path`: the GPU trainer path checked on the CPU. wrpo_trl (TRL's
# trainer with our objective) and `wrpo-train wrpo` take the same three steps on
# two tiny checkpoints and must agree on losses, metrics and weights to 1e-4;
# the trainer's own rules hold (reference log-probs through DeepSpeed bf16's input
# cast, the official step count and truncation, refused options); the recipes
# must carry the official numbers; the SFT entry point must run.
# Installs python/wrpo_trl with its pinned requirements into .venv-gpu-path
# (PyPI's torch brings CUDA libraries: several GB, once), or into the
# interpreter PYTHON names. FIXTURE=DIR keeps a TRL run's trainer_state.json
# (data/fixtures/trl is made so). Not part of `make test`: the install alone
# would take much of CI's time.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  [ -x .venv-gpu-path/bin/python ] || python3 -m venv .venv-gpu-path
  PYTHON=.venv-gpu-path/bin/python
fi
"$PYTHON" -m pip install --quiet --disable-pip-version-check -r python/wrpo_trl/requirements.txt -e python/wrpo_trl
# The same build as `make build` (one feature set: no dependency is rebuilt twice).
cargo build --release --workspace --bins --examples
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PYTHON" python/wrpo_trl/tests/check_against_wrpo_train.py target/release/wrpo-train "$work/steps" ${FIXTURE:+--fixture "$FIXTURE"}
"$PYTHON" python/wrpo_trl/tests/check_trainer.py target/release/wrpo-train "$work/trainer"
"$PYTHON" python/wrpo_trl/tests/check_recipes.py "$work/recipes"
