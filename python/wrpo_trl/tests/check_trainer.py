"""WRPOTrainer's own rules, checked on the CPU (no GPU, no DeepSpeed install):

- reference log-probs of -300 to -2,000 nats pass transformers' input preparation
  unchanged with the trainer set as under DeepSpeed ZeRO-3 bf16, and the step-0
  reference check passes on them, in-process and in a real ZeRO-3 bf16 run
  (DeepSpeed's CPU accelerator, one process, as the recipe launches it);
- T is the official trainer's (and wrpo-train's) when the micro-batches are not a
  multiple of gradient_accumulation_steps: every step's alpha equals
  `wrpo-train schedule`'s; several epochs with a leftover are refused;
- truncation: wrpo-train ref-logps and wrpo_trl cut the same examples to the same
  token counts, by the official rule;
- DPOConfig options the trainer would ignore are refused; SimPO computes no
  reference; predict() returns the loss and metrics.

    python check_trainer.py WRPO_TRAIN_BINARY WORK_DIR [CHECK ...]
"""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import torch
from accelerate.state import AcceleratorState
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).parent))
from check_against_wrpo_train import ROOT, run, write_pairs  # noqa: E402

from wrpo_trl.data import RESPONSES, load_pairs, truncate  # noqa: E402
from wrpo_trl.trainer import WRPOConfig, WRPOTrainer  # noqa: E402

MODEL = ROOT / "data/fixtures/gradients/llama_llama3_untied"


def cases(lengthen=1, extra=0):
    """The fixture's conversations, each response repeated `lengthen` times, plus `extra` copies under new ids."""
    c = json.loads((MODEL / "cases.json").read_text())
    examples = [dict(e, **{y: " ".join([e[y]] * lengthen) for y in RESPONSES}) for e in c["examples"]]
    return {"examples": examples + examples[:extra]}


def pairs_with_refs(binary, work, name, max_length, max_prompt_length, **kw):
    """A pairs file of `cases(**kw)` with wrpo-train's f32 reference log-probs."""
    raw, out = work / f"{name}.parquet", work / f"{name}-ref.parquet"
    write_pairs(cases(**kw), raw)
    run(binary, "ref-logps", "--model", MODEL, "--pairs", raw, "--out", out, "--max-length", max_length,
        "--max-prompt-length", max_prompt_length)
    return out


def trainer(work, dataset, **config):
    args = dict(output_dir=str(work / "out"), use_cpu=True, bf16=False, report_to="none", per_device_train_batch_size=2,
                max_length=1024, max_prompt_length=512, logging_steps=1, save_strategy="no", seed=42, learning_rate=1e-4,
                beta=0.1, alpha_max=0.5, warmup_steps=0, lr_scheduler_type="cosine", disable_tqdm=True)
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    return WRPOTrainer(model, args=WRPOConfig(**(args | config)), train_dataset=dataset, processing_class=tokenizer)


def expect_error(what, fragment, call):
    try:
        call()
    except ValueError as e:
        if fragment not in str(e):
            sys.exit(f"{what}: the error does not name {fragment!r}: {e}")
        return str(e)
    sys.exit(f"{what}: accepted")


