"""The same numbers, checked: the first three optimizer steps of wrpo_trl
(TRL's trainer, our objective) and of `wrpo-train wrpo` on the same tiny
checkpoint and pairs give the same losses, logged metrics and weights.

    python check_against_wrpo_train.py WRPO_TRAIN_BINARY WORK_DIR [--fixture OUT_DIR]

For each family (a Llama with llama3 rope scaling and an untied head; a Gemma-3
with sliding-window layers, the demo target's family) and loss (every --loss
form on the Llama; wrpo and dpo on the Gemma-3): 4 pairs from the gradient fixtures' conversations, their reference
log-probs from `wrpo-train ref-logps`, then 3 steps of 2 micro-batches of 2 on
each side (an epoch is one step, so the data order cannot differ), each step
followed by an evaluation on the same pairs, cosine
learning rate without warm-up, alpha rising to 0.5, f32 on the CPU. Our weights
after steps 1 and 2 come from runs stopped there (--abort-after-steps) and
resumed, TRL's from its per-step checkpoints. Prints the agreement table and
exits non-zero if a metric or weight differs by more than 1e-4 relative
(metrics near 0: 1e-5 absolute). Each WRPO checkpoint TRL saved is then sampled
with `wrpo-sample`, as `make eval` samples a GPU run. --fixture keeps
one TRL run's trainer_state.json for the import-metrics test.
"""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[3]
FAMILIES = {"llama": "llama_llama3_untied", "gemma3": "gemma3_local_rope"}
LOSSES = {"wrpo": [], "dpo": ["--dpo-chosen", "target"], "simpo": [], "ipo": [], "wrpo-simpo": [], "wrpo-ipo": [], "sigmoid-mix": []}
# Every loss form on the Llama; WRPO and DPO, the study's pair, on both families.
LOSSES_OF = {"llama": list(LOSSES), "gemma3": ["wrpo", "dpo"]}
STEPS, LR, BETA, ALPHA_MAX, MAX_LENGTH, MAX_PROMPT = 3, 1e-3, 0.1, 0.5, 256, 200
TOLERANCE = 1e-4
# Our metric columns and the keys TRL's log history gives them.
METRICS = {"loss": "loss", "lr": "learning_rate", "grad_norm": "grad_norm", "alpha": "alpha"} | {
    m.replace("/", "_"): m
    for m in [
        "rewards/chosen", "rewards/source_chosen", "rewards/target_chosen", "rewards/rejected", "rewards/accuracies",
        "rewards/source_accuracies", "rewards/pivot_accuracies", "rewards/margins", "logps/chosen",
        "logps/source_chosen", "logps/target_chosen", "logps/rejected",
    ]
}


def run(*cmd, ok=(0,)):
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if result.returncode not in ok:
        sys.exit(f"{' '.join(map(str, cmd))} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def write_pairs(cases, path):
    """The fixture's four conversations as a pairs file (the rewards only order y_wt above y_l)."""
    turn = pa.struct([pa.field("role", pa.utf8(), False), pa.field("content", pa.utf8(), False)])
    fields = [pa.field("prompt_id", pa.utf8(), False), pa.field("messages", pa.list_(pa.field("item", turn, False)), False)]
    for y in ("y_ws", "y_wt", "y_l"):
        fields += [pa.field(y, pa.utf8(), False), pa.field(f"{y}_model", pa.utf8(), False),
                   pa.field(f"{y}_sample_index", pa.uint32(), False), pa.field(f"{y}_reward", pa.float64(), False)]
    fields += [pa.field(f"ref_logp_{y}", pa.float64()) for y in ("y_ws", "y_wt", "y_l")]
    fields += [pa.field(f"ref_tokens_{y}", pa.uint32()) for y in ("y_ws", "y_wt", "y_l")]
    rows = []
    for i, e in enumerate(cases["examples"]):
        row = {"prompt_id": f"p{i}", "messages": e["messages"]}
        for y, model, reward in (("y_ws", "source", 1.0), ("y_wt", "target-sft", 0.5), ("y_l", "target-sft", 0.0)):
            row |= {y: e[y], f"{y}_model": model, f"{y}_sample_index": 0, f"{y}_reward": reward}
        row |= {f"ref_{k}_{y}": None for k in ("logp", "tokens") for y in ("y_ws", "y_wt", "y_l")}
        rows.append(row)
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema(fields)), path)


