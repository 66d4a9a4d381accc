"""Grid spec files: YAML -> a validated `GridSpec` (spec.py); every pruning plan is built here once, so a bad
grid fails before any model loads.

Every mistake in a spec is a `UserError` naming the file and the field, e.g.
`grid.yaml: tasks[1].limit: must be a positive integer or a fraction in (0, 1], got 'all'`.
Keys are documented in docs/leaderboard.md.
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path
from typing import Any

from ..harness_ext.errors import UserError
from ..harness_ext.finetune.config import GRID_KEYS as FINETUNE_GRID_KEYS
from ..harness_ext.finetune.config import FinetuneConfig
from ..harness_ext.pruning.methods import split_grid_name
from ..harness_ext.pruning.options import BY_NAME, PLAN, parse_option
from ..harness_ext.pruning.plan import CalibrationConfig
from ..harness_ext.pruning.request import parse_request
from ..harness_ext.pruning.values import UNSTRUCTURED, parse_structure
from ..harness_ext.recipes.yaml_loader import load_yaml
from ..harness_ext.runtime.choose import parse_runtime
from ..harness_ext.typed_values import WrongValue, check_flag, check_number
from .cells import expand_cells
from .spec import DTYPES, AnalysisSpec, GridSpec, LatencySpec, MethodSpec, PerplexitySpec, TaskSpec

LOGGER = logging.getLogger("sparse_bench.leaderboards")

# A methods entry takes every plan option of the table (options.py) by its name but the grid's own axes
# (`sparsities`, `structures`); a method's options may also be grouped under `options:`.
ENTRY_OPTIONS = tuple(name for name, row in BY_NAME.items()
                      if row.group == PLAN and name not in ("method", "scope", "update", "sparsity", "structure"))
METHOD_KEYS = ("method", "scope", "recipe", "update", "options", *ENTRY_OPTIONS)
SPEC_HINT = "fix that key in the grid spec (docs/leaderboard.md lists the keys and their values)"


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
        return None if value is None else self.checked(key, check_number, value, integer=True, minimum=minimum)

    def boolean(self, key: str, default: bool = False) -> bool:
        return self.checked(key, check_flag, self.get(key, default))

    def checked(self, key: str, check: Any, value: Any, **limits: Any) -> Any:
        """`check(value, **limits)` (typed_values), its complaint reported as `KEY: must be ...`."""
        try:
            return check(value, **limits)
        except WrongValue as problem:
            self.fail(key, f"must be {problem}")

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
             "perplexity", "latency", "finetune", "include_path", "device", "batch_size", "bootstrap_iters",
             "prune_dtype", "seed", "log_samples", "analysis", "metadata")


def parse_spec(data: Any, source: str = "<dict>", base_dir: Path | None = None) -> GridSpec:
    """Validate a spec mapping (as read from YAML) into a `GridSpec`; raises UserError naming the field."""
    fields = _Fields(data, "", source, GRID_KEYS)
    base_dir = Path(base_dir or ".")
    models = [_model_name(fields, i, m) for i, m in enumerate(fields.items("models"))]
    methods = [_method(fields, i, entry, base_dir) for i, entry in enumerate(fields.items("methods", False))]
    sparsities = [_sparsity(fields, i, s) for i, s in enumerate(fields.items("sparsities", False))]
    structures = [_structure(fields, i, s)
                  for i, s in enumerate(fields.items("structures", False, (UNSTRUCTURED,)))]
    free = [s for s in structures if s == UNSTRUCTURED or s.startswith("block:")]
    if any(m.recipe is None for m in methods) and free and not sparsities:
        fields.fail("sparsities", f"is required for {free[0]} pruning (e.g. [0.5]); or list only N:M structures")
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
        latency=_latency(fields), analysis=_analysis(fields), finetune=_finetune(fields), include_path=include_path,
        metadata=_settings(fields, "metadata", "{max_bill_tokens: 640}"),
        device=str(fields.get("device", "cpu")),
        batch_size=fields.integer("batch_size", 8), bootstrap_iters=fields.integer("bootstrap_iters", 1000, 0),
        prune_dtype=_choice(fields, "prune_dtype", fields.get("prune_dtype", "float32"), DTYPES),
        seed=fields.integer("seed", 0, 0), log_samples=fields.boolean("log_samples"), source=source)
    for index, cell in enumerate(expand_cells(spec)):  # build every plan now: errors before any model loads
        try:
            if not (cell.is_dense or cell.is_recipe):
                cell.plan()
        except UserError as error:
            fields.fail(f"methods[{methods.index(cell.method)}]", f"{cell.method_label} with structure "
                        f"{cell.structure_label}, sparsity {cell.sparsity}: {error}")
    return spec


def _model_name(fields: _Fields, index: int, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        fields.fail(f"models[{index}]", f"must be a model path, hub id or short name, got {value!r}")
    return value.strip()


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
    entry = _Fields(value, where, fields.source, METHOD_KEYS)
    recipe = entry.get("recipe")
    if recipe is not None:
        if entry.get("method") is not None:
            entry.fail("recipe", "give either method or recipe, not both")
        ignored = [key for key in entry.data if key != "recipe"]
        if ignored:
            entry.fail(ignored[0], f"a recipe already defines the pruning, so {', '.join(ignored)} would be ignored; "
                       "give the recipe or these options, not both")
        recipe_path = (base_dir / str(recipe)).resolve()
        if not recipe_path.is_file():
            entry.fail("recipe", f"recipe file {recipe_path} not found")
        try:  # a bad recipe is reported now, before any model loads
            parse_request({"recipe": str(recipe_path)}, source="leaderboard")
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
    options = _method_options(entry)
    return MethodSpec(method=method, scope=str(entry.get("scope", "layer")), update=update,
                      options=tuple(sorted(options.items())))


def _method_options(entry: _Fields) -> dict[str, Any]:
    """A methods entry's pruning options, each typed by the option table (`parse_option`)."""
    given = {key: entry.get(key) for key in ENTRY_OPTIONS if entry.get(key) is not None}
    nested = entry.get("options", {})  # the older spelling {options: {ria_exponent: 0.5}}: same keys, one level down
    if not isinstance(nested, dict):
        entry.fail("options", f"must be a mapping of method options such as {{ria_exponent: 0.5}}, got {nested!r}")
    if nested:
        LOGGER.warning("%s: %s.options: is deprecated; write its keys in the entry itself, e.g. "
                       "{method: ria, ria_exponent: 0.5}", entry.source, entry.where)
    for key, value in nested.items():
        if key not in ENTRY_OPTIONS or key in given:
            entry.fail("options", f"{key!r} is {'given twice' if key in given else 'not a method option'}; write "
                       f"each option once, in the entry itself (docs/pruning.md#options lists them)")
        given[key] = value
    options = {}
    for key, value in given.items():
        try:  # typed now (lists become tuples): a cell is hashable and its label stable
            options[key] = parse_option(key, value)
        except UserError as error:
            entry.fail(key, str(error))
    return options


