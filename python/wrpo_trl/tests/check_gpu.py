"""The paper-scale path as the recipe runs it, against wrpo-train: the demo's
SmolLM2-135M-Instruct (exported from its GGUF to an HF folder) trained for 20
steps by wrpo_trl in bf16 under DeepSpeed ZeRO-3 (one process, the recipe's
accelerate config), with the reference log-probs `wrpo-train ref-logps` computed
in f32, and by `wrpo-train wrpo` on the same pairs and settings, in f32 and with
--precision bf16.

    python check_gpu.py RELEASE_DIR MODEL_HF MODEL_GGUF WORK_DIR --device cuda|cpu

Pairs: 8 demo prompts, three samples of the model each (y_ws, y_wt, y_l in
sample order; the rewards play no part in the losses). 20 epochs of one step
each (micro-batches of 4, grad_accum 2), so that every step of both trainers
sees the same 8 pairs whatever their data orders; beta 0.1, alpha_max 0.5,
lr 5e-6 cosine without warm-up.

Passes if every step's alpha is wrpo-train's exactly, the first step's loss is
within LOSS_TOLERANCE of the f32 run's, and every step's loss within
LOSS_TOLERANCE of the bf16 run's. Why those: at the first step the policy is the
reference, so a loss differs only by bf16's error in h(y); measured on the CPU
(docs/scale-out.md), a bf16 forward's summed log-probs fall up to 1.35 nats
from f32's on one response, so |dz| <= beta * (alpha |dh(y_ws)| + (1 - alpha)
|dh(y_wt)| + |dh(y_l)|) <= 0.27 and |d loss| <= |dz| / 2 <= 0.14 for one
example at worst, the mean of eight well under a third of that. After it, the
f32 run is no reference for a bf16 one: ZeRO-3's bf16 parameters (rounded from
fp32 master weights) take up an update only once it passes half a bf16 step of
the weight, and at lr 5e-6 most updates do not (measured on DeepSpeed's CPU
accelerator: loss 0.61 after 20 steps where f32 reaches 0.27). wrpo-train's
--precision bf16 rounds its weights to bf16 for every forward from f32 masters,
the same arithmetic, and follows ZeRO-3 within 0.025 there; the f32 column is
printed beside them.
"""
import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent))
from check_against_wrpo_train import ROOT, run, write_pairs  # noqa: E402
from check_trainer import launch_zero3  # noqa: E402

# One step per epoch, so both trainers' steps see the same pairs whatever their shuffles.
STEPS, MICRO_BATCH, GRAD_ACCUM = 20, 4, 2
PAIRS = MICRO_BATCH * GRAD_ACCUM
SETTINGS = {"lr": 5e-6, "beta": 0.1, "alpha_max": 0.5, "max_length": 512, "max_prompt_length": 256}
LOSS_TOLERANCE = 0.05


def pairs(release, gguf, work):
    """PAIRS pairs of the model's own samples, with f32 reference log-probs from wrpo-train."""
    prompts = [json.loads(line) for line in (ROOT / "data/demo/prompts.jsonl").read_text().splitlines() if line.strip()]
    with open(work / "prompts.jsonl", "w") as f:
        for p in prompts[: PAIRS + 20]:  # a few spare prompts for samples that come back empty
            f.write(json.dumps({"prompt": p["prompt"]}) + "\n")
    run(release / "wrpo-sample", "import", "--input", work / "prompts.jsonl", "--out", work / "prompts.parquet")
    run(release / "wrpo-sample", "generate", "--prompts", work / "prompts.parquet", "--model", f"smol={gguf}", "--n", 3,
        "--max-new-tokens", 64, "--seed", 1, "--out", work / "samples")
    messages = {r["prompt_id"]: r["messages"] for r in pq.read_table(work / "prompts.parquet").to_pylist()}
    samples = {}
    for row in pq.read_table(work / "samples" / "smol").to_pylist():
        samples.setdefault(row["prompt_id"], {"messages": messages[row["prompt_id"]]})[row["sample_index"]] = row["response"]
    examples = [
        {"messages": s["messages"], "y_ws": s[0], "y_wt": s[1], "y_l": s[2]}
        for s in samples.values()
        if all(s.get(i, "").strip() for i in range(3))
    ][:PAIRS]
    if len(examples) < PAIRS:
        sys.exit(f"only {len(examples)} prompts have three non-empty samples; {PAIRS} are needed")
    write_pairs({"examples": examples}, work / "pairs.parquet")
    run(release / "wrpo-train", "ref-logps", "--model", work / "model", "--pairs", work / "pairs.parquet",
        "--out", work / "pairs-ref.parquet", "--max-length", SETTINGS["max_length"],
        "--max-prompt-length", SETTINGS["max_prompt_length"])
    return work / "pairs-ref.parquet"


