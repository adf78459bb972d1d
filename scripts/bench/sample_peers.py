"""The peers of `make bench-sample`: N sampled chat responses per prompt,
2 threads, the same sampling parameters as our run. One JSON line per engine.

    python sample_peers.py llama-sequential GGUF PROMPTS.jsonl N MAX_NEW
    python sample_peers.py llama-batched    GGUF PROMPTS.jsonl N MAX_NEW BATCH
    python sample_peers.py hf               HF_DIR PROMPTS.jsonl N MAX_NEW

llama-sequential: llama-cpp-python's create_chat_completion, samples one
after another, as its Python API produces them.
llama-batched: llama.cpp's own batched decoding through its C API (as in
llama.cpp's examples/batched), sampling in C: BATCH // N prompts at a time,
the N sequences of each sharing its prefill in a unified KV cache, all of
them decoding together, as our batch of BATCH sequences does.
hf: transformers generate(num_return_sequences=N) on f32 safetensors.
"""
import json
import sys
import time

TEMPERATURE, TOP_P, SEED, THREADS = 0.8, 0.95, 42, 2
GEMMA_TURNS = ("<bos>{% for m in messages %}<start_of_turn>{{ 'model' if m.role == 'assistant' else m.role }}\n"
               "{{ m.content }}<end_of_turn>\n{% endfor %}<start_of_turn>model\n")


def prompts(path):
    return [json.loads(line)["prompt"] for line in open(path) if line.strip()]


def report(engine, samples, tokens, secs):
    print(json.dumps({"engine": engine, "samples": samples, "new_tokens": tokens,
                      "seconds": round(secs, 3), "tokens_per_s": round(tokens / secs, 1)}), flush=True)


def llama_sequential(model, texts, n, max_new):
    import llama_cpp
    llm = llama_cpp.Llama(model_path=model, n_threads=THREADS, n_threads_batch=THREADS, n_ctx=2048,
                          seed=SEED, verbose=False)
    tokens, samples = 0, 0
    start = time.perf_counter()
    for i, text in enumerate(texts):
        for k in range(n):
            out = llm.create_chat_completion(messages=[{"role": "user", "content": text}], max_tokens=max_new,
                                             temperature=TEMPERATURE, top_p=TOP_P, top_k=0, min_p=0.0,
                                             seed=SEED + 1000 * i + k)
            tokens += out["usage"]["completion_tokens"]
            samples += 1
    report("llama.cpp sequential", samples, tokens, time.perf_counter() - start)


def llama_batched(model_path, texts, n, max_new, batch):
    import llama_cpp
    import llama_cpp as L
    # The chat template applied as llama-cpp-python's chat completion applies it.
    meta_llm = llama_cpp.Llama(model_path=model_path, n_ctx=256, vocab_only=True, verbose=False)
    # A base model's GGUF may have none (Gemma-3-270M): then Gemma's turns, as our sampler falls back to.
    template = meta_llm.metadata.get("tokenizer.chat_template", GEMMA_TURNS)
    formatter = llama_cpp.llama_chat_format.Jinja2ChatFormatter(template=template, eos_token="", bos_token="")
    L.llama_backend_init()
    model = L.llama_model_load_from_file(model_path.encode(), L.llama_model_default_params())
    vocab = L.llama_model_get_vocab(model)
    group = max(1, batch // n)  # prompts decoded together: their n samples each fill the batch
    tokens_total, samples = 0, 0
    start = time.perf_counter()
    for g in range(0, len(texts), group):
        prompt_ids = []
        for text in texts[g:g + group]:
            prompt = formatter(messages=[{"role": "user", "content": text}]).prompt.encode()
            buf = (L.llama_token * 4096)()
            prompt_ids.append(list(buf[:L.llama_tokenize(vocab, prompt, len(prompt), buf, 4096, False, True)]))
        seqs = len(prompt_ids) * n
        longest = max(map(len, prompt_ids))
        cp = L.llama_context_default_params()
        cp.n_ctx = sum(map(len, prompt_ids)) + seqs * max_new + 16
        cp.n_batch = max(longest, seqs)
        cp.n_seq_max = seqs
        cp.n_threads = cp.n_threads_batch = THREADS
        cp.kv_unified = True
        ctx = L.llama_init_from_model(model, cp)
        batch_ = L.llama_batch_init(max(longest, seqs), 0, n)
        samplers, pos, first = [], [], []
        for p, ids in enumerate(prompt_ids):
            # The prompt once, in each of its n sequences.
            batch_.n_tokens = len(ids)
            for j, tok in enumerate(ids):
                batch_.token[j], batch_.pos[j], batch_.n_seq_id[j], batch_.logits[j] = tok, j, n, j == len(ids) - 1
                for s in range(n):
                    batch_.seq_id[j][s] = p * n + s
            assert L.llama_decode(ctx, batch_) == 0
            for s in range(n):
                chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
                L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(TOP_P, 1))
                L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(TEMPERATURE))
                L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(SEED + 1000 * (g + p) + s))
                samplers.append(chain)
                first.append(L.llama_sampler_sample(chain, ctx, len(ids) - 1))
                pos.append(len(ids))
        made = seqs
        nxt = [(q, tok) for q, tok in enumerate(first) if not L.llama_vocab_is_eog(vocab, tok)]
        for _ in range(max_new - 1):
            if not nxt:
                break
            batch_.n_tokens = len(nxt)
            for j, (q, tok) in enumerate(nxt):
                batch_.token[j], batch_.pos[j], batch_.n_seq_id[j], batch_.logits[j] = tok, pos[q], 1, True
                batch_.seq_id[j][0] = q
                pos[q] += 1
            assert L.llama_decode(ctx, batch_) == 0
            following = []
            for j, (q, _) in enumerate(nxt):
                tok = L.llama_sampler_sample(samplers[q], ctx, j)
                made += 1
                if not L.llama_vocab_is_eog(vocab, tok):
                    following.append((q, tok))
            nxt = following
        tokens_total += made
        samples += seqs
        for chain in samplers:
            L.llama_sampler_free(chain)
        L.llama_batch_free(batch_)
        L.llama_free(ctx)
    report(f"llama.cpp batched ({group * n} sequences)", samples, tokens_total, time.perf_counter() - start)


def hf(model_dir, texts, n, max_new):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(THREADS)
    torch.manual_seed(SEED)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    tokens, samples = 0, 0
    start = time.perf_counter()
    for text in texts:
        ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = model.generate(**ids, do_sample=True, temperature=TEMPERATURE, top_p=TOP_P, top_k=0,
                                 max_new_tokens=max_new, num_return_sequences=n)
        for row in out[:, ids["input_ids"].shape[1]:].tolist():
            # Count up to and including the first end token, as the others do.
            count = next((k + 1 for k, t in enumerate(row) if t in eos), len(row))
            tokens += count
            samples += 1
    report("transformers generate", samples, tokens, time.perf_counter() - start)


if __name__ == "__main__":
    mode, model, path, n, max_new = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    if mode == "llama-batched":
        llama_batched(model, prompts(path), n, max_new, int(sys.argv[6]))
    else:
        {"llama-sequential": llama_sequential, "hf": hf}[mode](model, prompts(path), n, max_new)
