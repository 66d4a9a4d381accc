"""The `finetune` record: what was trained, how, how fast, with how much memory, and the zeros it kept.

Stored in the output checkpoint's `sparse_bench_checkpoint.json` (key `finetune_record`), from where `sparse-hf`
copies it into lm-eval's results JSON (`config.finetune`). Times in seconds, memory in bytes.
"""

from __future__ import annotations

from typing import Any

import torch

from ..memory import peak_rss_bytes
from .config import FinetuneConfig
from .data import TrainingData


def _zero_table(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, Any]:
    layers = {name: {"numel": after[name]["numel"], "zeros_before": before[name]["zeros"],
                     "zeros_after": after[name]["zeros"]} for name in after}
    numel = sum(layer["numel"] for layer in layers.values())
    zeros_before = sum(layer["zeros_before"] for layer in layers.values())
    zeros_after = sum(layer["zeros_after"] for layer in layers.values())
    return {"sparsity_before": zeros_before / numel if numel else 0.0,
            "sparsity_after": zeros_after / numel if numel else 0.0,
            "zeros_before": zeros_before, "zeros_after": zeros_after, "numel": numel, "layers": layers}


def finetune_record(config: FinetuneConfig, data: TrainingData, state, train_output, seconds: float,
                    zeros_before: dict, zeros_after: dict, held_out: dict, model_name: str) -> dict[str, Any]:
    """The record of one finished run (see the module docstring for units)."""
    tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    return {
        "model": model_name, "mode": config.mode, "precision": config.precision, "data": data.description,
        "steps": int(state.global_step), "epochs": float(state.epoch or 0.0), "lr": config.lr,
        "batch_size": config.batch_size, "grad_accum": config.grad_accum, "seed": config.seed,
        "lora": {"r": config.lora_r, "alpha": config.lora_alpha} if config.mode != "full" else None,
        "masks_kept": config.keep_masks, "train_seconds": seconds, "train_tokens": tokens,
        "tokens_per_second": tokens / seconds if seconds > 0 else None,
        "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
        "mean_train_loss": float(train_output.training_loss),
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_cuda_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
        "held_out": held_out, "zeros": _zero_table(zeros_before, zeros_after),
        "config": config.to_dict(),
    }


__all__ = ["finetune_record"]
