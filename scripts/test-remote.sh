#!/usr/bin/env bash
# The served-model tests (make test-remote): start llama-cpp-python's
# OpenAI-compatible server on loopback with the SmolLM2 demo GGUF, served as
# `smollm2` (chat) and `smollm2-embed` (mean-pooled embeddings), and run
# wrpo-sample generate, the judge (reward and report) and /v1/embeddings
# against it. The first run installs llama-cpp-python into .venv, which
# compiles llama.cpp (about 25 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-8765}
MODEL=${MODEL:-models/smollm2-135m-instruct-q4_1.gguf}
PYTHON=${PYTHON:-.venv/bin/python}
if ! "$PYTHON" -c "import llama_cpp.server.app, uvicorn" 2>/dev/null; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  PYTHON=.venv/bin/python
  # Compiled here for any x86-64 with AVX2 (GGML_NATIVE=OFF), never from pip's wheel cache: a native
  # build on a Sapphire Rapids machine runs ggml's AMX kernels, which died here of SIGILL (tileloadd)
  # on the first large batch, and a wheel built on another machine may use what this CPU lacks.
  CMAKE_ARGS="-DGGML_NATIVE=OFF" "$PYTHON" -m pip install -q --no-cache-dir --no-binary llama-cpp-python \
    -r scripts/bench/requirements-server.txt
fi
log=$(mktemp)
config=$(mktemp --suffix .json)
cat > "$config" <<JSON
{"host": "127.0.0.1", "port": $PORT, "models": [
  {"model": "$MODEL", "model_alias": "smollm2", "n_ctx": 2048, "n_threads": 2},
  {"model": "$MODEL", "model_alias": "smollm2-embed", "embedding": true, "n_ctx": 512, "n_threads": 2}]}
JSON
"$PYTHON" scripts/llama_cpp_server.py --config_file "$config" > "$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -f "$log" "$config"' EXIT
for _ in $(seq 120); do
  curl -sf "http://127.0.0.1:$PORT/v1/models" > /dev/null && break
  kill -0 $server 2>/dev/null || { cat "$log"; echo "the server did not start" >&2; exit 1; }
  sleep 1
done
WRPO_OPENAI_URL="http://127.0.0.1:$PORT/v1#smollm2" WRPO_OPENAI_BASE="http://127.0.0.1:$PORT/v1" \
  cargo test --workspace -- --ignored --nocapture openai_server_backend llama_cpp_server_judges_and_embeds
