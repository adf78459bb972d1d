"""llama.cpp's single-stream greedy decode speed on a GGUF file, 2 threads,
with the same chat prompt as crates/llm/examples/bench_decode.rs.
    python decode_llama_cpp.py MODEL TOKENS"""
import json
import sys
import time

import llama_cpp

model, tokens = sys.argv[1], int(sys.argv[2])
llm = llama_cpp.Llama(model_path=model, n_threads=2, n_threads_batch=2, n_ctx=1024, verbose=False)
messages = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]
# The model's own template, as llama-cpp-python renders it for chat completions.
formatter = llama_cpp.llama_chat_format.Jinja2ChatFormatter(
    template=llm.metadata["tokenizer.chat_template"], eos_token="", bos_token="")
ids = llm.tokenize(formatter(messages=messages).prompt.encode(), add_bos=False, special=True)
llm.reset()
llm.eval(ids)
next_id = int(llm.scores[llm.n_tokens - 1].argmax())
start = time.perf_counter()
for _ in range(tokens):
    llm.eval([next_id])
    next_id = int(llm.scores[llm.n_tokens - 1].argmax())
secs = time.perf_counter() - start
print(json.dumps({"engine": "llama.cpp", "batch": 1, "prompt_tokens": len(ids), "new_tokens": tokens,
                  "seconds": round(secs, 3), "tokens_per_s": round(tokens / secs, 1)}))
