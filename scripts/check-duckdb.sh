#!/usr/bin/env bash
# Build a run folder with every dataset kind (the real binaries where no model
# is needed, synthetic samples and scores where one is), then run every SQL
# block of README.md and docs/datasets.md on it in DuckDB.
set -euo pipefail
cd "$(dirname "$0")/.."
# The same build as `cargo test` (same features), so nothing is compiled twice.
cargo test --workspace --no-run --quiet
bin=target/debug
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
run=$tmp/runs/demo
"$bin/wrpo-sample" import --input data/demo/prompts.jsonl --out "$run/prompts.parquet" --reference-column reference --eval-fraction 0.1
"$bin/examples/synthetic_run" sources "$run"
"$bin/wrpo-score" sft-set --prompts "$run/prompts.parquet" --source-scores "$run/source-scores" \
  --out "$run/sft.parquet" --out-preference "$run/preference-prompts.parquet"
"$bin/examples/synthetic_run" target "$run"
"$bin/wrpo-score" pairs --prompts "$run/preference-prompts.parquet" --source-scores "$run/source-scores" \
  --target-scores "$run/target-scores" --out "$run/pairs.parquet"
"$bin/examples/synthetic_run" refs "$run"
"$bin/examples/synthetic_run" metrics "$run"
# The eval report from the real binary, on the synthetic scores as if they were the eval set's.
"$bin/wrpo-score" report --prompts "$run/prompts.parquet" --scores "$run/source-scores" --baseline gemma3 --out "$run/eval" > /dev/null
# The dose-response's datasets the same way: a weaker y_ws (best of 1) beside the chain's, the source
# model at both levels against the other, and the reference set a stronger source trains on.
"$bin/wrpo-score" pairs --prompts "$run/preference-prompts.parquet" --source-scores "$run/source-scores" \
  --target-scores "$run/target-scores" --source-best-of 1 --out "$run/dose/Lminus/pairs.parquet" > /dev/null
"$bin/wrpo-score" reference-set --prompts "$run/prompts.parquet" --sft "$run/sft.parquet" \
  --preference "$run/preference-prompts.parquet" --out "$run/dose/source-plus-set.parquet" > /dev/null
"$bin/wrpo-score" dose --prompts "$run/prompts.parquet" --scores "$run/source-scores" --baseline gemma3 \
  --level L0="$run/pairs.parquet" --level Lminus="$run/dose/Lminus/pairs.parquet" \
  --arm L0:wrpo=smollm2 --arm Lminus:wrpo=smollm2 --out "$run/dose/eval" > /dev/null
printf 'stage,seconds,finished_at\nsource-samples,61.2,2026-11-28T16:37:00Z\nwrpo,540.0,2026-11-28T17:00:00Z\n' > "$run/timings.csv"
python3 scripts/check_duckdb.py "$tmp" README.md docs/datasets.md
# Files rewritten by DuckDB (nullable columns, list items named 'element', no
# wrpo metadata) read back: pairs filtered in SQL, exported by wrpo-score;
# prompts rewritten, sampled by wrpo-sample.
python3 - "$run" "$tmp" <<'PY'
import sys
import duckdb
run, tmp = sys.argv[1:3]
duckdb.sql(f"COPY (SELECT * FROM '{run}/pairs.parquet' WHERE y_wt_reward > y_l_reward) TO '{tmp}/mine.parquet'")
duckdb.sql(f"COPY (SELECT * FROM '{run}/prompts.parquet' WHERE split = 'train' LIMIT 2) TO '{tmp}/prompts-duckdb.parquet'")
PY
"$bin/wrpo-score" export --pairs "$tmp/mine.parquet" --format trl --out "$tmp/mine.jsonl" 2> /dev/null
test -s "$tmp/mine.jsonl"
"$bin/wrpo-sample" generate --prompts "$tmp/prompts-duckdb.parquet" --model models/smollm2-135m-instruct-q4_1.gguf \
  --n 1 --max-new-tokens 2 --out "$tmp/samples" 2> /dev/null
ls "$tmp"/samples/smollm2-135m-instruct-q4_1/part-00000-*.parquet > /dev/null
echo "duckdb rewrites: pairs and prompts read back"
