"""Grid spec files: YAML -> a validated `GridSpec` -> the list of `Cell`s to run.

A cell is one (model, dtype, pruning) combination: one model load (plus one pruning, cached) evaluated on all
the grid's tasks. The dense baseline of every (model, dtype) is always a cell. N:M structures fix their own
sparsity, so they ignore `sparsities`; a `{recipe: FILE}` method fixes sparsity and structure itself.

Every mistake in a spec is a `UserError` naming the file and the field, e.g.
`grid.yaml: tasks[1].limit: must be a positive integer or a fraction in (0, 1], got 'all'`.
Keys are documented in docs/leaderboard.md.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..harness_ext.errors import UserError
from ..harness_ext.pruning.methods import split_grid_name
from ..harness_ext.pruning.plan import (
    UNSTRUCTURED,
    CalibrationConfig,
    PruningPlan,
    parse_structure,
    plan_from_arguments,
)
from ..harness_ext.recipes.yaml_loader import load_yaml

DTYPES = ("float32", "float16", "bfloat16")
DENSE = "dense"
SPEC_HINT = "fix that key in the grid spec (docs/leaderboard.md lists the keys and their values)"


@dataclass(frozen=True)
class MethodSpec:
    """One entry of `methods`: a registered method (with its scope, weight update and options, e.g.
    `wanda+admm`) or a recipe file (with its sha256)."""

    method: str | None = None
    scope: str = "layer"
    recipe: str | None = None
    recipe_sha256: str | None = None
    update: str | None = None
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        if self.recipe:
            return f"recipe:{Path(self.recipe).stem}"
        name = self.method + (f"+{self.update}" if self.update else "")
        name += "".join(f",{key}={value}" for key, value in self.options)
        return name if self.scope == "layer" else f"{name}-{self.scope}"


@dataclass(frozen=True)
class TaskSpec:
    """One lm-eval task with its own `limit` (count, or fraction of the docs) and `num_fewshot`.

    `metrics` picks the columns shown (first = the primary metric, used for delta vs dense, rank and plots);
    empty shows every metric the task reports.
    """

    name: str
    limit: int | float | None = None
    num_fewshot: int | None = None
    metrics: tuple[str, ...] = ()


@dataclass(frozen=True)
class PerplexitySpec:
    """Token-level perplexity (the pruning papers' protocol): `data` is "wikitext2" or a text file.
    `agreement_top_k`: KL and top-1 agreement with the dense model on the same windows and forward, against the
    dense model's top-k cached once (leaderboards/agreement.py); 0 switches them off."""

    data: str = "wikitext2"
    seqlen: int = 256
    max_tokens: int = 16384
    agreement_top_k: int = 64


@dataclass(frozen=True)
class LatencySpec:
    """Latency protocol: forward of `batch` x `seqlen` tokens; greedy generation of `new_tokens` at batch 1."""

    batch: int = 1
    seqlen: int = 128
    new_tokens: int = 32
    repeats: int = 5


@dataclass(frozen=True)
class GridSpec:
    name: str
    models: tuple[str, ...]
    methods: tuple[MethodSpec, ...]
    sparsities: tuple[float, ...]
    structures: tuple[str, ...]
    dtypes: tuple[str, ...]
    tasks: tuple[TaskSpec, ...]
    calibration: CalibrationConfig
    perplexity: PerplexitySpec | None = PerplexitySpec()
    latency: LatencySpec | None = LatencySpec()
    include_path: str | None = None
    device: str = "cpu"
    batch_size: int = 8
    bootstrap_iters: int = 1000
    prune_dtype: str = "float32"
    seed: int = 0
    log_samples: bool = False
    source: str = "<dict>"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready and re-parseable (paths already resolved)."""
        data = asdict(self)
        data["calibration"] = self.calibration.describe()
        return data


@dataclass(frozen=True)
class Cell:
    """One row of the leaderboard. `method` None is the dense baseline; `structure` is "unstructured",
    "N:M", "dense" or "recipe"; `sparsity` the target fraction (None for recipes)."""

    model: str
    dtype: str
    method: MethodSpec | None
    sparsity: float | None
    structure: str

    @property
    def is_dense(self) -> bool:
        return self.method is None

    @property
    def method_label(self) -> str:
        return DENSE if self.method is None else self.method.label

    def plan(self) -> PruningPlan | None:
        """The pruning plan (None for dense); recipes are parsed by the recipes module."""
        if self.method is None:
            return None
        if self.method.recipe:
            return plan_from_arguments(recipe=self.method.recipe)
        structure = None if self.structure == UNSTRUCTURED else self.structure
        return plan_from_arguments(self.method.method, self.sparsity, structure, scope=self.method.scope,
                                   source="leaderboard", update=self.method.update, options=dict(self.method.options))

    def describe(self) -> dict[str, Any]:
        return {"model": self.model, "dtype": self.dtype, "method": self.method_label,
                "scope": None if self.method is None else self.method.scope,
                "recipe": None if self.method is None else self.method.recipe,
                "recipe_sha256": None if self.method is None else self.method.recipe_sha256,
                "sparsity": self.sparsity, "structure": self.structure}

    @property
    def cell_id(self) -> str:
        """Readable and unique file name stem, e.g. `smollm2-135m_wanda_2-4_float32_1a2b3c4d`."""
        target = f"{self.sparsity:g}" if self.structure == UNSTRUCTURED else self.structure
        parts = [Path(self.model.rstrip("/")).name, self.method_label, *([] if self.is_dense else [target]),
                 self.dtype, _short_hash(self.describe())]
        return "_".join(re.sub(r"[^A-Za-z0-9.+-]+", "-", part) for part in parts)


def _short_hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


# --- parsing -------------------------------------------------------------------------------------------

class _Fields:
    """Reads one mapping of the spec, naming `file: path.to.field` in every error."""

    def __init__(self, data: Any, where: str, source: str, known: tuple[str, ...]) -> None:
        self.where, self.source = where, source
        if not isinstance(data, dict):
            self.fail("", f"must be a mapping of keys to values, got {type(data).__name__}")
        unknown = sorted(set(map(str, data)) - set(known))
        if unknown:
            self.fail(unknown[0], f"unknown key; known keys: {', '.join(known)}")
        self.data = data

    def fail(self, key: str, message: str):
        """UserError "SOURCE: KEY: MESSAGE; what to do" (SPEC_HINT unless the message says what to do)."""
        name = f"{self.where}.{key}" if self.where and key else (self.where or key)
        if "; " not in message:
            message = f"{message}; {SPEC_HINT}"
        raise UserError(f"{self.source}: {name or 'spec'}: {message}")

    def get(self, key: str, default: Any = None, required: bool = False) -> Any:
        if key not in self.data or self.data[key] is None:
            if required:
                self.fail(key, "is required")
            return default
        return self.data[key]

    def integer(self, key: str, default: int | None, minimum: int = 1) -> int | None:
        value = self.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(key, f"must be an integer >= {minimum}, got {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            self.fail(key, f"must be true or false, got {value!r}")
        return value

    def items(self, key: str, required: bool = True, default: tuple[Any, ...] = ()) -> list[Any]:
        value = self.get(key, list(default) if not required else None, required=required)
        if not isinstance(value, list) or (required and not value):
            self.fail(key, f"must be a non-empty list, got {value!r}")
        return value


def load_spec(path: str | Path) -> GridSpec:
    """Read and validate a grid spec YAML file (relative paths inside it are relative to the file).

    The recipes' YAML loader reads it: YAML 1.2 numbers (an unquoted 2:4 stays "2:4"), duplicate keys refused,
    the alias budget (an alias bomb is refused in milliseconds), errors naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"grid spec {path} not found; give the path of a YAML file (see docs/leaderboard.md)")
    data, _ = load_yaml(path, kind="grid spec")
    return parse_spec(data, source=str(path), base_dir=path.parent)


