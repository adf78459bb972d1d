#!/usr/bin/env bash
# The OpenAI-backend test (make test-remote): start llama-cpp-python's
# OpenAI-compatible server on loopback with the SmolLM2 demo GGUF, and run
# wrpo-sample generate against it. The first run installs llama-cpp-python
# into .venv, which compiles llama.cpp (about 25 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-8765}
MODEL=${MODEL:-models/smollm2-135m-instruct-q4_1.gguf}
PYTHON=${PYTHON:-.venv/bin/python}
if ! "$PYTHON" -c "import llama_cpp.server" 2>/dev/null; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  PYTHON=.venv/bin/python
  "$PYTHON" -m pip install -q -r scripts/bench/requirements-server.txt
fi
log=$(mktemp)
"$PYTHON" -m llama_cpp.server --model "$MODEL" --model_alias smollm2 --host 127.0.0.1 --port "$PORT" \
  --n_threads 2 --n_ctx 2048 > "$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 120); do
  curl -sf "http://127.0.0.1:$PORT/v1/models" > /dev/null && break
  kill -0 $server 2>/dev/null || { cat "$log"; echo "the server did not start" >&2; exit 1; }
  sleep 1
done
WRPO_OPENAI_URL="http://127.0.0.1:$PORT/v1#smollm2" cargo test --workspace -- --ignored openai_server_backend
