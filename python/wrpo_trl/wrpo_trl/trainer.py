"""WRPOTrainer: TRL's DPOTrainer (its model loading, DeepSpeed/FSDP, PEFT,
logging and checkpoints) with the objective and data of `wrpo-train wrpo`:
three responses per prompt (y_ws, y_wt, y_l) tokenized as docs/method.md fixes
them, our losses (wrpo_trl.loss), alpha = alpha_max * t / T at optimizer step t
of T, and the reference log-probs of our pairs file when it has them."""
import dataclasses
import math
from dataclasses import dataclass, field

import torch
from accelerate.utils import is_peft_model
from torch.utils.data import DataLoader
from transformers import AutoTokenizer
from transformers.data.data_collator import DataCollatorMixin
from trl import DPOConfig, DPOTrainer
from trl.models import prepare_deepspeed

from . import loss as L
from .data import RESPONSES, encode_pairs


# DPOConfig options of DPOTrainer's own objective, batching and truncation: WRPOTrainer replaces those
# code paths, so a value other than DPOConfig's default would be silently ignored, and is refused.
IGNORED_DPO_OPTIONS = (
    "loss_type", "loss_weights", "ld_alpha", "f_divergence_type", "f_alpha_divergence_coef", "use_weighting",
    "discopop_tau", "padding_free", "pad_to_multiple_of", "pad_token", "router_aux_loss_coef", "sync_ref_model",
    "ref_model_mixup_alpha", "ref_model_sync_steps",
)


