"""How far a bf16 forward's summed log-probs fall from `wrpo-train ref-logps`' f32
ones, per response and per token: the measurement behind wrpo_trl's step-0
reference check (WRPOConfig.reference_check) on machines without a GPU.

    python measure_bf16_reference.py MODEL PAIRS_REF [--pairs N] [--other MODEL2]

MODEL is the reference (Target-SFT, an HF checkpoint), PAIRS_REF a pairs file
whose ref_logp_* columns `wrpo-train ref-logps` computed from MODEL (its
max_length and max_prompt_length are read from the file's metadata). Every
response of the first N pairs is scored by TRL's fused LM head, as WRPOTrainer
scores it, in f32 and bf16 (weights and activations, as under DeepSpeed bf16), at
batch sizes 1 and 4 (other shapes, other padding). --other scores the same
responses with another model in f32: the mismatch the check exists to catch.
Prints, per side, the largest and the 99th-percentile difference from the f32
reference, per response (nats) and per response token (nats / |y|), and the
statistic the check reads: the mean of |d| / |y| over a micro-batch's responses.
"""
import argparse
import json

import pyarrow.parquet as pq
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl.trainer.utils import add_fused_lm_head

from wrpo_trl.data import RESPONSES, Encoder, read_rows
from wrpo_trl.trainer import DataCollatorForWRPO


def logps(model, examples, batch_size, pad):
    """log pi(y|x) summed over each response, for every response of `examples`, in RESPONSES order per example."""
    out = []
    for i in range(0, len(examples), batch_size):
        batch = DataCollatorForWRPO(pad, RESPONSES)(examples[i : i + batch_size])
        mask = batch["completion_mask"]
        labels = batch["input_ids"].masked_fill(mask == 0, -100)
        with torch.no_grad():
            per_token = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                              use_cache=False, fused_lm_head=True).log_probs
        sums = per_token[:, -(mask.size(1) - 1):].float().sum(dim=1).view(len(RESPONSES), -1).T
        out += sums.double().flatten().tolist()
    return torch.tensor(out, dtype=torch.float64)


def load(path, dtype):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    add_fused_lm_head(model)
    return model


def summary(name, got, ref, tokens):
    """The row of one side; the last column is what the step-0 check reads: the mean of |d| / |y| over the
    responses of a micro-batch of 2 pairs (the recipe's), at its worst micro-batch."""
    d = (got - ref).abs()
    per_token = d / tokens
    q = lambda x: torch.quantile(x, 0.99).item()  # noqa: E731
    batch = per_token[: len(per_token) // 6 * 6].view(-1, 6).mean(dim=1).max()
    print(f"| {name} | {d.max():.4f} | {q(d):.4f} | {per_token.max():.5f} | {q(per_token):.5f} | {per_token.mean():.5f} | {batch:.5f} |")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("pairs_ref")
    p.add_argument("--pairs", type=int, default=128)
    p.add_argument("--other")
    a = p.parse_args()
    config = json.loads(pq.ParquetFile(a.pairs_ref).metadata.metadata[b"wrpo.config"])
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    encoder = Encoder(tokenizer, config["max_length"], config["max_prompt_length"])
    rows = read_rows(a.pairs_ref)[: a.pairs]
    examples = [encoder.encode(r, f"row {i}") for i, r in enumerate(rows)]
    ref = torch.tensor([e[f"ref_logp_{y}"] for e in examples for y in RESPONSES], dtype=torch.float64)
    tokens = torch.tensor([len(e[f"{y}_ids"]) for e in examples for y in RESPONSES], dtype=torch.float64)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    torch.manual_seed(0)
    print(f"{len(ref)} responses of {len(rows)} pairs, {int(tokens.sum())} tokens (median {int(tokens.median())}, "
          f"max {int(tokens.max())}); |ref| up to {ref.abs().max():.1f} nats; torch {torch.__version__} on the CPU\n")
    print("| forward against wrpo-train's f32 reference | max nats | p99 nats | max nats/token | p99 nats/token "
          "| mean nats/token | worst batch of 2 pairs: mean nats/token |")
    print("|---|---|---|---|---|---|---|")
    sides = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = load(a.model, dtype)
        for batch_size in (1, 4):
            name = f"{str(dtype).removeprefix('torch.')}, batch {batch_size}"
            sides[name] = logps(model, examples, batch_size, pad)
            summary(name, sides[name], ref, tokens)
    summary("bf16 batch 4 against bf16 batch 1", sides["bfloat16, batch 4"], sides["bfloat16, batch 1"], tokens)
    if a.other:
        summary(f"another model ({a.other}), f32", logps(load(a.other, torch.float32), examples, 4, pad), ref, tokens)


if __name__ == "__main__":
    main()