def ours(release, model, pairs, out, precision="f32"):
    if precision != "f32":
        # wrpo-train refuses references of another precision than its run's.
        own = out.with_name(f"pairs-ref-{precision}.parquet")
        run(release / "wrpo-train", "ref-logps", "--model", model, "--pairs", pairs, "--out", own, "--precision", precision,
            "--max-length", SETTINGS["max_length"], "--max-prompt-length", SETTINGS["max_prompt_length"])
        pairs = own
    run(release / "wrpo-train", "wrpo", "--precision", precision, "--model", model, "--pairs", pairs, "--out", out, "--loss", "wrpo",
        "--lr", SETTINGS["lr"], "--beta", SETTINGS["beta"], "--alpha-max", SETTINGS["alpha_max"],
        "--micro-batch", MICRO_BATCH, "--grad-accum", GRAD_ACCUM, "--epochs", STEPS, "--warmup-ratio", 0,
        "--max-length", SETTINGS["max_length"], "--max-prompt-length", SETTINGS["max_prompt_length"], "--save-every", 1000)
    return [r for r in pq.read_table(out / "metrics.parquet").to_pylist() if not r["stage"].startswith("eval")]


def trl(model, pairs, out, device):
    log = launch_zero3([
        "--model_name_or_path", model, "--pairs", pairs, "--loss", "wrpo", "--learning_rate", SETTINGS["lr"],
        "--beta", SETTINGS["beta"], "--alpha_max", SETTINGS["alpha_max"], "--per_device_train_batch_size", MICRO_BATCH,
        "--gradient_accumulation_steps", GRAD_ACCUM, "--num_train_epochs", STEPS, "--lr_scheduler_type", "cosine",
        "--warmup_steps", 0, "--max_length", SETTINGS["max_length"], "--max_prompt_length", SETTINGS["max_prompt_length"],
    ], out, device)
    return [h for h in log if "loss" in h and "train_runtime" not in h]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("release", type=Path)
    p.add_argument("model", type=Path)
    p.add_argument("gguf", type=Path)
    p.add_argument("work", type=Path)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    a = p.parse_args()
    shutil.rmtree(a.work, ignore_errors=True)
    a.work.mkdir(parents=True)
    shutil.copytree(a.model, a.work / "model")
    start = time.time()
    pairs_file = pairs(a.release.resolve(), a.gguf.resolve(), a.work)
    ours_rows = ours(a.release.resolve(), a.work / "model", pairs_file, a.work / "ours")
    ours_bf16 = ours(a.release.resolve(), a.work / "model", pairs_file, a.work / "ours-bf16", "bf16")
    trl_start = time.time()
    trl_rows = trl(a.work / "model", pairs_file, a.work / "trl", a.device)
    trl_seconds = time.time() - trl_start
    if (len(ours_rows), len(trl_rows)) != (STEPS, STEPS):
        sys.exit(f"{len(ours_rows)} steps of wrpo-train, {len(trl_rows)} of wrpo_trl; expected {STEPS}")
    print("| step | alpha, wrpo-train | alpha, wrpo_trl | loss, wrpo-train f32 | loss, wrpo-train bf16 | loss, wrpo_trl bf16 ZeRO-3 "
          "| difference from bf16 | difference from f32 |")
    print("|---|---|---|---|---|---|---|---|")
    failures = []
    for k, (o, b, t) in enumerate(zip(ours_rows, ours_bf16, trl_rows), start=1):
        d, d_bf16 = abs(o["loss"] - t["loss"]), abs(b["loss"] - t["loss"])
        print(f"| {k} | {o['alpha']:.4f} | {t['cur_alpha']:.4f} | {o['loss']:.5f} | {b['loss']:.5f} | {t['loss']:.5f} | {d_bf16:.5f} | {d:.5f} |")
        if abs(o["alpha"] - t["cur_alpha"]) > 1e-9:  # both alpha_max * t / T
            failures.append(f"step {k}: alpha {t['cur_alpha']} where wrpo-train has {o['alpha']}")
        if k == 1 and not d <= LOSS_TOLERANCE:
            failures.append(f"step 1: the loss differs from the f32 run's by {d:.4f} (at most {LOSS_TOLERANCE})")
        if not d_bf16 <= LOSS_TOLERANCE:
            failures.append(f"step {k}: the loss differs from wrpo-train --precision bf16's by {d_bf16:.4f} (at most {LOSS_TOLERANCE})")
    print(f"\n{a.device}: wrpo_trl's 20 steps took {trl_seconds:.0f} s (with its start-up); the whole check {time.time() - start:.0f} s")
    if failures:
        sys.exit("wrpo_trl in bf16 under DeepSpeed and wrpo-train differ:\n" + "\n".join(failures))
    print(f"every step's alpha equal; the first loss within {LOSS_TOLERANCE} of f32's, every loss within {LOSS_TOLERANCE} of bf16's")


if __name__ == "__main__":
    main()