def _dpo_default(name):
    f = DPOConfig.__dataclass_fields__.get(name)
    if f is None:
        return None
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def official_steps(batches_per_epoch, grad_accum, epochs):
    """T as the official trainer (transformers 4.4x) counts it and `wrpo-train` does: whole groups of
    grad_accum micro-batches per epoch (at least one step), rounded down. transformers 5 rounds up and trains
    an epoch's leftover micro-batches as a step of their own."""
    return math.ceil(epochs * max(batches_per_epoch // grad_accum, 1))


@dataclass
class WRPOConfig(DPOConfig):
    """DPOConfig plus our objective's settings; the defaults are the WRPO recipe's."""

    loss: str = field(default="wrpo", metadata={"help": "The objective, as wrpo-train's --loss.", "choices": list(L.LOSSES)})
    alpha_max: float = field(default=0.1, metadata={"help": "Final fusion coefficient alpha (alpha = alpha_max * t / T)."})
    static_alpha: bool = field(default=False, metadata={"help": "Keep alpha at alpha_max from the first step."})
    dpo_chosen: str = field(
        default="target", metadata={"help": "y_w of the pairwise losses: y_wt (target) or y_ws (source).", "choices": ["target", "source"]}
    )
    simpo_gamma: float | None = field(default=None, metadata={"help": "SimPO's margin gamma (default 0.5 beta)."})
    beta: float | None = field(default=None, metadata={"help": "beta (default: 0.01 for wrpo, dpo and sigmoid-mix; 2.0 SimPO; 0.1 IPO)."})
    max_length: int | None = field(
        default=2048,
        metadata={"help": "Prompt + longest response tokens at most; beyond it the prompt is cut to max_prompt_length, "
                  "then every response to max_length - max_prompt_length (the official rule)."},
    )
    max_prompt_length: int = field(default=1800, metadata={"help": "Prompt tokens kept (its end) when an example is too long."})
    precompute_ref_log_probs: bool = field(
        default=True, metadata={"help": "Reference log-probs once before training (read from the pairs file when it has them)."}
    )
    reference_check: float | None = field(
        default=None,
        metadata={
            "help": "At the first step the policy is the reference: stop if the mean over a micro-batch's responses of "
            "|log pi(y|x) - log pi_ref(y|x)| / |y| exceeds this many nats per token (negative: no check; default 1e-3, "
            "or 0.05 under bf16/fp16, from docs/scale-out.md's measurement)."
        },
    )
    truncation_mode: str = field(
        default="keep_end", metadata={"help": "The prompt keeps its end, as the official trainer's (the only mode)."}
    )

    def __post_init__(self):
        if self.loss not in L.LOSSES:
            raise ValueError(f"loss must be one of {', '.join(L.LOSSES)}, got {self.loss!r}")
        if self.beta is None:
            self.beta = L.default_beta(self.loss)
        if self.simpo_gamma is None:
            self.simpo_gamma = 0.5 * self.beta
        if self.max_length is None or self.max_prompt_length >= self.max_length:
            raise ValueError(f"max_prompt_length ({self.max_prompt_length}) must be below max_length ({self.max_length})")
        if self.reference_check is None:
            self.reference_check = 0.05 if (self.bf16 or self.fp16) else 1e-3
        if not L.needs_reference(self.loss) and not self.precompute_ref_log_probs:
            raise ValueError(f"--loss {self.loss} uses no reference model: leave precompute_ref_log_probs at its default (true), "
                             f"which here means no reference is loaded or computed")
        ignored = [f"{name}={getattr(self, name)!r}" for name in IGNORED_DPO_OPTIONS if getattr(self, name) != _dpo_default(name)]
        ignored += [f"truncation_mode={self.truncation_mode!r} (the prompt keeps its end)"] if self.truncation_mode != "keep_end" else []
        if ignored:
            raise ValueError(
                f"WRPOTrainer computes its own objective, batches and truncation, so these DPOConfig options would be "
                f"ignored: {', '.join(ignored)}. Leave them at their defaults (the objective is --loss; see wrpo_trl.loss)"
            )
        super().__post_init__()


@dataclass
class DataCollatorForWRPO(DataCollatorMixin):
    """Stacks each response of `responses` after its prompt, response by response
    ([y_ws of every example; y_wt of every example; y_l ...]), right-padded, with
    the completion mask over the response ids and the reference log-probs as a
    (responses, batch) float64 tensor when the examples carry them (a summed
    log-prob of -300 nats is kept to 1e-13, where bf16 keeps it to 2 nats)."""

    pad_token_id: int
    responses: tuple = RESPONSES
    return_tensors: str = "pt"

    def torch_call(self, examples):
        seqs = [(e["prompt_ids"], e[f"{y}_ids"]) for y in self.responses for e in examples]
        width = max(len(p) + len(r) for p, r in seqs)
        pad = [width - len(p) - len(r) for p, r in seqs]
        out = {
            "input_ids": torch.tensor([p + r + [self.pad_token_id] * n for (p, r), n in zip(seqs, pad)]),
            "attention_mask": torch.tensor([[1] * (len(p) + len(r)) + [0] * n for (p, r), n in zip(seqs, pad)]),
            "completion_mask": torch.tensor([[0] * len(p) + [1] * len(r) + [0] * n for (p, r), n in zip(seqs, pad)]),
            "prompt_id": [e["prompt_id"] for e in examples],
        }
        if "ref_logp_y_l" in examples[0]:
            out["ref_logps"] = torch.tensor([[e[f"ref_logp_{y}"] for e in examples] for y in self.responses], dtype=torch.float64)
        return out


class WRPOTrainer(DPOTrainer):
    """Train with `args.loss` (WRPO by default) on a tokenized pairs dataset
    (`wrpo_trl.load_pairs`) or on our pairs' columns (messages, y_ws, y_wt, y_l),
    which it tokenizes itself."""

    _tag_names = ["trl", "wrpo"]
    _name = "WRPO"

    def __init__(self, model, ref_model=None, args=None, data_collator=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, callbacks=None, optimizers=(None, None), peft_config=None):
        args = args or WRPOConfig("wrpo")
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(model if isinstance(model, str) else model.config._name_or_path)
        self.responses = L.responses(args.loss, args.dpo_chosen)
        pad = processing_class.pad_token_id if processing_class.pad_token_id is not None else processing_class.eos_token_id
        self._pad_token_id = 0 if pad is None else pad
        super().__init__(
            model,
            ref_model=ref_model,
            args=args,
            data_collator=data_collator or DataCollatorForWRPO(self._pad_token_id, self.responses),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
            peft_config=peft_config,
        )

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if "prompt_ids" in dataset.column_names:
            return dataset
        return encode_pairs(dataset, processing_class, args.max_length, args.max_prompt_length, f"{dataset_name} dataset")

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["prompt_id", "prompt_ids"] + [f"{y}_ids" for y in RESPONSES] + [f"ref_logp_{y}" for y in RESPONSES]

    def _prepare_inputs(self, inputs):
        # Under DeepSpeed, transformers casts every floating input to the engine's dtype: bf16 would keep a
        # summed reference log-prob in [256, 512) to the nearest 2 nats. The references travel in float64.
        ref = inputs.pop("ref_logps", None)
        inputs = super()._prepare_inputs(inputs)
        if ref is not None:
            inputs["ref_logps"] = ref.to(device=self.args.device, dtype=torch.float64)
        return inputs

    def train(self, *args, **kwargs):
        """Train for T = official_steps(...) optimizer steps (unless max_steps is set): the official trainer's
        count, which alpha = alpha_max * t / T and the learning-rate schedule are built on."""
        if self.args.max_steps <= 0:
            batches, accum, epochs = len(self.get_train_dataloader()), self.args.gradient_accumulation_steps, self.args.num_train_epochs
            if batches % accum and batches > accum and epochs > 1:
                raise ValueError(
                    f"{batches} micro-batches per epoch are not a multiple of gradient_accumulation_steps ({accum}): the "
                    f"official trainer carries an epoch's {batches % accum} leftover micro-batches into the next epoch's "
                    f"first step, transformers 5 trains them as a step of their own. Run one epoch, or make the micro-batches "
                    f"a multiple of {accum} (or set max_steps)"
                )
            self.args.max_steps = official_steps(batches, accum, epochs)
        return super().train(*args, **kwargs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # The fused LM head returns no logits; evaluate and predict report the loss and metrics only.
        return super().prediction_step(model, inputs, True, ignore_keys)

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix="test"):
        """The loss and the metrics training logs (rewards/*, logps/*), averaged over `test_dataset` (tokenized,
        or our pairs' columns); no predictions: the fused LM head computes no logits."""
        test_dataset = self._prepare_dataset(test_dataset, self.processing_class, self.args, metric_key_prefix)
        if L.needs_reference(self.args.loss) and "ref_logp_y_l" not in test_dataset.column_names:
            # With LoRA the reference is the model with its adapter off, there after training too.
            if self.ref_model is None and self.state.global_step > 0 and not is_peft_model(self.model):
                raise ValueError(
                    f"predict(): the {metric_key_prefix} pairs have no reference log-probs, and after training the model is no "
                    f"longer the reference: run `wrpo-train ref-logps` on them, or predict before training"
                )
            test_dataset = self._precompute_ref_logps(test_dataset, metric_key_prefix, self.args.per_device_eval_batch_size)
        output = super().predict(test_dataset, ignore_keys, metric_key_prefix)
        output.metrics.update({f"{metric_key_prefix}_{k}": sum(v) / len(v) for k, v in self._metrics["eval"].items()})
        self._metrics["eval"].clear()
        return output

    def alpha(self):
        """alpha_max * t / T, t the optimizer steps done (the official trainer's rule)."""
        if self.args.static_alpha:
            return self.args.alpha_max
        return self.args.alpha_max * self.state.global_step / max(self.state.max_steps, 1)

    def _sequence_logps(self, model, inputs):
        """log pi(y|x) of every stacked sequence, summed over its response ids."""
        completion_mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=labels, use_cache=False, fused_lm_head=True)
        return outputs.log_probs[:, -(completion_mask.size(1) - 1):].sum(dim=1), outputs

    def _reference_logps(self, model, inputs):
        # DPOTrainer's reference pass (PEFT adapters off, no checkpointing, autocast) on our stacked
        # sequences; it splits its output in two halves, which are joined back.
        batch = {k: inputs[k] for k in ("input_ids", "attention_mask", "completion_mask")}
        return torch.cat(super().compute_ref_log_probs(model, batch))

    def _precompute_ref_logps(self, dataset, name, batch_size):
        if not L.needs_reference(self.args.loss) or all(f"ref_logp_{y}" in dataset.column_names for y in RESPONSES):
            return dataset
        loader = DataLoader(dataset, batch_size=batch_size, collate_fn=DataCollatorForWRPO(self._pad_token_id, RESPONSES), shuffle=False)
        loader = self.accelerator.prepare(loader)
        if self.ref_model is None and self.is_deepspeed_enabled:
            # Before `train`, ZeRO-3 parameters are still sharded: an inference engine gathers them (as DPOTrainer does).
            if self._precompute_engine is None:
                self._precompute_engine = prepare_deepspeed(self.model, self.accelerator)
            model = self._precompute_engine
        else:
            model = self.ref_model or self.model
        refs = []
        for batch in loader:
            logps = self._reference_logps(model, batch).view(len(RESPONSES), -1).T
            refs.append(self.accelerator.gather_for_metrics(logps).cpu())
        refs = torch.cat(refs).double()
        for j, y in enumerate(RESPONSES):
            dataset = dataset.add_column(f"ref_logp_{y}", refs[:, j].tolist())
        return dataset

    def _compute_loss(self, model, inputs, return_outputs):
        args, mode, n = self.args, ("train" if self.model.training else "eval"), len(self.responses)
        logps, outputs = self._sequence_logps(model, inputs)
        policy = dict(zip(self.responses, logps.chunk(n)))
        lengths = dict(zip(self.responses, inputs["completion_mask"].sum(dim=1).to(logps.dtype).chunk(n)))
        reference = None
        if L.needs_reference(args.loss):
            ref = inputs["ref_logps"] if "ref_logps" in inputs else self._reference_logps(self.ref_model or self.model, inputs).view(n, -1)
            reference = {y: ref[j].to(logps.dtype) for j, y in enumerate(self.responses)}
            if mode == "train" and self.state.global_step == 0 and args.reference_check >= 0:
                self._check_reference(policy, reference, lengths, inputs["prompt_id"])
        alpha = self.alpha()
        losses, rewards = L.objective(
            args.loss, beta=args.beta, alpha=alpha, policy=policy, reference=reference, lengths=lengths,
            dpo_chosen=args.dpo_chosen, gamma=args.simpo_gamma, label_smoothing=args.label_smoothing,
        )
        for key, value in L.metrics(args.loss, alpha, rewards, policy, args.dpo_chosen).items():
            self._metrics[mode][key].append(self.accelerator.gather(value).float().mean().item())
        if L.uses_alpha(args.loss):
            self._metrics[mode]["alpha"].append(alpha)
            self._metrics[mode]["cur_alpha"].append(alpha)  # the official trainer's name
        loss = losses.mean()
        return (loss, outputs) if return_outputs else loss

    def _check_reference(self, policy, reference, lengths, prompt_ids):
        """At step 0 the policy is the reference (Target-SFT): log-probs that differ mean another model or
        template made the pairs' reference log-probs (another truncation is refused by the token counts).
        Read per token and over the micro-batch: two bf16 forwards of different batch shapes differ by up to
        0.02 nats per token on single responses, another model by 0.2 on average (docs/scale-out.md)."""
        per_token = {y: (policy[y] - reference[y]).abs() / lengths[y] for y in self.responses}
        mean = torch.cat(list(per_token.values())).mean().item()
        if mean > self.args.reference_check:
            y, i = max(((y, i) for y in self.responses for i in range(len(prompt_ids))), key=lambda k: per_token[k[0]][k[1]])
            raise ValueError(
                f"at the first step the policy is the reference, but its log-probs differ from the pairs' reference "
                f"log-probs by {mean:.4f} nats per token on average over this micro-batch (at most {self.args.reference_check}); "
                f"the worst, prompt {prompt_ids[i]}: log pi({y}) is {policy[y][i].item():.4f}, the reference "
                f"{reference[y][i].item():.4f} over {int(lengths[y][i])} tokens. They were computed with another "
                f"model or template (or in another precision: raise reference_check)"
            )
