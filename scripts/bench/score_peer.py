"""PyTorch transformers scoring what `wrpo-score score` scored (make
bench-score): the same reward-model folder, the same samples (read from our
output, so both sides score the same rows), the conversation rendered by the
folder's chat template, sequences sorted by length and padded into batches
under a token budget (batch size x longest), inference mode, 2 threads. Prints JSON: time,
sequences/s, and the largest difference from our rewards.

    python scripts/bench/score_peer.py RM_DIR PROMPTS.parquet OURS_DIR BATCH_TOKENS
"""
import glob
import json
import resource
import sys
import time

import pyarrow.parquet as pq
import torch
import transformers

torch.set_num_threads(2)
rm_dir, prompts_path, ours_dir, batch_tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

prompts = {r["prompt_id"]: r["messages"] for r in pq.read_table(prompts_path).to_pylist()}
rows = [r for f in sorted(glob.glob(f"{ours_dir}/*/part-*.parquet")) for r in pq.read_table(f).to_pylist()]

start = time.perf_counter()
tokenizer = transformers.AutoTokenizer.from_pretrained(rm_dir)
model = transformers.AutoModelForSequenceClassification.from_pretrained(rm_dir, dtype=torch.float32)
model.eval()
ids = [
    tokenizer.apply_chat_template(
        [{"role": m["role"], "content": m["content"]} for m in prompts[r["prompt_id"]]] + [{"role": "assistant", "content": r["response"]}],
        tokenize=True,
        return_dict=False,
    )
    for r in rows
]
order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
rewards = [0.0] * len(ids)
pad = model.config.pad_token_id
with torch.inference_mode():
    i = 0
    while i < len(order):
        # As many of the next (longer) sequences as fit the padded budget.
        j = i + 1
        while j < len(order) and (j - i + 1) * len(ids[order[j]]) <= batch_tokens:
            j += 1
        batch = [ids[k] for k in order[i:j]]
        width = len(batch[-1])
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, seq in enumerate(batch):
            input_ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
        out = model(input_ids=input_ids, attention_mask=mask).logits[:, 0]
        for k, v in zip(order[i:j], out.tolist()):
            rewards[k] = v
        i = j
seconds = time.perf_counter() - start
print(json.dumps({
    "engine": "pytorch",
    "seconds": seconds,
    "sequences": len(ids),
    "tokens": sum(map(len, ids)),
    "sequences_per_second": len(ids) / seconds,
    "max_abs_diff_from_ours": max(abs(a - r["reward"]) for a, r in zip(rewards, rows)),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