GRID_KEYS = ("name", "models", "methods", "sparsities", "structures", "dtypes", "tasks", "calibration",
             "perplexity", "latency", "include_path", "device", "batch_size", "bootstrap_iters",
             "prune_dtype", "seed", "log_samples")


def parse_spec(data: Any, source: str = "<dict>", base_dir: Path | None = None) -> GridSpec:
    """Validate a spec mapping (as read from YAML) into a `GridSpec`; raises UserError naming the field."""
    fields = _Fields(data, "", source, GRID_KEYS)
    base_dir = Path(base_dir or ".")
    models = [_model_name(fields, i, m) for i, m in enumerate(fields.items("models"))]
    methods = [_method(fields, i, entry, base_dir) for i, entry in enumerate(fields.items("methods", False))]
    sparsities = [_sparsity(fields, i, s) for i, s in enumerate(fields.items("sparsities", False))]
    structures = [_structure(fields, i, s)
                  for i, s in enumerate(fields.items("structures", False, (UNSTRUCTURED,)))]
    if any(m.recipe is None for m in methods) and UNSTRUCTURED in structures and not sparsities:
        fields.fail("sparsities", "is required for unstructured pruning (e.g. [0.5]); or list only N:M structures")
    dtypes = [_choice(fields, f"dtypes[{i}]", d, DTYPES)
              for i, d in enumerate(fields.items("dtypes", False, ("float32",)))]
    tasks = [_task(fields, i, entry) for i, entry in enumerate(fields.items("tasks"))]
    include_path = fields.get("include_path")
    if include_path is not None:
        include_path = str((base_dir / str(include_path)).resolve())
        if not Path(include_path).is_dir():
            fields.fail("include_path", f"folder {include_path} not found")
    spec = GridSpec(
        name=str(fields.get("name", Path(source).stem)), models=tuple(models), methods=tuple(methods),
        sparsities=tuple(sparsities), structures=tuple(structures), dtypes=tuple(dtypes), tasks=tuple(tasks),
        calibration=_calibration(fields, base_dir), perplexity=_perplexity(fields, base_dir),
        latency=_latency(fields), include_path=include_path, device=str(fields.get("device", "cpu")),
        batch_size=fields.integer("batch_size", 8), bootstrap_iters=fields.integer("bootstrap_iters", 1000, 0),
        prune_dtype=_choice(fields, "prune_dtype", fields.get("prune_dtype", "float32"), DTYPES),
        seed=fields.integer("seed", 0, 0), log_samples=_flag(fields, "log_samples"), source=source)
    for index, cell in enumerate(expand_cells(spec)):  # build every plan now: errors before any model loads
        try:
            if cell.method is not None and cell.method.recipe is None:
                cell.plan()
        except UserError as error:
            fields.fail(f"methods[{methods.index(cell.method)}]", f"{cell.method_label} with structure "
                        f"{cell.structure}, sparsity {cell.sparsity}: {error}")
    return spec


