"""Check that a checkpoint wrpo-train wrote (DIR/final) loads in HF
transformers with our logits and our tokenization of chat prompts.

    cargo build --release -p wrpo-llm --examples
    .venv/bin/python scripts/checks/check_hf_checkpoint.py runs/demo/wrpo/final

transformers loads the folder (AutoModelForCausalLM, AutoTokenizer); for a
few chat prompts, apply_chat_template(add_generation_prompt=True) must give
the ids our chat template and tokenizer give, and our logits at every
position must agree with transformers' within 1e-4, or, for real models
whose logits reach ~100 (where f32 itself is off by more), be no further from
transformers' float64 logits than 4x transformers' own float32 error.
Versions: scripts/fixtures/requirements.txt.
"""
import json
import pathlib
import subprocess
import sys

import torch
import transformers

CHECKPOINT = pathlib.Path(sys.argv[1])
ROOT = pathlib.Path(__file__).resolve().parents[2]
PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a Python function that reverses a list."}],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}],
]

ours = subprocess.run([str(ROOT / "target/release/examples/logits"), str(CHECKPOINT)], check=True, capture_output=True,
                      text=True, input="\n".join(json.dumps(p) for p in PROMPTS) + "\n").stdout.splitlines()
load = lambda dtype: transformers.AutoModelForCausalLM.from_pretrained(CHECKPOINT, dtype=dtype, attn_implementation="eager").eval()
model, exact = load(torch.float32), load(torch.float64)
tok = transformers.AutoTokenizer.from_pretrained(CHECKPOINT)
for prompt, line in zip(PROMPTS, ours):
    got = json.loads(line)
    ids = list(tok.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=False))
    assert ids == got["ids"], f"token ids differ for {prompt}:\n  transformers {ids}\n  ours         {got['ids']}"
    with torch.no_grad():
        theirs, reference = model(torch.tensor([ids])).logits[0], exact(torch.tensor([ids])).logits[0]
    mine = torch.tensor(got["logits"])
    err = float((theirs - mine).abs().max())
    ours_f64, theirs_f64 = float((mine.double() - reference).abs().max()), float((theirs.double() - reference).abs().max())
    print(f"{prompt[-1]['content'][:40]!r}: ours vs transformers {err:.2e}; vs float64: ours {ours_f64:.2e}, "
          f"transformers' float32 {theirs_f64:.2e}; max |logit| {float(reference.abs().max()):.1f}")
    assert err <= 1e-4 or ours_f64 <= 4 * theirs_f64, f"logits differ by {err} for {prompt}"
print(f"{CHECKPOINT}: transformers {transformers.__version__} loads it with the same chat ids and logits")