def ours(binary, model, pairs, out, loss):
    """wrpo-train's weights after each step, and its metrics rows."""
    args = [binary, "wrpo", "--model", model, "--pairs", pairs, "--out", out, "--loss", loss, *LOSSES[loss],
            "--lr", LR, "--beta", BETA, "--alpha-max", ALPHA_MAX, "--micro-batch", 2, "--grad-accum", 2,
            "--epochs", STEPS, "--warmup-ratio", 0, "--max-length", MAX_LENGTH, "--max-prompt-length", MAX_PROMPT,
            "--save-every", 1000, "--threads", 2, "--eval-pairs", pairs, "--eval-every", 1]
    weights = []
    for step in range(1, STEPS):
        run(*args, "--abort-after-steps", step, ok=(-6, 134))  # SIGABRT, as a crash
        weights.append(load_file(out / "checkpoint" / "model.safetensors"))
    run(*args)
    weights.append(load_file(out / "final" / "model.safetensors"))
    rows = pq.read_table(out / "metrics.parquet").to_pylist()
    return weights, rows


def trl(model, pairs, out, loss):
    """wrpo_trl's weights after each step, and its log history."""
    run(sys.executable, "-m", "wrpo_trl", "--model_name_or_path", model, "--pairs", pairs, "--output_dir", out,
        "--loss", loss, "--learning_rate", LR, "--beta", BETA, "--alpha_max", ALPHA_MAX,
        "--per_device_train_batch_size", 2, "--gradient_accumulation_steps", 2, "--num_train_epochs", STEPS,
        "--lr_scheduler_type", "cosine", "--warmup_steps", 0, "--max_length", MAX_LENGTH,
        "--max_prompt_length", MAX_PROMPT, "--logging_steps", 1, "--save_strategy", "steps", "--save_steps", 1,
        "--save_only_model", "--use_cpu", "--bf16", "false", "--dtype", "float32", "--report_to", "none",
        "--seed", 42, "--eval_pairs", pairs, "--eval_strategy", "steps", "--eval_steps", 1,
        "--per_device_eval_batch_size", 2)
    weights = [load_file(out / f"checkpoint-{k}" / "model.safetensors") for k in range(1, STEPS + 1)]
    return weights, json.loads((out / "trainer_state.json").read_text())["log_history"]


def samples_from(sampler, checkpoint, cases, work):
    """The checkpoint TRL saved (its chat template in chat_template.jinja, as transformers 5
    writes it) samples with wrpo-sample, as `make eval` would sample a GPU run."""
    work.mkdir()
    with open(work / "prompts.jsonl", "w") as f:
        for i, e in enumerate(cases["examples"]):
            f.write(json.dumps({"prompt_id": f"p{i}", "messages": e["messages"]}) + "\n")
    run(sampler, "import", "--input", work / "prompts.jsonl", "--out", work / "prompts.parquet")
    run(sampler, "generate", "--prompts", work / "prompts.parquet", "--model", f"gpu={checkpoint}", "--n", 2,
        "--max-new-tokens", 8, "--out", work / "samples")
    rows = pq.read_table(work / "samples" / "gpu").to_pylist()
    if len(rows) != 2 * len(cases["examples"]) or not all(r["prompt_text"].endswith(("assistant\n", "model\n")) for r in rows):
        sys.exit(f"wrpo-sample on {checkpoint}: expected 2 samples per prompt rendered with its chat template, got {rows[:1]}")


def allowed(a, b):
    """1e-4 relative, with a floor of 1e-5 for values near 0 (at step 1 every reward is
    0 up to f32 rounding, since the policy is the reference)."""
    return TOLERANCE * max(abs(a), abs(b)) + 1e-5


def metric_diffs(o, t, prefix, skip_accuracies):
    """Each metric's |ours - TRL| as a multiple of what is allowed."""
    diffs = {}
    for m, key in METRICS.items():
        if o.get(m) is None or (prefix and m in ("lr", "grad_norm")):
            continue
        if prefix + key not in t:
            sys.exit(f"TRL's log lacks {prefix + key} at step {t['step']}")
        if not (skip_accuracies and m.endswith("accuracies")):
            diffs[prefix + m] = abs(o[m] - t[prefix + key]) / allowed(o[m], t[prefix + key])
    return diffs


