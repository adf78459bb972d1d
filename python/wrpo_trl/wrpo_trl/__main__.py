"""python -m wrpo_trl --model_name_or_path M --pairs pairs.parquet --output_dir OUT [WRPOConfig flags]
or with a recipe: accelerate launch --config_file recipes/deepspeed_zero3.yaml -m wrpo_trl --config recipes/wrpo-llama3-8b.yaml

Trains M (Target-SFT) on our pairs (or the `wrpo-score export --format wrpo` shape)
and saves the final model in OUT as an HF checkpoint, which `wrpo-sample` reads;
OUT/trainer_state.json's log history becomes our metrics dataset with
`wrpo-train import-metrics`."""
from dataclasses import dataclass, field

from trl import ModelConfig, TrlParser, get_peft_config

from . import run
from .data import load_pairs
from .trainer import WRPOConfig, WRPOTrainer


@dataclass
class PairsArguments:
    pairs: str = field(metadata={"help": "Our pairs Parquet (reference log-probs used when filled), or the wrpo export."})
    eval_pairs: str | None = field(default=None, metadata={"help": "Held-out pairs, evaluated every eval_steps."})


def parse(args=None):
    """The command line (and its --config recipe) as (data, training, model) arguments."""
    return TrlParser((PairsArguments, WRPOConfig, ModelConfig)).parse_args_and_config(args)


def main():
    data, config, model_args = parse()
    model, tokenizer = run.load(model_args)
    pairs = lambda path: load_pairs(path, tokenizer, config.max_length, config.max_prompt_length)  # noqa: E731
    trainer = WRPOTrainer(
        model,
        args=config,
        train_dataset=pairs(data.pairs),
        eval_dataset=pairs(data.eval_pairs) if data.eval_pairs else None,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    run.train(trainer, config)


if __name__ == "__main__":
    main()
