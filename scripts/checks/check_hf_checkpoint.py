"""Check that a checkpoint wrpo-train wrote (DIR/final) loads in HF
transformers with our logits and our tokenization of chat prompts.

    cargo build --release -p wrpo-llm --examples
    .venv/bin/python scripts/checks/check_hf_checkpoint.py runs/demo/wrpo/final

transformers loads the folder (AutoModelForCausalLM, AutoTokenizer); for a
few chat prompts, apply_chat_template(add_generation_prompt=True) must give
the ids our chat template and tokenizer give, and the logits at every
position must agree within 1e-4 (f32). Versions: scripts/fixtures/requirements.txt.
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
model = transformers.AutoModelForCausalLM.from_pretrained(CHECKPOINT, dtype=torch.float32, attn_implementation="eager").eval()
tok = transformers.AutoTokenizer.from_pretrained(CHECKPOINT)
worst = 0.0
for prompt, line in zip(PROMPTS, ours):
    got = json.loads(line)
    ids = list(tok.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=False))
    assert ids == got["ids"], f"token ids differ for {prompt}:\n  transformers {ids}\n  ours         {got['ids']}"
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    err = float((logits - torch.tensor(got["logits"])).abs().max())
    worst = max(worst, err)
    assert err <= 1e-4, f"logits differ by {err} for {prompt}"
print(f"{CHECKPOINT}: transformers {transformers.__version__} loads it; same chat ids; max abs logit error {worst:.2e}")
