"""LoRA adapters on the pruned linear layers, and the merge that keeps the base's zeros (SparsePEFT-style).

A LoRA delta `scaling * B @ A` is dense: adding it to a pruned weight fills every zero. `merge_deltas` adds
`delta * (W != 0)` instead, so the merged weight has exactly the base's zeros, at the same positions; with
`masked=False` it adds the delta as peft's own `merge_and_unload` does (to show what keeping the mask costs).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError

PEFT_PREFIX = "base_model.model."


def add_adapters(model: nn.Module, layer_names: list[str], r: int, alpha: int, classification: bool) -> nn.Module:
    """`model` wrapped by peft with LoRA (rank `r`, scale `alpha / r`) on the named layers; only the adapters
    train, plus, for a classifier, its head and pooler in full (peft's SEQ_CLS task keeps the head trainable;
    a pooler a checkpoint lacks starts random and must train too)."""
    from peft import LoraConfig, TaskType, get_peft_model

    poolers = sorted({name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name.endswith("pooler")})
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(layer_names),
                        task_type=TaskType.SEQ_CLS if classification else TaskType.CAUSAL_LM,
                        modules_to_save=(poolers or None) if classification else None)
    return get_peft_model(model, config)


@torch.no_grad()
def lora_deltas(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    """{base layer name: the adapter's dense weight delta, shaped like the base weight} for every LoRA layer."""
    from peft.tuners.lora import LoraLayer

    deltas = {}
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer):
            adapter = module.active_adapters[0]
            deltas[name.removeprefix(PEFT_PREFIX)] = module.get_delta_weight(adapter).detach()
    if not deltas:
        raise UserError("the model has no LoRA layer to merge; was it fine-tuned with --mode lora?")
    return deltas


@torch.no_grad()
def merge_deltas(model: nn.Module, deltas: dict[str, torch.Tensor], masked: bool = True) -> dict[str, int]:
    """Add each delta to its layer's weight in `model` (a plain, unwrapped model); returns {layer: weights the
    merge changed}. `masked`: add only where the weight is non-zero, so every zero stays an exact zero."""
    modules = dict(model.named_modules())
    changed = {}
    for name, delta in deltas.items():
        if name not in modules:
            raise UserError(f"LoRA layer {name} is not in the model to merge into; merge into the model it was "
                            "trained on")
        weight = modules[name].weight
        update = delta.to(device=weight.device, dtype=torch.float32)
        if masked:
            update = update * (weight != 0)
        merged = (weight.float() + update).to(weight.dtype)
        changed[name] = int((merged != weight).sum())
        weight.copy_(merged)
    return changed


def unload(peft_model: nn.Module) -> nn.Module:
    """The plain model under a peft wrapper, adapters removed unmerged (trained head copies kept)."""
    return peft_model.unload()


__all__ = ["add_adapters", "lora_deltas", "merge_deltas", "unload"]
