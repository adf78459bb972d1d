"""The recipes say what docs/scale-out.md says they say, and the entry points run.

    python check_recipes.py WORK_DIR

Parses recipes/wrpo-llama3-8b.yaml and recipes/sft-llama3-8b.yaml with the
entry points' own parsers (an unknown key is an error; bf16 and the GPUs are
switched off on the command line, as this check runs on a CPU), checks them
against the official recipe's numbers and the global batch against the
accelerate config's process count, then runs `python -m wrpo_trl.sft` for one
packed step and `python -m wrpo_trl` with LoRA for two steps on a tiny
checkpoint, the second on pairs without reference log-probs, which it must
compute itself (the base model with the adapter off).
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from check_against_wrpo_train import write_pairs

from wrpo_trl import __main__ as wrpo_cli
from wrpo_trl import sft as sft_cli

HERE = Path(__file__).resolve().parents[1]
ROOT = HERE.parents[1]
CPU = ["--bf16", "false", "--use_cpu", "true"]


def expect(what, got, want):
    if got != want:
        sys.exit(f"{what}: the recipe has {got!r}, the official recipe {want!r}")


def main():
    work = Path(sys.argv[1])
    work.mkdir(parents=True, exist_ok=True)
    gpus = yaml.safe_load((HERE / "recipes/deepspeed_zero3.yaml").read_text())
    expect("accelerate: processes", gpus["num_processes"], 8)
    expect("accelerate: ZeRO stage", gpus["deepspeed_config"]["zero_stage"], 3)

    data, c, model = wrpo_cli.parse(["--config", str(HERE / "recipes/wrpo-llama3-8b.yaml"), *CPU])
    for what, got, want in [
        ("loss", c.loss, "wrpo"), ("beta", c.beta, 0.01), ("alpha_max", c.alpha_max, 0.1), ("static alpha", c.static_alpha, False),
        ("learning rate", c.learning_rate, 3e-7), ("schedule", str(c.lr_scheduler_type.value), "cosine"), ("warm-up", c.warmup_steps, 0.1),
        ("epochs", c.num_train_epochs, 1), ("max length", c.max_length, 2048), ("max prompt length", c.max_prompt_length, 1800),
        ("weight decay", c.weight_decay, 0.0), ("clipping", c.max_grad_norm, 1.0), ("seed", c.seed, 42),
        ("global batch", c.per_device_train_batch_size * c.gradient_accumulation_steps * gpus["num_processes"], 128),
    ]:
        expect(f"wrpo: {what}", got, want)
    expect("wrpo: pairs", data.pairs, "runs/paper/pairs-ref.parquet")

    data, c, model = sft_cli.parse(["--config", str(HERE / "recipes/sft-llama3-8b.yaml"), *CPU])
    for what, got, want in [
        ("learning rate", c.learning_rate, 7e-6), ("schedule", str(c.lr_scheduler_type.value), "cosine"), ("warm-up", c.warmup_steps, 0.1),
        ("epochs", c.num_train_epochs, 1), ("max length", c.max_length, 2048), ("packing", c.packing, True),
        ("loss on every token", (c.assistant_only_loss, c.completion_only_loss), (False, None)),
        ("global batch", c.per_device_train_batch_size * c.gradient_accumulation_steps * gpus["num_processes"], 128),
    ]:
        expect(f"sft: {what}", got, want)

    # One packed SFT step on the tiny Llama of the gradient fixtures, from our sft dataset's columns.
    checkpoint = ROOT / "data/fixtures/gradients/llama_llama3_untied"
    cases = json.loads((checkpoint / "cases.json").read_text())
    rows = [{"prompt_id": f"p{i}", "messages": e["messages"], "response": e["y_ws"]} for i, e in enumerate(cases["examples"])]
    pq.write_table(pa.Table.from_pylist(rows), work / "sft.parquet")
    out = work / "sft"
    subprocess.run([sys.executable, "-m", "wrpo_trl.sft", "--model_name_or_path", str(checkpoint), "--sft", str(work / "sft.parquet"),
                    "--output_dir", str(out), "--max_length", "128", "--packing", "true", "--packing_strategy", "wrapped",
                    "--per_device_train_batch_size", "2", "--max_steps", "1", "--logging_steps", "1", "--report_to", "none", "--dtype", "float32", *CPU],
                   check=True, capture_output=True)
    logged = [h for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    if not (out / "model.safetensors").exists() or not logged:
        sys.exit(f"wrpo_trl.sft wrote no model or logged no loss in {out}")
    # LoRA on pairs without reference log-probs: wrpo_trl computes them (the base model, adapter
    # off), and at the first step the policy is that reference, so the loss is ln 2.
    write_pairs(cases, work / "pairs.parquet")
    lora = work / "lora"
    subprocess.run([sys.executable, "-m", "wrpo_trl", "--model_name_or_path", str(checkpoint), "--pairs", str(work / "pairs.parquet"),
                    "--output_dir", str(lora), "--use_peft", "--lora_r", "8", "--lora_alpha", "16", "--learning_rate", "1e-3",
                    "--beta", "0.1", "--max_length", "256", "--max_prompt_length", "200", "--per_device_train_batch_size", "2",
                    "--max_steps", "2", "--logging_steps", "1", "--report_to", "none", "--dtype", "float32", *CPU],
                   check=True, capture_output=True)
    steps = [h for h in json.loads((lora / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    if len(steps) != 2 or abs(steps[0]["loss"] - math.log(2)) > 1e-5 or not (lora / "adapter_model.safetensors").exists():
        sys.exit(f"LoRA run: expected 2 logged steps starting at ln 2 and an adapter in {lora}, got {steps}")
    print(f"recipes: the official numbers, global batch 128 on 8 GPUs; wrpo_trl.sft trained a packed step (loss {logged[0]['loss']:.3f}); "
          f"LoRA WRPO with reference log-probs computed on the fly started at ln 2 (loss {steps[0]['loss']:.6f})")


if __name__ == "__main__":
    main()
