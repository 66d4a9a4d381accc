"""The pruning plan: the single currency between model_args, CLI flags, recipe files and the engine.

A recipe and the equivalent shortcut (`method=wanda,sparsity=0.5,structure=2:4`) build equal plans, hence
equal masks. Everything here is plain data and validation; nothing touches a model.

Conventions
-----------
- `sparsity` is the fraction of weights set to zero in each targeted layer, in [0, 1).
- `NMStructure(n, m)` keeps at most `n` non-zero weights in every group of `m` consecutive weights along a
  layer's input dimension (NVIDIA's and Zhou et al.'s "N:M": 2:4 keeps 2 of every 4, sparsity 1 - n/m).
- `BlockStructure(rows, columns)` ("block:RxC") prunes whole R x C tiles of the (out, in) weight, ranked by the
  sum of their members' scores; the sparsity stays free (SparseML's `mask_type: [1, 4]`, FBGEMM's 1x4 blocks).
- Targets are module names or `re:` regexes matched (fullmatch) against module names; empty means every
  Linear / GPT-2 Conv1D inside the transformer blocks. `ignore` uses the same syntax.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ..errors import UserError

SCOPES = ("layer", "global")
UNSTRUCTURED = "unstructured"
DEFAULT_IGNORE = ("lm_head",)


@dataclass(frozen=True)
class NMStructure:
    """Keep at most `n` non-zeros in every `m` consecutive input weights."""

    n: int
    m: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


@dataclass(frozen=True)
class BlockStructure:
    """Prune whole `rows` x `columns` tiles of the (out, in) weight; `block:1x4` tiles 4 consecutive inputs."""

    rows: int
    columns: int

    @property
    def size(self) -> int:
        return self.rows * self.columns

    def __str__(self) -> str:
        return f"block:{self.rows}x{self.columns}"


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
    `update`: a weight update run on the method's mask (`admm`), or None. `options`: the method's and the
    update's options by name (methods.py: each row's options dataclass), given as a mapping or pairs; they are
    validated and stored complete and sorted (defaults filled in), so equal settings give equal steps.
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
        from .methods import described_options, get_method, method_names, resolve_options

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


def validate_method(method: str) -> str:
    """`method` if the registry has it; UserError listing the registered names otherwise."""
    from .methods import get_method

    return get_method(method).name


def validate_sparsity(sparsity: float) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise UserError(f"sparsity must be a number in [0, 1), got {sparsity!r}; write it as a fraction, e.g. 0.5")
    if not 0.0 <= float(sparsity) < 1.0:
        raise UserError(f"sparsity must be in [0, 1) (fraction of weights set to zero), got {sparsity}; "
                        "for 50 % write 0.5")
    return float(sparsity)


def parse_structure(text: str | None) -> NMStructure | BlockStructure | None:
    """Parse "unstructured" / "0:0" / None -> None, "N:M" (0 < N < M) -> NMStructure, "block:RxC" ->
    BlockStructure (block:1x1 is unstructured)."""
    if text is None:
        return None
    value = str(text).strip().lower()
    if value in ("", UNSTRUCTURED, "0:0"):
        return None
    if value.startswith("block:"):
        return parse_block(text)
    match = re.fullmatch(r"(\d+):(\d+)", value)
    if not match:
        raise UserError(f"malformed structure {text!r}; use 'unstructured', N:M such as 2:4 or block:RxC such as "
                        "block:1x4")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise UserError(f"impossible N:M structure {text!r}: need 0 < N < M (keep N of every M weights); "
                        "write e.g. 2:4")
    return NMStructure(n, m)


def parse_block(text: str) -> BlockStructure | None:
    """"block:RxC" (R, C >= 1) -> BlockStructure; block:1x1 is unstructured (None)."""
    match = re.fullmatch(r"block:(\d+)x(\d+)", str(text).strip().lower())
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise UserError(f"malformed block structure {text!r}; write block:RxC with R, C >= 1, e.g. block:1x4")
    rows, columns = int(match.group(1)), int(match.group(2))
    return None if rows == columns == 1 else BlockStructure(rows, columns)


def parse_flag(name: str, value: bool | str) -> bool:
    """A yes/no argument given as a bool or as lm-eval model_args text (true/false, 1/0, yes/no)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise UserError(f"{name} must be true or false, got {value!r}; write {name}=true or {name}=false")