def _model_name(fields: _Fields, index: int, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        fields.fail(f"models[{index}]", f"must be a model path, hub id or short name, got {value!r}")
    return value.strip()


def _flag(fields: _Fields, key: str) -> bool:
    value = fields.get(key, False)
    if not isinstance(value, bool):
        fields.fail(key, f"must be true or false, got {value!r}")
    return value


def _choice(fields: _Fields, key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        fields.fail(key, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def _sparsity(fields: _Fields, index: int, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        fields.fail(f"sparsities[{index}]", f"must be a fraction in (0, 1) such as 0.5, got {value!r} "
                    "(the dense baseline is always included)")
    return float(value)


def _structure(fields: _Fields, index: int, value: Any) -> str:
    if isinstance(value, int):  # YAML 1.1 (e.g. yaml.safe_load) reads an unquoted 2:4 as the integer 124
        fields.fail(f"structures[{index}]", f"got the number {value}; quote N:M structures, e.g. \"2:4\"")
    try:
        structure = parse_structure(str(value))
    except UserError as error:
        fields.fail(f"structures[{index}]", str(error))
    return UNSTRUCTURED if structure is None else str(structure)


def _method(fields: _Fields, index: int, value: Any, base_dir: Path) -> MethodSpec:
    where = f"methods[{index}]"
    if isinstance(value, str):
        value = {"method": value}
    entry = _Fields(value, where, fields.source, ("method", "scope", "recipe", "update", "options"))
    recipe = entry.get("recipe")
    if recipe is not None:
        if entry.get("method") is not None:
            entry.fail("recipe", "give either method or recipe, not both")
        recipe_path = (base_dir / str(recipe)).resolve()
        if not recipe_path.is_file():
            entry.fail("recipe", f"recipe file {recipe_path} not found")
        try:  # a bad recipe is reported now, before any model loads
            plan_from_arguments(recipe=str(recipe_path))
        except UserError as error:
            entry.fail("recipe", str(error))
        digest = hashlib.sha256(recipe_path.read_bytes()).hexdigest()
        return MethodSpec(recipe=str(recipe_path), recipe_sha256=digest)
    name = str(entry.get("method", required=True))
    if entry.get("update") is not None:
        if "+" in name:
            entry.fail("update", "given twice; write method: wanda+admm or update: admm, not both")
        name = f"{name}+{entry.get('update')}"
    try:
        method, update = split_grid_name(name)
    except UserError as error:
        entry.fail("method", str(error))
    options = entry.get("options", {})
    if not isinstance(options, dict):
        entry.fail("options", f"must be a mapping of method options such as {{ria_exponent: 0.5}}, got {options!r}")
    return MethodSpec(method=method, scope=str(entry.get("scope", "layer")), update=update,
                      options=tuple(sorted(options.items())))


def _task(fields: _Fields, index: int, value: Any) -> TaskSpec:
    if isinstance(value, str):
        value = {"name": value}
    entry = _Fields(value, f"tasks[{index}]", fields.source, ("name", "limit", "num_fewshot", "metrics"))
    name = entry.get("name", required=True)
    if not isinstance(name, str):
        entry.fail("name", f"must be an lm-eval task name, got {name!r}")
    limit = entry.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0
                              or (isinstance(limit, float) and limit > 1)):
        entry.fail("limit", f"must be a positive integer or a fraction in (0, 1], got {limit!r}")
    metrics = entry.get("metrics", [])
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        entry.fail("metrics", f"must be a list of metric names, got {metrics!r}")
    return TaskSpec(name=name, limit=limit, num_fewshot=entry.integer("num_fewshot", None, 0),
                    metrics=tuple(metrics))


def _data_path(entry: _Fields, key: str, value: Any, base_dir: Path, names: tuple[str, ...]) -> str:
    """A named data set stays a name; anything else is a file relative to the spec."""
    if not isinstance(value, str):
        entry.fail(key, f"must be one of {', '.join(names)} or a file path, got {value!r}")
    if value in names:
        return value
    path = (base_dir / value).resolve()
    if not path.is_file():
        entry.fail(key, f"file {path} not found; use one of {', '.join(names)} or an existing file")
    return str(path)


def _calibration(fields: _Fields, base_dir: Path) -> CalibrationConfig:
    entry = _Fields(fields.get("calibration", {}), "calibration", fields.source,
                    ("data", "nsamples", "seqlen", "seed", "true_sequential"))
    defaults = CalibrationConfig()
    return CalibrationConfig(
        data=_data_path(entry, "data", entry.get("data", defaults.data), base_dir, ("c4", "wikitext2")),
        nsamples=entry.integer("nsamples", defaults.nsamples), seqlen=entry.integer("seqlen", defaults.seqlen, 2),
        seed=entry.integer("seed", defaults.seed, 0),
        true_sequential=entry.boolean("true_sequential", defaults.true_sequential))


def _perplexity(fields: _Fields, base_dir: Path) -> PerplexitySpec | None:
    if "perplexity" in fields.data and fields.data["perplexity"] is None:
        return None
    entry = _Fields(fields.get("perplexity", {}), "perplexity", fields.source,
                    ("data", "seqlen", "max_tokens", "agreement_top_k"))
    defaults = PerplexitySpec()
    return PerplexitySpec(
        data=_data_path(entry, "data", entry.get("data", defaults.data), base_dir, ("wikitext2",)),
        seqlen=entry.integer("seqlen", defaults.seqlen, 2), max_tokens=entry.integer("max_tokens", defaults.max_tokens),
        agreement_top_k=entry.integer("agreement_top_k", defaults.agreement_top_k, 0))


def _latency(fields: _Fields) -> LatencySpec | None:
    if "latency" in fields.data and fields.data["latency"] is None:
        return None
    entry = _Fields(fields.get("latency", {}), "latency", fields.source, ("batch", "seqlen", "new_tokens", "repeats"))
    defaults = LatencySpec()
    return LatencySpec(batch=entry.integer("batch", defaults.batch), seqlen=entry.integer("seqlen", defaults.seqlen),
                       new_tokens=entry.integer("new_tokens", defaults.new_tokens),
                       repeats=entry.integer("repeats", defaults.repeats))


# --- cells -----------------------------------------------------------------------------------------------

def expand_cells(spec: GridSpec) -> list[Cell]:
    """Every cell of the grid in a fixed order: per model and dtype, dense first, then methods x structures x
    sparsities in spec order (N:M once, ignoring sparsities; recipes once)."""
    cells: list[Cell] = []
    for model in spec.models:
        for dtype in spec.dtypes:
            cells.append(Cell(model, dtype, None, 0.0, DENSE))
            for method in spec.methods:
                if method.recipe:
                    cells.append(Cell(model, dtype, method, None, "recipe"))
                    continue
                for structure in spec.structures:
                    if structure == UNSTRUCTURED:
                        cells.extend(Cell(model, dtype, method, s, structure) for s in spec.sparsities)
                    else:
                        cells.append(Cell(model, dtype, method, parse_structure(structure).sparsity, structure))
    return list(dict.fromkeys(cells))


def prune_key(cell: Cell, spec: GridSpec, model_fingerprint: str) -> dict[str, Any]:
    """What determines a pruned model: model weights, method, sparsity, structure, recipe, calibration
    (seed included) and the dtype pruning ran in. The evaluation dtype is not part of it."""
    return {"model": cell.model, "model_fingerprint": model_fingerprint, "method": cell.method_label,
            "scope": cell.method.scope if cell.method else None, "sparsity": cell.sparsity,
            "structure": cell.structure, "recipe_sha256": cell.method.recipe_sha256 if cell.method else None,
            "calibration": spec.calibration.describe(), "prune_dtype": spec.prune_dtype}


def parse_shard(text: str) -> tuple[int, int]:
    """"i/N" (0 <= i < N) -> (i, N)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise UserError(f"--shard must be i/N with 0 <= i < N, got {text!r}; "
                        "write e.g. 0/4 .. 3/4 (a Slurm array index)")
    return int(match.group(1)), int(match.group(2))


def pruned_model_groups(cells: list[Cell]) -> list[list[Cell]]:
    """Cells grouped by the pruned model they load (a dtype sweep of one mask is one group), in grid order."""
    groups: dict[tuple, list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.model, cell.method, cell.sparsity, cell.structure), []).append(cell)
    return list(groups.values())


def shard_cells(cells: list[Cell], index: int, count: int) -> list[Cell]:
    """Shard `index` of `count`: cells that share a pruned model stay together; groups are dealt round-robin
    in grid order, so every cell lands in exactly one shard whatever machine computes the split."""
    return [cell for number, group in enumerate(pruned_model_groups(cells)) if number % count == index
            for cell in group]


__all__ = ["DTYPES", "DENSE", "MethodSpec", "TaskSpec", "PerplexitySpec", "LatencySpec", "GridSpec", "Cell",
           "load_spec", "parse_spec", "expand_cells", "prune_key", "parse_shard", "shard_cells",
           "pruned_model_groups"]