def compare(initial, ours_w, trl_w, ours_rows, trl_log):
    """Per step: each logged metric's difference as a multiple of what is allowed
    (training rows, and the eval rows after the step), the weights' largest relative
    difference (max |ours - TRL| / max |TRL| over each tensor) and the updates'
    (|| dw_ours - dw_TRL || / || dw_TRL ||, reported only)."""
    train = [r for r in ours_rows if not r["stage"].startswith("eval")]
    evals = {r["step"]: r for r in ours_rows if r["stage"].startswith("eval")}
    trl_train = [h for h in trl_log if "loss" in h and "train_runtime" not in h]
    trl_evals = {h["step"]: h for h in trl_log if "eval_loss" in h}
    if (len(train), len(trl_train)) != (STEPS, STEPS) or set(trl_evals) != set(range(1, STEPS + 1)):
        sys.exit(f"{len(train)} training rows of ours, {len(trl_train)} and evals at {sorted(trl_evals)} logged by TRL; expected {STEPS}")
    out = []
    for k in range(STEPS):
        # At step 1 every reward is 0 +- rounding (the policy is the reference): which of two is larger is noise.
        diffs = metric_diffs(train[k], trl_train[k], "", k == 0) | metric_diffs(evals[k + 1], trl_evals[k + 1], "eval_", False)
        names = set(trl_w[k])
        if not names <= set(ours_w[k]):
            sys.exit(f"TRL's checkpoint has tensors ours lacks: {sorted(names - set(ours_w[k]))}")
        w = max(float(abs(ours_w[k][n] - trl_w[k][n]).max() / max(abs(trl_w[k][n]).max(), 1e-12)) for n in names)
        du = sum(float(((ours_w[k][n] - trl_w[k][n]).astype("float64") ** 2).sum()) for n in names)
        u = sum(float(((trl_w[k][n] - initial[n]).astype("float64") ** 2).sum()) for n in names)
        out.append((train[k]["loss"], trl_train[k]["loss"], diffs, w, math.sqrt(du / max(u, 1e-30))))
    return out


def main():
    binary, work = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    fixture = Path(sys.argv[sys.argv.index("--fixture") + 1]) if "--fixture" in sys.argv else None
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print("| family | loss | step | loss, wrpo-train | loss, wrpo_trl | worst metric: difference / allowed | weights: rel. difference | update: rel. difference |")
    print("|---|---|---|---|---|---|---|---|")
    failures = []
    for family, name in FAMILIES.items():
        model = ROOT / "data/fixtures/gradients" / name
        cases = json.loads((model / "cases.json").read_text())
        write_pairs(cases, work / f"{family}-pairs.parquet")
        pairs = work / f"{family}-pairs-ref.parquet"
        run(binary, "ref-logps", "--model", model, "--pairs", work / f"{family}-pairs.parquet", "--out", pairs,
            "--max-length", MAX_LENGTH, "--max-prompt-length", MAX_PROMPT)
        initial = load_file(model / "model.safetensors")
        for loss in LOSSES_OF[family]:
            ours_w, ours_rows = ours(binary, model, pairs, work / f"{family}-{loss}-ours", loss)
            trl_out = work / f"{family}-{loss}-trl"
            trl_w, trl_rows = trl(model, pairs, trl_out, loss)
            for k, (lo, lt, diffs, w, u) in enumerate(compare(initial, ours_w, trl_w, ours_rows, trl_rows)):
                worst = max(diffs, key=diffs.get)
                print(f"| {family} | {loss} | {k + 1} | {lo:.6f} | {lt:.6f} | {worst} {diffs[worst]:.2f} | {w:.1e} | {u:.1e} |")
                failures += [f"{family} {loss} step {k + 1}: {m} differs by {v:.2f}x the allowed" for m, v in diffs.items() if not v <= 1]
                failures += [f"{family} {loss} step {k + 1}: weights differ by {w:.2e}"] if not w <= TOLERANCE else []
            if loss == "wrpo":
                samples_from(binary.with_name("wrpo-sample"), trl_out, cases, work / f"{family}-samples")
            if fixture and family == "llama" and loss == "wrpo":
                fixture.mkdir(parents=True, exist_ok=True)
                shutil.copy(trl_out / "trainer_state.json", fixture / "trainer_state.json")
    if failures:
        sys.exit("wrpo_trl and wrpo-train differ:\n" + "\n".join(failures))
    print(f"wrpo_trl and wrpo-train agree within {TOLERANCE} (relative) on every step, metric and weight")


if __name__ == "__main__":
    main()
