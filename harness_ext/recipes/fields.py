"""Every modifier name and field the recipe formats define, and what one-shot pruning does with each.

Modifier kinds:
- `prune`: mapped onto a PruneStep (`method`: the registry row that lists the modifier runs it);
- `hold`: keeps existing masks during training (ConstantPruningModifier): prunes nothing new;
- `ignore`: does not prune (training schedule, learning rate, distillation, quantization): reported, skipped;
- `reject`: prunes in a way one-shot masks cannot reproduce: an error that says what to use instead.
Fields of a modifier are either `used` (they change the plan) or `ignored` (accepted, reported as ignored:
training schedules, optimizer and Hessian-sampling settings). Any other field is a typo: an error with the
closest known name. The table is rendered in docs/recipes.md.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable

from ..pruning.methods import method_for_modifier

# Fields of SparseML v1 scheduled modifiers (epochs-based training schedule).
V1_SCHEDULE = ("start_epoch", "end_epoch", "update_frequency", "min_start", "min_end", "min_frequency",
               "end_comparator", "log_types", "leave_enabled", "inter_func")
# Fields every SparseML-stage / llm-compressor modifier has (step-based schedule and grouping).
STAGE_BASE = ("index", "group", "start", "end", "update")
# llm-compressor / SparseML (>= 1.6) one-shot sparsity modifiers.
ONESHOT_USED = ("sparsity", "sparsity_profile", "owl_m", "owl_lmbda", "mask_structure", "targets", "ignore")
ONESHOT_IGNORED = STAGE_BASE + ("sequential_update", "sequential_targets")
GRADUAL_USED = ("init_sparsity", "final_sparsity", "params", "mask_type", "global_sparsity")
HESSIAN_SAMPLING = ("num_grads", "damp", "fisher_block_size", "grad_sampler_kwargs")


@dataclass(frozen=True)
class ModifierSpec:
    """What sparse-bench does with one modifier class."""

    name: str
    kind: str
    method: str | None = None
    used: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    global_by_default: bool = False
    reason: str = ""

    @property
    def known_fields(self) -> tuple[str, ...]:
        return self.used + self.ignored


def _prune(name: str, used: Iterable[str], ignored: Iterable[str], reason: str = "",
           global_by_default: bool = False) -> ModifierSpec:
    """A pruning modifier; the method that runs it is the registry row listing it (pruning/methods.py)."""
    return ModifierSpec(name, "prune", method_for_modifier(name), tuple(used), tuple(ignored), global_by_default,
                        reason)


PRUNING_MODIFIERS = (
    _prune("GMPruningModifier", GRADUAL_USED + ("score_type",), V1_SCHEDULE + ("phased",),
           "gradual magnitude pruning"),
    _prune("MagnitudePruningModifier", GRADUAL_USED + ("targets", "mask_structure", "apply_globally"),
           V1_SCHEDULE + STAGE_BASE + ("update_scheduler", "scheduler_args"), "gradual magnitude pruning"),
    _prune("GlobalMagnitudePruningModifier", GRADUAL_USED[:-1], V1_SCHEDULE,
           "magnitude pruning with one threshold across all layers", global_by_default=True),
    _prune("ACDCPruningModifier", ("compression_sparsity", "params", "mask_type", "global_sparsity"),
           V1_SCHEDULE + ("momentum_buffer_reset",),
           "AC/DC alternates dense and magnitude-sparse phases; one-shot keeps the sparse (compressed) phase",
           global_by_default=True),
    _prune("OBSPruningModifier", GRADUAL_USED, V1_SCHEDULE + HESSIAN_SAMPLING + ("num_recomputations",),
           "Optimal Brain Surgeon from gradient Fisher blocks (oBERT); one-shot uses SparseGPT, the OBS update "
           "with the layer-wise Hessian of calibration inputs", global_by_default=True),
    _prune("MFACPruningModifier", GRADUAL_USED,
           V1_SCHEDULE + HESSIAN_SAMPLING + ("use_gradient_buffering", "grads_device", "num_pages",
                                             "available_devices"),
           "M-FAC (matrix-free inverse Fisher OBS); one-shot uses SparseGPT, the OBS update with the layer-wise "
           "Hessian of calibration inputs"),
    _prune("SparseGPTModifier", ONESHOT_USED + ("block_size", "dampening_frac", "percdamp"),
           ONESHOT_IGNORED + ("preserve_sparsity_mask", "offload_hessians", "quantize"), "SparseGPT (OBC)"),
    _prune("WandaPruningModifier", ONESHOT_USED, ONESHOT_IGNORED, "Wanda |W|*||X||"),
)

HOLD_MODIFIERS = (
    ModifierSpec("ConstantPruningModifier", "hold", None, ("params", "targets"), V1_SCHEDULE + STAGE_BASE,
                 reason="holds the zeros already in the weights during training"),
)


def _group(kind: str, reason: str, names: str) -> tuple[ModifierSpec, ...]:
    return tuple(ModifierSpec(name, kind, reason=reason) for name in names.split())


IGNORED_MODIFIERS = (
    _group("ignore", "training schedule or optimizer setting: no training is run",
           "EpochRangeModifier SetLearningRateModifier LearningRateModifier LearningRateFunctionModifier "
           "SetWeightDecayModifier TrainableParamsModifier SetParamModifier GradualParamModifier "
           "SparsificationLoggingModifier ASRegModifier")
    + _group("ignore", "distillation needs training: no training is run",
             "DistillationModifier PerLayerDistillationModifier OutputDistillationModifier")
    + _group("ignore", "quantization is not applied: the model is evaluated unquantized",
             "QuantizationModifier LegacyQuantizationModifier GPTQModifier SmoothQuantModifier "
             "LogarithmicEqualizationModifier AWQModifier AutoRoundModifier SpinQuantModifier QuIPModifier")
)

REJECTED_MODIFIERS = (
    ModifierSpec("MovementPruningModifier", "reject",
                 reason="it scores weights by how they move during fine-tuning, which one-shot pruning cannot "
                        "reproduce; use GMPruningModifier (magnitude) or SparseGPTModifier / WandaPruningModifier"),
    ModifierSpec("RigLPruningModifier", "reject",
                 reason="it regrows weights from gradients during training; use GMPruningModifier or "
                        "SparseGPTModifier for a one-shot mask"),
    ModifierSpec("TopKASTPruningModifier", "reject",
                 reason="its forward/backward masks only exist during training; use GMPruningModifier"),
    ModifierSpec("StructuredPruningModifier", "reject",
                 reason="it removes whole channels or filters; sparse-bench prunes unstructured or N:M"),
    ModifierSpec("LayerPruningModifier", "reject",
                 reason="it removes whole layers; sparse-bench prunes weights inside layers"),
    ModifierSpec("LayerThinningModifier", "reject",
                 reason="it shrinks layer shapes; sparse-bench prunes weights inside layers"),
    ModifierSpec("PowerpropagationModifier", "reject",
                 reason="it re-parametrises weights for sparse training, it prunes nothing by itself"),
    ModifierSpec("REAPPruningModifier", "reject",
                 reason="it removes mixture-of-experts experts; sparse-bench prunes weights inside layers"),
)

MODIFIERS: dict[str, ModifierSpec] = {spec.name: spec for spec in (
    PRUNING_MODIFIERS + HOLD_MODIFIERS + IGNORED_MODIFIERS + REJECTED_MODIFIERS)}


def close_match(word: str, candidates: Iterable[str]) -> str:
    """" (did you mean 'X'?)" for the closest candidate, or "" when none is close."""
    matches = difflib.get_close_matches(str(word), list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {matches[0]!r}?)" if matches else ""


def modifier_spec(name: str) -> ModifierSpec | None:
    return MODIFIERS.get(name)


__all__ = ["ModifierSpec", "MODIFIERS", "PRUNING_MODIFIERS", "HOLD_MODIFIERS", "IGNORED_MODIFIERS",
           "REJECTED_MODIFIERS", "close_match", "modifier_spec", "V1_SCHEDULE", "STAGE_BASE"]