def parse_integer(name: str, value: float | str) -> int:
    """A whole-number argument given as an int or as lm-eval model_args text ("128"; lm-eval casts "128.0" to
    a float): anything else, 1.5 included, is an error rather than silently truncated."""
    if isinstance(value, bool):
        raise UserError(f"{name} must be a whole number, got {value!r}; write it without a fraction, e.g. {name}=128")
    try:
        number = float(value) if not isinstance(value, int) else value
    except (TypeError, ValueError):
        number = None
    if number is None or isinstance(number, float) and not number.is_integer():
        raise UserError(f"{name} must be a whole number, got {value!r}; write it without a fraction, e.g. {name}=128")
    return int(number)


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A target/ignore entry as a regex: `re:EXPR` is EXPR, anything else an exact module name."""
    if pattern.startswith("re:"):
        try:
            return re.compile(pattern[3:])
        except re.error as error:
            raise UserError(f"bad regex {pattern!r}: {error}; fix the pattern after re:") from None
    return re.compile(re.escape(pattern))


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    """True if module `name` matches one of the target/ignore patterns (regexes must match the whole name)."""
    return any(compile_pattern(pattern).fullmatch(name) for pattern in patterns)


def shortcut_plan(method: str | None, sparsity: float | None, structure: str | None = None,
                  scope: str = "layer", source: str = "model_args", **step_options: Any) -> PruningPlan:
    """Build the one-step plan that `method=...,sparsity=...,structure=...` shortcuts describe.

    For N:M, `sparsity` may be omitted (it is fixed by the structure) or must equal it. `step_options` are
    PruneStep fields (`update`, `options`, `targets`, `owl`, ...).
    Raises UserError on anything invalid, before any model is loaded.
    """
    if method is None:
        from .methods import method_names

        raise UserError(f"sparsity/structure given without method; add method={'|'.join(method_names())}")
    nm = parse_structure(structure)
    if sparsity is None:
        if not isinstance(nm, NMStructure):
            raise UserError(f"method={method} needs a target; add sparsity=FRACTION (e.g. 0.5) or structure=N:M")
        sparsity = nm.sparsity
    step = PruneStep(method=validate_method(method), sparsity=validate_sparsity(sparsity), structure=nm,
                     scope=scope, **step_options)
    return PruningPlan(steps=(step,), source=source)


def plan_from_arguments(method: str | None = None, sparsity: float | None = None, structure: str | None = None,
                        scope: str = "layer", recipe: str | None = None, source: str = "model_args",
                        update: str | None = None, options: Mapping[str, Any] | None = None,
                        **step_options: Any) -> PruningPlan | None:
    """The plan user arguments describe: a recipe file, the method/sparsity/structure shortcut, or None when
    nothing asks for pruning. One function for model_args, the CLI and grid cells. `update` is a weight update
    (`admm`); `options` the method's / update's options by name (methods.py)."""
    if recipe is not None:
        if method is not None or sparsity is not None or structure is not None or update or options:
            raise UserError("a recipe already defines method, sparsity, structure and options; give the recipe "
                            "or method/sparsity/structure/update/options, not both")
        from ..recipes import load_recipe

        return load_recipe(str(recipe))  # lm-eval casts model_args values: recipe=0.5 arrives as a float
    if method is None and sparsity is None and structure is None:
        if update or options:
            raise UserError(f"{'update' if update else 'method options'} given without method; add method=NAME")
        return None
    return shortcut_plan(method, sparsity, structure, scope=scope, source=source, update=update,
                         options=dict(options or {}), **step_options)


__all__ = [
    "SCOPES", "UNSTRUCTURED", "DEFAULT_IGNORE", "NMStructure", "BlockStructure", "OwlConfig", "PruneStep",
    "PruningPlan", "CalibrationConfig", "validate_method", "validate_sparsity", "parse_structure",
    "parse_block", "parse_flag", "parse_integer", "compile_pattern", "matches_any", "shortcut_plan", "plan_from_arguments",
]
