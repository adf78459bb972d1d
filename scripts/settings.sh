#!/usr/bin/env bash
# settings.sh WORK STEP VALUE [dry]: keep STEP's settings in WORK/.settings/STEP,
# rewritten (and so newer than the step's output) only when VALUE changed
# (a first one is dated 1970);
# print the file's path. The Makefile calls it while it reads its rules, so
# that a changed setting reruns the steps it affects. With `dry` (make -n,
# make -q) nothing is written: a changed setting prints STEP.changed, a file
# that never exists, which make treats as out of date.
set -euo pipefail
file=$1/.settings/$2
if [ "${4:-}" = dry ]; then
  if [ -f "$file" ] && [ "$(cat "$file")" = "$3" ]; then echo "$file"; else echo "$file.changed"; fi
  exit 0
fi
mkdir -p "$(dirname "$file")"
printf '%s\n' "$3" > "$file.new"
if [ ! -f "$file" ]; then
  # A stamp written for the first time is born old: a step that has not run yet
  # runs anyway, and a step that ran before this stamp existed (an older
  # Makefile) keeps its output instead of being redone for a new stamp.
  touch -d @0 "$file.new"
  mv "$file.new" "$file"
elif cmp -s "$file.new" "$file"; then rm "$file.new"; else mv "$file.new" "$file"; fi
echo "$file"
