"""The grid spec's objects: what a grid asks for (`GridSpec`) and its parts, as read from YAML by spec_parser.

`GridSpec.to_dict()` is what OUT/grid.json records (store.py); cells.py expands a spec into its cells.
Keys and values are documented in docs/leaderboard.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..harness_ext.finetune.config import GRID_KEYS as FINETUNE_GRID_KEYS
from ..harness_ext.finetune.config import FinetuneConfig
from ..harness_ext.pruning.plan import CalibrationConfig

DTYPES = ("float32", "float16", "bfloat16")


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

    `gen_kwargs` overrides a generation task's settings (e.g. `max_gen_toks`), as `lm_eval --gen_kwargs`.
    `metrics` picks the columns shown (first = the primary metric, used for delta vs dense, rank and plots);
    empty shows every metric the task reports.
    """

    name: str
    limit: int | float | None = None
    num_fewshot: int | None = None
    metrics: tuple[str, ...] = ()
    gen_kwargs: dict[str, Any] = field(default_factory=dict)  # generation settings, as `lm_eval --gen_kwargs`


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
    """Latency protocol: forward of `batch` x `seqlen` tokens; greedy generation of `new_tokens` at batch 1.
    `runtime` (dense | sparse | auto | a kernel, harness_ext/runtime): other than dense, the cell is measured
    with dense kernels and with that runtime, alternating, in the same run (the runtime columns)."""

    batch: int = 1
    seqlen: int = 128
    new_tokens: int = 32
    repeats: int = 5
    runtime: str = "dense"


@dataclass(frozen=True)
class AnalysisSpec:
    """Per-layer weight analysis of every cell (harness_ext.analysis): fractions of |w| below each threshold,
    zeros per block; a report per cell in OUT/analysis/CELL_ID/. Off unless the spec has `analysis:`."""

    thresholds: tuple[float, ...] = (0.01, 0.1)


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
    analysis: AnalysisSpec | None = None
    finetune: FinetuneConfig | None = None  # the `finetune:` block (grid default mode: LoRA); its device is the grid's
    include_path: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # handed to every task, as `lm_eval --metadata`
    device: str = "cpu"
    batch_size: int = 8
    bootstrap_iters: int = 1000
    prune_dtype: str = "float32"
    seed: int = 0
    log_samples: bool = False
    source: str = "<dict>"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (paths already resolved): what grid.json records of the spec; its `finetune` block is valid
        spec YAML again."""
        data = asdict(self)
        data["calibration"] = self.calibration.describe()
        if self.finetune is not None:
            data["finetune"] = {key: data["finetune"][key] for key in FINETUNE_GRID_KEYS}
        return data


__all__ = ["DTYPES", "MethodSpec", "TaskSpec", "PerplexitySpec", "LatencySpec", "AnalysisSpec",
           "GridSpec"]