def launch_zero3(args, out, device):
    """`python -m wrpo_trl ARGS --output_dir OUT` as the recipe launches it: the recipe's accelerate config
    (DeepSpeed ZeRO-3, bf16) on one process; its log history."""
    # accelerate, and the ninja DeepSpeed compiles its ops with, are installed beside the interpreter.
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    command = [
        shutil.which("accelerate", path=env["PATH"]) or sys.exit("accelerate is not installed"), "launch",
        "--config_file", ROOT / "python/wrpo_trl/recipes/deepspeed_zero3.yaml", "--num_processes", 1,
        "-m", "wrpo_trl", "--dtype", "bfloat16", "--bf16", "true", "--output_dir", out, "--logging_steps", 1,
        "--save_strategy", "no", "--report_to", "none", "--seed", 42, *args,
    ] + (["--use_cpu", "true"] if device == "cpu" else [])
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, env=env)
    if result.returncode:
        sys.exit(f"wrpo_trl under DeepSpeed exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return json.loads((out / "trainer_state.json").read_text())["log_history"]


def check_bf16_references(binary, work):
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    pairs = pairs_with_refs(binary, work, "long", 1024, 512, lengthen=6)
    dataset = load_pairs(pairs, tokenizer, 1024, 512)
    refs = torch.tensor([dataset[f"ref_logp_{y}"] for y in RESPONSES], dtype=torch.float64)
    if not (refs.max() < -250 and refs.min() > -2500 and (refs < -1024).any()):
        sys.exit(f"the long responses' references should span -300 to -2,000 nats, got {refs.min():.0f} to {refs.max():.0f}")
    t = trainer(work, dataset, per_device_train_batch_size=4)
    batch = t.data_collator([dataset[i] for i in range(len(dataset))])
    # As under ZeRO-3 bf16: transformers casts every floating input to the DeepSpeed engine's dtype.
    plugin = SimpleNamespace(hf_ds_config=SimpleNamespace(dtype=lambda: torch.bfloat16))
    with mock.patch.object(AcceleratorState, "deepspeed_plugin", new=property(lambda self: plugin)):
        t.is_deepspeed_enabled = True
        prepared = t._prepare_inputs(dict(batch))
        t.is_deepspeed_enabled = False
    got = prepared["ref_logps"]
    if got.dtype != torch.float64 or not torch.equal(got.cpu(), batch["ref_logps"].double()):
        worst = (got.double().cpu() - batch["ref_logps"].double()).abs().max().item()
        sys.exit(f"the reference log-probs changed in input preparation under DeepSpeed bf16 ({got.dtype}, off by up to {worst:.2f} nats)")
    t.model.train()
    t.compute_loss(t.model, prepared)  # at step 0: the reference check runs, and must pass
    print(f"bf16 references: {refs.numel()} log-probs from {refs.max():.0f} to {refs.min():.0f} nats kept exactly; the step-0 check passes")
    # And for real: DeepSpeed ZeRO-3 in bf16 (its CPU accelerator), as the recipe launches it, two steps.
    log = launch_zero3(["--model_name_or_path", MODEL, "--pairs", pairs, "--per_device_train_batch_size", 2,
                        "--gradient_accumulation_steps", 1, "--num_train_epochs", 1, "--max_length", 1024,
                        "--max_prompt_length", 512, "--beta", 0.1], work / "zero3", "cpu")
    steps = [h for h in log if "cur_alpha" in h]
    if len(steps) != 2:
        sys.exit(f"DeepSpeed ZeRO-3 bf16: expected 2 logged steps, got {log}")
    print(f"DeepSpeed ZeRO-3 bf16 on the CPU: the step-0 reference check passed, 2 steps, losses {[h['loss'] for h in steps]}")


def schedule(binary, examples, micro_batch, grad_accum, epochs):
    out = run(binary, "schedule", "--examples", examples, "--micro-batch", micro_batch, "--grad-accum", grad_accum,
              "--epochs", epochs, "--warmup-ratio", 0, "--alpha-max", 0.5).stdout.splitlines()
    head = out[0].split(",")
    return [dict(zip(head, map(float, line.split(",")))) for line in out[1:]]


def check_steps(binary, work):
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    dataset = load_pairs(pairs_with_refs(binary, work, "five", 256, 200, extra=1), tokenizer, 256, 200)
    if len(dataset) != 5:
        sys.exit(f"expected 5 pairs, got {len(dataset)}")
    t = trainer(work, dataset, per_device_train_batch_size=1, gradient_accumulation_steps=2, num_train_epochs=1)
    t.train()
    logged = [h for h in t.state.log_history if "cur_alpha" in h]
    expected = schedule(binary, 5, 1, 2, 1)
    if len(logged) != len(expected) or len(expected) != 2:
        sys.exit(f"5 micro-batches, grad_accum 2: wrpo-train takes {len(expected)} steps, wrpo_trl logged {len(logged)} (expected 2)")
    for h, e in zip(logged, expected):
        if not (math.isclose(h["cur_alpha"], e["alpha"], abs_tol=1e-12) and h["alpha"] == h["cur_alpha"]):
            sys.exit(f"step {h['step']}: wrpo_trl's alpha {h['cur_alpha']}, wrpo-train schedule's {e['alpha']}")
    t = trainer(work, dataset, per_device_train_batch_size=1, gradient_accumulation_steps=2, num_train_epochs=2)
    expect_error("two epochs of 5 micro-batches at grad_accum 2", "leftover", t.train)
    print(f"steps: 5 micro-batches at grad_accum 2 take T = {len(logged)} steps, alpha {[h['cur_alpha'] for h in logged]} as wrpo-train schedule's; "
          "two epochs with a leftover are refused")


def check_truncation(binary, work):
    # The Rust test's cases: (prompt, responses) lengths at max_length 10, max_prompt_length 6.
    ids = lambda n: list(range(n))  # noqa: E731
    for prompt, responses, want in [(7, [3, 2, 1], (7, [3, 2, 1])), (8, [4, 1, 2], (6, [4, 1, 2])),
                                    (8, [9, 3, 5], (6, [4, 3, 4])), (3, [9, 1, 8], (3, [4, 1, 4]))]:
        p, r = truncate(ids(prompt), dict(zip(RESPONSES, map(ids, responses))), 10, 6)
        if (len(p), [len(x) for x in r.values()]) != want:
            sys.exit(f"truncate({prompt}, {responses}) gave {(len(p), [len(x) for x in r.values()])}, the official rule {want}")
    # On real examples: wrpo-train's recorded token counts are refused by load_pairs unless they agree.
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    dataset = load_pairs(pairs_with_refs(binary, work, "cut", 48, 40, lengthen=3), tokenizer, 48, 40)
    cut = sum(len(e["prompt_ids"]) == 40 or max(len(e[f"{y}_ids"]) for y in RESPONSES) == 8 for e in dataset)
    if not cut:
        sys.exit("no example was truncated at max_length 48: the check would see nothing")
    print(f"truncation: the official rule on 4 shapes; wrpo-train and wrpo_trl agree on {len(dataset)} examples, {cut} truncated")


def check_options(binary, work):
    base = dict(output_dir=str(work / "opts"), use_cpu=True, report_to="none")
    for option, value in [("loss_type", ["ipo"]), ("use_weighting", True), ("f_divergence_type", "js_divergence"),
                          ("ld_alpha", 0.5), ("padding_free", True), ("truncation_mode", "keep_start"), ("pad_token", "<pad>")]:
        expect_error(f"{option}={value!r}", option, lambda: WRPOConfig(**base, **{option: value}))
    expect_error("simpo without precomputing", "no reference", lambda: WRPOConfig(**base, loss="simpo", precompute_ref_log_probs=False))
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    plain = work / "plain.parquet"
    write_pairs(cases(), plain)
    dataset = load_pairs(plain, tokenizer, 256, 200)
    t = trainer(work, dataset, loss="simpo", beta=2.0, max_steps=1)
    if t.ref_model is not None or any(c.startswith("ref_logp") for c in t.train_dataset.column_names):
        sys.exit("--loss simpo computed or loaded a reference")
    t.train()
    metrics = t.predict(t.train_dataset).metrics
    if not math.isfinite(metrics.get("test_loss", math.nan)) or "test_rewards/margins" not in metrics:
        sys.exit(f"predict() gave {metrics}")
    # WRPO after training: predict() on pairs without references cannot make them from the trained policy.
    t = trainer(work, dataset, max_steps=1)
    t.train()
    if "test_rewards/margins" not in t.predict(t.train_dataset).metrics:
        sys.exit("predict() on pairs with references gave no metrics")
    expect_error("predict() after training on pairs without references", "wrpo-train ref-logps", lambda: t.predict(dataset))
    print("options: 7 ignored DPOConfig options refused by name; simpo loads and computes no reference; predict() reports the loss, "
          "and refuses pairs without references after training")


CHECKS = {"bf16-references": check_bf16_references, "steps": check_steps, "truncation": check_truncation, "options": check_options}


def main():
    binary, work = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in sys.argv[3:] or CHECKS:
        CHECKS[name](binary, work)


if __name__ == "__main__":
    main()
