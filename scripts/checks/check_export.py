"""Check that the GPU trainers accept `wrpo-score export`'s files (run once
by hand; versions in scripts/checks/requirements-export.txt).

    target/release/wrpo-score export --pairs runs/demo/pairs.parquet --format wrpo --out /tmp/wrpo.parquet
    target/release/wrpo-score export --pairs runs/demo/pairs.parquet --format trl --out /tmp/trl.jsonl
    target/release/examples/save_hf models/smollm2-135m-instruct-q4_1.gguf /tmp/smollm2
    python scripts/checks/check_export.py runs/demo/pairs.parquet /tmp/wrpo.parquet /tmp/trl.jsonl /tmp/smollm2

- the `wrpo` export loads with `datasets.load_dataset("parquet", ...)` and
  holds, for every pair, the prompt's turns, chosen = [y_ws, y_wt] and
  rejected = [y_l] as assistant messages, texts equal to pairs.parquet's;
- the `trl` export loads with `datasets.load_dataset("json", ...)`, TRL sees
  it as conversational preference data, and DPOTrainer's own dataset
  preparation tokenizes every row with the model's chat template, its
  chosen ids decoding to y_wt (the default --chosen target).
"""
import sys
import tempfile

import datasets
import pyarrow.parquet as pq
import transformers
import trl
from trl.data_utils import is_conversational

pairs_path, wrpo_path, trl_path, model_dir = sys.argv[1:5]
pairs = {p["prompt_id"]: p for p in pq.read_table(pairs_path).to_pylist()}

wrpo = datasets.load_dataset("parquet", data_files=wrpo_path, split="train")
assert len(wrpo) == len(pairs), (len(wrpo), len(pairs))
for row in wrpo:
    p = pairs[row["prompt_id"]]
    assert row["prompt"] == [{"role": m["role"], "content": m["content"]} for m in p["messages"]]
    assert row["chosen"] == [{"role": "assistant", "content": p["y_ws"]}, {"role": "assistant", "content": p["y_wt"]}]
    assert row["rejected"] == [{"role": "assistant", "content": p["y_l"]}]
print(f"wrpo export: {len(wrpo)} rows load with datasets {datasets.__version__}; prompt, chosen = [y_ws, y_wt] and rejected = [y_l] equal pairs.parquet")

data = datasets.load_dataset("json", data_files=trl_path, split="train")
assert sorted(data.column_names) == ["chosen", "prompt", "rejected"], data.column_names
assert all(is_conversational(row) for row in data)
tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
with tempfile.TemporaryDirectory() as out:
    config = trl.DPOConfig(output_dir=out, report_to=[], max_length=None, use_cpu=True, bf16=False)
    trainer = trl.DPOTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer)
prepared = trainer.train_dataset
assert len(prepared) == len(data)
by_prompt = {tuple(m["content"] for m in p["messages"]): p for p in pairs.values()}
for row, tokenized in zip(data, prepared):
    p = by_prompt[tuple(m["content"] for m in row["prompt"])]
    chosen = tokenizer.decode(tokenized["chosen_ids"] if "chosen_ids" in tokenized else tokenized["chosen_input_ids"])
    assert p["y_wt"].strip() in chosen, (p["y_wt"][:60], chosen[:200])
print(f"trl export: {len(data)} rows are conversational preference data; trl {trl.__version__} DPOTrainer tokenized every row (columns {prepared.column_names}), chosen = y_wt")