def _task(fields: _Fields, index: int, value: Any) -> TaskSpec:
    if isinstance(value, str):
        value = {"name": value}
    entry = _Fields(value, f"tasks[{index}]", fields.source, ("name", "limit", "num_fewshot", "metrics", "gen_kwargs"))
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
                    metrics=tuple(metrics), gen_kwargs=_settings(entry, "gen_kwargs", "{max_gen_toks: 64}"))


def _settings(fields: _Fields, key: str, example: str) -> dict[str, Any]:
    """A mapping of setting names to numbers, text or flags (`metadata`, a task's `gen_kwargs`); {} if absent."""
    settings = fields.get(key, {})
    if not isinstance(settings, dict):
        fields.fail(key, f"must be a mapping of settings, e.g. {example}, got {settings!r}")
    for name, value in settings.items():
        if not isinstance(name, str) or not isinstance(value, (str, int, float, bool)):
            fields.fail(key, f"{name!r}: {value!r} is not a setting name with a number, text or flag value")
    return dict(settings)


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


def _analysis(fields: _Fields) -> AnalysisSpec | None:
    """`analysis:` (empty: the default thresholds) or `analysis: {thresholds: [0.01, 0.1]}`; absent: off."""
    if "analysis" not in fields.data:
        return None
    entry = _Fields(fields.data["analysis"] or {}, "analysis", fields.source, ("thresholds",))
    values = entry.items("thresholds", required=False, default=AnalysisSpec().thresholds)
    for index, value in enumerate(values):
        if entry.checked(f"thresholds[{index}]", check_number, value, minimum=0) <= 0:
            entry.fail(f"thresholds[{index}]", f"must be a |w| cut-off above 0, got {value!r}")
    return AnalysisSpec(thresholds=tuple(float(value) for value in values))


def _latency(fields: _Fields) -> LatencySpec | None:
    if "latency" in fields.data and fields.data["latency"] is None:
        return None
    entry = _Fields(fields.get("latency", {}), "latency", fields.source,
                    ("batch", "seqlen", "new_tokens", "repeats", "runtime"))
    defaults = LatencySpec()
    try:
        runtime = parse_runtime(entry.get("runtime", defaults.runtime))
    except UserError as error:
        entry.fail("runtime", str(error))
    return LatencySpec(batch=entry.integer("batch", defaults.batch), seqlen=entry.integer("seqlen", defaults.seqlen),
                       new_tokens=entry.integer("new_tokens", defaults.new_tokens),
                       repeats=entry.integer("repeats", defaults.repeats), runtime=runtime)


def _finetune(fields: _Fields) -> FinetuneConfig | None:
    """The optional `finetune:` block (absent or null: no fine-tuning), checked as `sparse-bench finetune`
    checks its options, before any model loads. A grid fine-tunes with LoRA unless the block says otherwise."""
    if fields.get("finetune") is None:
        return None
    entry = _Fields(fields.get("finetune"), "finetune", fields.source, FINETUNE_GRID_KEYS)
    defaults = FinetuneConfig(mode="lora")
    numbers = {"epochs": entry.get("epochs", defaults.epochs), "lr": entry.get("lr")}  # lr None: the mode's
    for key, value in numbers.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            entry.fail(key, f"must be a finite number, got {value!r}")
    config = FinetuneConfig(
        data=str(entry.get("data", defaults.data)), mode=str(entry.get("mode", defaults.mode)),
        precision=str(entry.get("precision", defaults.precision)), epochs=float(numbers["epochs"]),
        lr=None if numbers["lr"] is None else float(numbers["lr"]),
        device=str(fields.get("device", "cpu")),
        **{key: entry.integer(key, getattr(defaults, key), 0 if key == "seed" else 1)
           for key in ("max_steps", "batch_size", "grad_accum", "limit", "eval_limit", "max_length", "lora_r",
                       "lora_alpha", "seed")})
    try:
        config.validate(_cuda_available())
    except UserError as error:
        entry.fail("", f"{error}")
    return config


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


__all__ = ["GRID_KEYS", "load_spec", "parse_spec"]
