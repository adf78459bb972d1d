"""python -m wrpo_trl.sft --model_name_or_path TARGET --sft sft.parquet --output_dir OUT [SFTConfig flags]
or with the recipe: accelerate launch --config_file recipes/deepspeed_zero3.yaml -m wrpo_trl.sft --config recipes/sft-llama3-8b.yaml

Target-SFT on GPUs: TRL's SFTTrainer on our `sft` dataset (x, y_ws), each row a
conversation (the messages, then y_ws as the assistant's turn). The recipe packs
conversations into blocks of max_length and trains on every token, as `wrpo-train
sft --packing` does (docs/method.md lists how the two packers differ)."""
from dataclasses import dataclass, field

import pyarrow.parquet as pq
from datasets import Dataset
from trl import ModelConfig, SFTConfig, SFTTrainer, TrlParser, get_peft_config

from . import run


@dataclass
class SftArguments:
    sft: str = field(metadata={"help": "Our `sft` Parquet (wrpo-score sft-set)."})


def conversations(path):
    """Our SFT rows as TRL's conversational data: {"messages": [..., {assistant: y_ws}]}."""
    rows = pq.read_table(path, columns=["messages", "response"]).to_pylist()
    return Dataset.from_list([{"messages": r["messages"] + [{"role": "assistant", "content": r["response"]}]} for r in rows])


def parse(args=None):
    """The command line (and its --config recipe) as (data, training, model) arguments."""
    return TrlParser((SftArguments, SFTConfig, ModelConfig)).parse_args_and_config(args)


def main():
    data, config, model_args = parse()
    model, tokenizer = run.load(model_args)
    trainer = SFTTrainer(model, args=config, train_dataset=conversations(data.sft), processing_class=tokenizer,
                         peft_config=get_peft_config(model_args))
    run.train(trainer, config)


if __name__ == "__main__":
    main()
