"""The pruning plan: the single currency between the ways in (request.py, recipes/) and the engine.

A recipe and the equivalent options (`method=wanda,sparsity=0.5,structure=2:4`) build equal plans, hence
equal masks. Everything here is plain data and its validation; parsing user text is request.py's job
(values.py for single values); nothing here touches a model.

Conventions
-----------
- `sparsity`, `NMStructure` and `BlockStructure`: see values.py.
- Targets are module names or `re:` regexes matched (fullmatch) against module names; empty means every
  Linear / GPT-2 Conv1D inside the transformer blocks. `ignore` uses the same syntax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from .methods import described_options, get_method, get_update, method_names, resolve_options
from .targets import DEFAULT_IGNORE, compile_pattern
from .values import UNSTRUCTURED, BlockStructure, NMStructure, validate_sparsity

SCOPES = ("layer", "global")


@dataclass(frozen=True)
class OwlConfig:
    """OWL (Yin et al. 2023) layer-wise sparsity: outlier threshold `m` (x mean |W X|) and spread `lmbda`."""

    m: float = 5.0
    lmbda: float = 0.08


@dataclass(frozen=True)
class PruneStep:
    """One pruning pass over a set of target layers with one method.

    `sparsity` is the target zero fraction per layer (unstructured or block); for N:M it equals
    `structure.sparsity`.
    `layer_sparsity` overrides it per layer: (name or `re:` pattern, sparsity) pairs, first match wins.
    `update`: an update run on the method's mask (methods.py: it refits the weights or refines the mask), or None.
    `options`: the method's and the update's options by name (methods.py: each row's options dataclass), given
    as a mapping or pairs; they are validated and stored complete and sorted (defaults filled in), so equal
    settings give equal steps.
    `method_options` / `update_options` hold the validated dataclasses.
    """

    method: str = "magnitude"
    sparsity: float = 0.5
    structure: NMStructure | BlockStructure | None = None
    scope: str = "layer"
    targets: tuple[str, ...] = ()
    ignore: tuple[str, ...] = DEFAULT_IGNORE
    layer_sparsity: tuple[tuple[str, float], ...] = ()
    owl: OwlConfig | None = None
    update: str | None = None
    options: Any = ()

    def __post_init__(self) -> None:
        row = get_method(self.method)
        validate_sparsity(self.sparsity)
        if self.scope not in SCOPES:
            raise UserError(f"unknown scope {self.scope!r}; use one of: {', '.join(SCOPES)}")
        if self.scope not in row.scopes:
            able = [name for name in method_names() if self.scope in get_method(name).scopes]
            raise UserError(f"scope={self.scope} is defined for method={'|'.join(able)} only, not {self.method}; "
                            "use scope=layer")
        if self.update is not None and (self.scope != "layer" or not row.takes_update):
            raise UserError(f"update={self.update} cannot follow method={self.method}"
                            f"{'' if row.takes_update else ' (it already sets its weights)'} with scope={self.scope}; "
                            "drop update or use another method with scope=layer")
        if self.update is not None and get_update(self.update).changes == "mask" and row.sets_weights:
            raise UserError(f"update={self.update} refines the mask of a method that keeps the dense weights "
                            f"({'|'.join(n for n in method_names() if not get_method(n).sets_weights)}); "
                            f"method={self.method} sets its own weights for its mask; drop the update")
        method_options, update_options = resolve_options(self.method, self.update, dict(self.options),
                                                         self.structure)
        object.__setattr__(self, "method_options", method_options)
        object.__setattr__(self, "update_options", update_options)
        object.__setattr__(self, "options", tuple(sorted({**described_options(method_options),
                                                          **described_options(update_options)}.items())))
        if isinstance(self.structure, BlockStructure) and not row.block:
            able = [name for name in method_names() if get_method(name).block]
            raise UserError(f"method={self.method} cannot choose block masks ({self.structure}); use "
                            f"method={'|'.join(able)} for block structures")
        if isinstance(self.structure, NMStructure) and abs(self.sparsity - self.structure.sparsity) > 1e-9:
            raise UserError(f"structure {self.structure} fixes sparsity at {self.structure.sparsity:g}, "
                            f"but sparsity={self.sparsity:g} was asked; leave sparsity out for N:M")
        for pattern in (*self.targets, *self.ignore, *(name for name, _ in self.layer_sparsity)):
            compile_pattern(pattern)
        for _, value in self.layer_sparsity:
            validate_sparsity(value)

    def notes(self) -> list[str]:
        """What the method's and the update's options say the user must know about the result."""
        found = [options.note(self.structure) for options in (self.method_options, self.update_options) if options]
        return [note for note in found if note]

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary (method, sparsity, structure, scope, targets, ...)."""
        return {
            "method": self.method,
            "sparsity": self.sparsity,
            "structure": str(self.structure) if self.structure else UNSTRUCTURED,
            "scope": self.scope,
            "targets": list(self.targets),
            "ignore": list(self.ignore),
            "layer_sparsity": [list(pair) for pair in self.layer_sparsity],
            "owl": None if self.owl is None else {"m": self.owl.m, "lmbda": self.owl.lmbda},
            "update": self.update,
            "options": dict(self.options),
        }


@dataclass(frozen=True)
class PruningPlan:
    """Ordered pruning steps plus where they came from.

    `source` is "model_args", "cli" or a recipe path; `recipe_sha256` the recipe file's hash; `notes` the
    things a recipe asked for that were mapped or ignored (reported to the user, never silent).
    """

    steps: tuple[PruneStep, ...]
    source: str = "model_args"
    recipe_sha256: str | None = None
    notes: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "recipe_sha256": self.recipe_sha256,
            "steps": [step.describe() for step in self.steps],
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class CalibrationConfig:
    """Calibration text: `data` is "c4", "wikitext2" or a path (.txt or .jsonl with a `text` field).

    `nsamples` sequences of `seqlen` tokens (capped at the model's context), drawn with `seed`. The defaults
    are the Wanda/SparseGPT papers' (128 x 2048 tokens of C4); on a CPU, 64 x 256 is a practical setting.
    `true_sequential`: each block runs once and each layer is pruned from inputs made by the already pruned
    layers before it in its block (faster; holds the calibration set's activations, see true_sequential.py);
    False (default): the reference protocol, every layer of a block sees the dense block's inputs.
    """

    data: str = "c4"
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0
    true_sequential: bool = False

    def __post_init__(self) -> None:
        if self.nsamples < 1:
            raise UserError(f"nsamples must be >= 1, got {self.nsamples}; e.g. nsamples=64")
        if self.seqlen < 2:
            raise UserError(f"seqlen must be >= 2 tokens, got {self.seqlen}; e.g. seqlen=256")

    def describe(self) -> dict[str, Any]:
        return {"data": self.data, "nsamples": self.nsamples, "seqlen": self.seqlen, "seed": self.seed,
                "true_sequential": self.true_sequential}


__all__ = ["SCOPES", "OwlConfig", "PruneStep", "PruningPlan", "CalibrationConfig", "BlockStructure", "NMStructure"]
