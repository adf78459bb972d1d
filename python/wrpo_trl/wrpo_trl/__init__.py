"""WRPO on TRL: train with the objective of `wrpo-train wrpo` on GPUs (accelerate,
DeepSpeed, FSDP, PEFT), from the pairs our pipeline writes."""
from .data import Encoder, encode_pairs, load_pairs, read_rows
from .trainer import DataCollatorForWRPO, WRPOConfig, WRPOTrainer

__all__ = ["DataCollatorForWRPO", "Encoder", "encode_pairs", "WRPOConfig", "WRPOTrainer", "load_pairs", "read_rows"]
