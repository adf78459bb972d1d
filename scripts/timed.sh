#!/usr/bin/env bash
# timed.sh WORK STAGE CMD...: run CMD, then append "STAGE,seconds,finished_at"
# to WORK/timings.csv (a table DuckDB reads: SELECT * FROM 'WORK/timings.csv').
set -euo pipefail
work=$1 stage=$2
shift 2
start=$(date +%s%N)
"$@"
end=$(date +%s%N)
mkdir -p "$work"
[ -f "$work/timings.csv" ] || echo "stage,seconds,finished_at" > "$work/timings.csv"
awk -v s="$stage" -v ns="$((end - start))" -v at="$(date -u +%Y-%m-%dT%H:%M:%SZ)" 'BEGIN { printf "%s,%.1f,%s\n", s, ns / 1e9, at }' >> "$work/timings.csv"
