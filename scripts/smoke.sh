#!/usr/bin/env bash
# The real-model smoke test of the whole chain (run by `make test`): the
# default pipeline's own make targets, on the demo models, cut to a few
# prompts, a few tokens (so every response is cut off: ALLOW_TRUNCATED) and a
# few steps, with the test build's binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
make --no-print-directory eval BIN=target/debug BUILD= WORK="$work" LIMIT=9 EVAL_LIMIT=3 N=2 EVAL_N=1 \
  MAX_NEW_TOKENS=16 ALLOW_TRUNCATED=1 SFT_EPOCHS=1 MAX_LENGTH=128 SFT_FRACTION=0.34
for f in prompts.parquet sft.parquet pairs-ref.parquet wrpo/final/model.safetensors dpo/metrics.parquet eval/report.md; do
  test -s "$work/$f" || { echo "smoke: $f is missing" >&2; exit 1; }
done
echo "smoke: 1 passed, 0 failed"
