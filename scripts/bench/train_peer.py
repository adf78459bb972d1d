"""PyTorch eager doing the WRPO step that bench_step does (make bench-train):
the same model folder, the same token ids, reference log-probs given,
AdamW with gradient clipping. Prints JSON like bench_step. PRECISION bf16
runs the forward under torch.autocast("cpu", dtype=torch.bfloat16), PyTorch's
fastest CPU training mode (oneDNN's bf16 kernels: AMX or AVX512-BF16); the
log-softmax is taken in f32 either way.

    python scripts/bench/train_peer.py MODEL_DIR IDS.json STEPS [f32|bf16]
"""
import contextlib
import json
import resource
import sys
import time

import torch
import torch.nn.functional as F
import transformers

torch.set_num_threads(2)
model_dir, ids_path, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
precision = sys.argv[4] if len(sys.argv) > 4 else "f32"
assert precision in ("f32", "bf16"), f"precision {precision}: f32 or bf16"
autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
ids = json.load(open(ids_path))
model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
model.train()
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-6, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
prompt = ids["prompt"]
seqs = [prompt + ids[y] for y in ("y_ws", "y_wt", "y_l")]
width = max(len(s) for s in seqs)
batch = torch.zeros(3, width, dtype=torch.long)
mask = torch.zeros(3, width, dtype=torch.long)
for i, s in enumerate(seqs):
    batch[i, :len(s)] = torch.tensor(s)
    mask[i, :len(s)] = 1
labels = batch.clone()
labels[:, :len(prompt)] = -100
labels[mask == 0] = -100
ref = torch.tensor(ids["ref"], dtype=torch.float32)
alpha, beta = 0.1, 0.1


def step():
    opt.zero_grad(set_to_none=True)
    with autocast():
        logits = model(input_ids=batch, attention_mask=mask).logits[:, :-1]
    target = labels[:, 1:]
    keep = target != -100
    logp = torch.gather(F.log_softmax(logits.float(), -1), 2, target.clamp(min=0).unsqueeze(2)).squeeze(2)
    logp = (logp * keep).sum(-1)
    h = logp - ref
    z = beta * (alpha * h[0] + (1 - alpha) * h[1] - h[2])
    loss = -F.logsigmoid(z)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return float(loss)


def matmul_gflops():
    a, b = torch.randn(768, 640), torch.randn(640, 2048)
    with autocast():
        a @ b
        t = time.perf_counter()
        for _ in range(20):
            a @ b
    return 2 * 768 * 640 * 2048 * 20 / (time.perf_counter() - t) / 1e9


times, losses = [], []
for _ in range(steps):
    t = time.perf_counter()
    losses.append(step())
    times.append(time.perf_counter() - t)
later = sorted(times[1:] or times)
print(json.dumps({"engine": f"pytorch {precision}", "torch": torch.__version__, "step_seconds": later[len(later) // 2],
                  "first_step_seconds": times[0], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "matmul_gflops": matmul_gflops(), "params": sum(p.numel() for p in params), "losses": losses}))
