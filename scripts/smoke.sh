#!/usr/bin/env bash
# The real-model smoke test of the whole chain (run by `make test`): the
# default pipeline's own make targets, on the demo models, cut to a few
# prompts, a few tokens (so every response is cut off: ALLOW_TRUNCATED) and a
# few steps, with the test build's binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run=(--no-print-directory BIN=target/debug BUILD= WORK="$work" LIMIT=9 EVAL_LIMIT=3 N=2 EVAL_N=1
  MAX_NEW_TOKENS=16 ALLOW_TRUNCATED=1 SFT_EPOCHS=1 MAX_LENGTH=128 SFT_FRACTION=0.34)
fail() { echo "smoke: $*" >&2; exit 1; }
# What the Makefile would ignore it refuses before any work, and the remote settings reach the calls.
refused() { local out; out=$(make -n "$@" 2>&1) && fail "make -n $*: accepted"; grep -q "$expect" <<< "$out" || fail "make -n $*: $out"; }
expect="unknown variable(s) ALHPA_MAX" refused train "${run[@]}" ALHPA_MAX=0.3
expect="sets WORK from STUDY_WORK" refused experiment WORK="$work/study"
expect="expected openai:URL#MODEL" refused eval "${run[@]}" JUDGE=http://localhost:8000/v1
make -n pairs "${run[@]}" CONCURRENCY=3 TIMEOUT=30 API_KEY_ENV=MY_KEY > "$work/dry.txt"
grep -q "generate .*--api-key-env MY_KEY --concurrency 3 --timeout 30" "$work/dry.txt" \
  && grep -q "score .*--api-key-env MY_KEY --concurrency 3 --timeout 30" "$work/dry.txt" || fail "remote settings not passed: $(cat "$work/dry.txt")"
make eval "${run[@]}"
for f in prompts.parquet sft.parquet pairs-ref.parquet wrpo/final/model.safetensors dpo/metrics.parquet eval/report.md; do
  test -s "$work/$f" || fail "$f is missing"
done
# Outputs depend on their settings: the same ones leave nothing to do; another
# N reruns the chain from sampling, another ALPHA_MAX only WRPO and the eval.
make -q eval "${run[@]}" || fail "make eval again, same settings: not up to date"
make -n eval "${run[@]}" N=3 > "$work/dry.txt"
grep -q "source-samples .*generate" "$work/dry.txt" || fail "N changed: the source samples are not remade"
make -n eval "${run[@]}" ALPHA_MAX=0.2 > "$work/dry.txt"
grep -q "fresh.sh .*/wrpo " "$work/dry.txt" && ! grep -q "generate .*--split train" "$work/dry.txt" \
  || fail "ALPHA_MAX changed: expected WRPO alone to rerun, got: $(cat "$work/dry.txt")"
# make experiment's alpha ablation on the same chain, on every pair: alpha_max
# 1 is trained, 0.1 is the WRPO run itself and 0 the DPO run (the same loss),
# and the static-alpha run is compared with the WRPO run.
ablation=(ALPHAS="0 0.1 1" STATIC_ALPHA=0.1)
make ablation "${run[@]}" "${ablation[@]}"
for f in wrpo-alpha1/final/model.safetensors wrpo-static0.1/final/model.safetensors; do
  test -s "$work/$f" || fail "$f is missing"
done
for a in 0 0.1; do
  test ! -e "$work/wrpo-alpha$a" || fail "alpha_max $a was trained twice (it is the WRPO or the DPO run)"
done
make -q ablation "${run[@]}" "${ablation[@]}" || fail "make ablation again: not up to date"
for row in "alpha1 - target-sft | reward" "static0.1 - alpha0.1 | reward" "0 | alpha0 - target-sft" "0.1 | alpha0.1 - target-sft" "1 | alpha1 - target-sft"; do
  grep -qF "| $row |" "$work/ablation/report.md" || fail "ablation/report.md lacks the row '$row'"
done
# On a subsample of the pairs every alpha_max is trained, on the same pairs.
make -n ablation "${run[@]}" "${ablation[@]}" ABLATION_PAIRS=3 > "$work/dry.txt"
grep -q "wrpo-alpha0 .*--alpha-max 0 --subsample 3 " "$work/dry.txt" || fail "ABLATION_PAIRS=3: alpha_max 0 is not trained on 3 pairs"
test -s "$work/ablation/sweep.png" || fail "sweep.png (the ablation against alpha_max) is missing"
# Every checkpoint here is 1 GB (Gemma-3-270M in f32) and nothing below reads
# these runs' weights again, only their .done stamps and eval scores: freed, the
# smoke holds at most about 6 GB of checkpoints at once, not 10 (CI's disk once ran out).
# Had a later rule needed them, its read would fail the smoke, loudly.
for dir in wrpo dpo wrpo-alpha1 wrpo-static0.1; do rm "$work/$dir/final/model.safetensors"; done
# The dose-response on the same chain: a weaker y_ws (best of 1), a stronger source (the source
# fine-tuned on the SFT third's references, sampled on the preference prompts) and the chain's
# own, against DPO on y_wt on the test split.
dose=(DOSE_SPLIT=eval DOSE_RUNS="Lminus/wrpo-seed1 L0/dpo-ws-seed1 Lplus/wrpo-seed1" SOURCE_PLUS_EPOCHS=1)
make dose "${run[@]}" "${dose[@]}"
for f in dose/source-plus-set.parquet dose/source-plus/final/model.safetensors dose/Lplus/pairs-ref.parquet dose/eval/dose.png; do
  test -s "$work/$f" || fail "$f is missing"
done
for row in "| L0 | wrpo | wrpo - dpo | reward |" "| Lminus | wrpo | wrpo-Lminus - dpo | reward |" "| L0 | dpo-ws | dpo-ws-L0 - dpo | reward |" "| wrpo | reward | 3 |"; do
  grep -qF "$row" "$work/dose/eval/dose.md" || fail "dose/eval/dose.md lacks the row '$row'"
done
make -q dose "${run[@]}" "${dose[@]}" || fail "make dose again: not up to date"
echo "smoke: 1 passed, 0 failed"
