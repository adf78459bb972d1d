#!/usr/bin/env bash
# The numerics gate of bf16 training (docs/benchmarks.md, "bf16 training": its thresholds were
# committed before its runs). On a chain's own data, from the same start and seed, f32 against bf16:
#   SFT: the original target (TARGET) on WORK/sft.parquet, SFT_STEPS steps (the chain's SFT settings);
#   WRPO: WORK/target-sft/final on WORK/pairs.parquet with each precision's own reference log-probs,
#         WRPO_STEPS steps (the study's WRPO settings);
# then the four results answer the validation split (common random numbers) and `wrpo-score report`
# compares each bf16 result with its f32 twin, paired. Prints the last steps' losses and margins.
#   SFT_ROWS=396 PAIRS=638 scripts/precision-gate.sh WORK OUT
# WORK: a chain's folder (e.g. runs/study); SFT_ROWS and PAIRS: the rows of its sft.parquet and
# pairs.parquet (DuckDB: select count(*) from 'WORK/sft.parquet'); BIN: the binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:?WORK}
out=${2:?OUT}
bin=${BIN:-target/release}
target=${TARGET:-models/gemma-3-270m-q4_k_m.gguf}
reward=${REWARD:-similarity:models/all-minilm-l6-v2}
SFT_STEPS=${SFT_STEPS:-50} WRPO_STEPS=${WRPO_STEPS:-50}
lengths=(--max-length 512 --max-prompt-length 256)
mkdir -p "$out"
# Epochs that make N steps of B examples each out of ROWS.
epochs() { awk -v n="$1" -v b="$2" -v r="$3" 'BEGIN { printf "%.6f", n * b / r }'; }
sft_epochs=$(epochs "$SFT_STEPS" 4 "${SFT_ROWS:?SFT_ROWS: the rows of WORK/sft.parquet}")
wrpo_epochs=$(epochs "$WRPO_STEPS" 4 "${PAIRS:?PAIRS: the rows of WORK/pairs.parquet}")
for p in f32 bf16; do
  [ -f "$out/sft-$p/final/config.json" ] || "$bin/wrpo-train" sft --model "$target" --data "$work/sft.parquet" --out "$out/sft-$p" \
    --lr 5e-5 --epochs "$sft_epochs" --micro-batch 4 --grad-accum 1 --warmup-ratio 0.1 "${lengths[@]}" --seed 42 --precision "$p" \
    2> "$out/sft-$p.log"
  [ -f "$out/pairs-ref-$p.parquet" ] || "$bin/wrpo-train" ref-logps --model "$work/target-sft/final" --pairs "$work/pairs.parquet" \
    --out "$out/pairs-ref-$p.parquet" "${lengths[@]}" --precision "$p" 2> "$out/ref-$p.log"
  [ -f "$out/wrpo-$p/final/config.json" ] || "$bin/wrpo-train" wrpo --model "$work/target-sft/final" --pairs "$out/pairs-ref-$p.parquet" \
    --out "$out/wrpo-$p" --lr 5e-6 --beta 0.1 --alpha-max 0.1 --epochs "$wrpo_epochs" --micro-batch 2 --grad-accum 2 --warmup-ratio 0.1 \
    "${lengths[@]}" --freeze-embeddings --seed 1 --precision "$p" 2> "$out/wrpo-$p.log"
done
models=()
for m in sft-f32 sft-bf16 wrpo-f32 wrpo-bf16; do models+=(--model "$m=$out/$m/final"); done
[ -f "$out/answers/samples/.done" ] || { "$bin/wrpo-sample" generate --prompts "$work/prompts.parquet" --split validation "${models[@]}" \
  --n 2 --max-new-tokens 128 --temperature 0.8 --top-p 0.95 --seed 42 --common-random-numbers --out "$out/answers/samples" \
  && touch "$out/answers/samples/.done"; }
[ -f "$out/answers/scores/.done" ] || { "$bin/wrpo-score" score --prompts "$work/prompts.parquet" --samples "$out/answers/samples" \
  --reward "$reward" --out "$out/answers/scores" && touch "$out/answers/scores/.done"; }
"$bin/wrpo-score" report --prompts "$work/prompts.parquet" --scores "$out/answers/scores" --baseline sft-f32 \
  --order sft-f32,sft-bf16,wrpo-f32,wrpo-bf16 --compare sft-bf16:sft-f32 --compare wrpo-bf16:wrpo-f32 --out "$out/answers" > /dev/null
# Each run's logged steps: the mean loss (and WRPO's margin) of the last ten, beside f32's.
for run in sft wrpo; do
  for p in f32 bf16; do
    grep -E '^step [0-9]+: loss' "$out/$run-$p.log" | tail -10 | awk -v name="$run-$p" '
      { for (i = 1; i <= NF; i++) { if ($i == "loss") l += $(i + 1); if ($i == "margin") m += $(i + 1) } n++ }
      END { printf "%-10s last %d steps: mean loss %.5f, mean margin %.4f\n", name, n, l / n, m / n }'
  done
done
grep -A 12 -i "paired" "$out/answers/report.md" || cat "$out/answers/report.md"
