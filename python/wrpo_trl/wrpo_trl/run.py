"""What the two entry points (python -m wrpo_trl, python -m wrpo_trl.sft) share:
loading the model and tokenizer the command line names, and a run to its end."""
from transformers import AutoModelForCausalLM, AutoTokenizer


def load(model_args):
    """The model and tokenizer of a TRL ModelConfig."""
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
    model = AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        dtype=model_args.dtype,
        attn_implementation=model_args.attn_implementation,
    )
    return model, tokenizer


def train(trainer, config):
    """Train (resuming where config says), then save the model and trainer_state.json in output_dir."""
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    trainer.save_model(config.output_dir)
    trainer.save_state()
