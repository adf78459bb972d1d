#!/usr/bin/env bash
# fresh.sh SETTINGS DIR DONE: before a step writes DIR, set aside an output
# that no longer matches: DIR is finished (DONE exists, so make reruns the
# step because an input or a setting changed) or was begun with other
# settings. An unfinished DIR of the same settings stays, and the step
# resumes it. Nothing is deleted: the old DIR becomes DIR.old-TIME-XXXX.
set -euo pipefail
settings=$1 dir=$2 done=$3
if [ -d "$dir" ] && { [ -e "$done" ] || ! cmp -s "$settings" "$dir/.settings"; }; then
  aside=$(mktemp -d "$dir.old-$(date +%Y%m%d-%H%M%S)-XXXX")
  mv -T "$dir" "$aside"
  echo "$(basename "$dir"): its inputs or settings changed; the old output is set aside as $aside" >&2
fi
mkdir -p "$dir"
cp "$settings" "$dir/.settings"
