"""Fine-tuning after pruning with every zero kept: full, LoRA with a masked merge, QLoRA (CUDA), fp32 or AMP.

Built on transformers' Trainer and peft. Public API:
- `FinetuneConfig` (config.py): mode, precision, data, steps, lr, ... validated before anything is loaded;
- `finetune(model, config, out_dir, resume=False) -> record` (run.py): trains and writes a checkpoint that
  `lm_eval --model sparse-hf --model_args pretrained=OUT` loads, with the `finetune` record in it;
- `MaskKeeper`, `MaskCallback` (masks.py): ConstantPruningModifier semantics for any Trainer;
- `add_adapters`, `lora_deltas`, `merge_deltas` (lora.py): LoRA on pruned layers and the masked merge;
- `load_training_data` (data.py): MRPC / Billsum / FILE in the evaluation tasks' own formats.
See docs/finetune.md.
"""

from .config import MODES, PRECISIONS, FinetuneConfig
from .lora import add_adapters, lora_deltas, merge_deltas
from .masks import MaskCallback, MaskKeeper
from .run import finetune

__all__ = ["FinetuneConfig", "MODES", "MaskCallback", "MaskKeeper", "PRECISIONS", "add_adapters", "finetune",
           "lora_deltas", "merge_deltas"]
