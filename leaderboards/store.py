"""A grid's output folder: the only module that knows its layout, and the typed `CellResult` read and written there.

    OUT/grid.json                the resolved spec and the list of cells (every shard writes the same file)
    OUT/cells/CELL_ID.json       one `CellResult` per cell, written to a temporary name and renamed into place
    OUT/cells/CELL_ID.running    marker of the cell in flight (left behind if the process was killed)
    OUT/samples/CELL_ID/         lm-eval's per-sample records, `samples_TASK.jsonl`
    OUT/reports/CELL_ID/TASK.md  error analysis against the dense cell (written when rendering)
    OUT/analysis/CELL_ID/        per-layer weight analysis of the cell (spec `analysis:`)
    OUT/jobs/CELL_ID.json        the Slurm array task the cell was last submitted to; OUT/slurm/ submitit's files
    OUT/plots/*.png, OUT/leaderboard.{md,csv,json}

A result file is a JSON object: `format`, the `CellResult` fields, and each measure's keys (`perplexity`,
`latency`, ...) at the top level, as format `sparse-bench-leaderboard-cell/1` always had them.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..harness_ext.errors import UserError
from ..harness_ext.io import write_json_atomic

RESULT_FORMAT = "sparse-bench-leaderboard-cell/1"
GRID_FORMAT = "sparse-bench-leaderboard-grid/1"
RESULT_NEUTRAL_KEYS = ("source", "name", "log_samples")  # spec keys that change no number in a cell


# --- layout ----------------------------------------------------------------------------------------------------

CELLS, SAMPLES, REPORTS, JOBS, SLURM, PLOTS, ANALYSIS = "cells", "samples", "reports", "jobs", "slurm", "plots", "analysis"
FINETUNED = "finetuned"


def subfolder(out_dir: Path, name: str) -> Path:
    """OUT/NAME for one of the folder names above."""
    return Path(out_dir) / name


def grid_file(out_dir: Path) -> Path:
    return Path(out_dir) / "grid.json"


def leaderboard_file(out_dir: Path, extension: str) -> Path:
    return Path(out_dir) / f"leaderboard.{extension}"


def result_path(out_dir: Path, cell_id: str) -> Path:
    return subfolder(out_dir, CELLS) / f"{cell_id}.json"


def running_marker(out_dir: Path, cell_id: str) -> Path:
    return subfolder(out_dir, CELLS) / f"{cell_id}.running"


def job_file(out_dir: Path, cell_id: str) -> Path:
    return subfolder(out_dir, JOBS) / f"{cell_id}.json"


def finetuned_dir(out_dir: Path, cell_id: str) -> Path:
    """The cell's fine-tuned checkpoint (grids with a `finetune:` block)."""
    return subfolder(out_dir, FINETUNED) / cell_id


def samples_dir(out_dir: Path, cell_id: str) -> Path:
    return subfolder(out_dir, SAMPLES) / cell_id


def samples_file(out_dir: Path, cell_id: str, task: str) -> Path:
    return samples_dir(out_dir, cell_id) / f"samples_{task}.jsonl"


def report_file(out_dir: Path, cell_id: str, task: str) -> Path:
    return subfolder(out_dir, REPORTS) / cell_id / f"{task}.md"


def utc_now() -> str:
    """The time stamps of the folder's records: UTC, ISO 8601, seconds."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# --- results ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CellInfo:
    """What a cell is, as recorded in its result and in grid.json (cells.Cell.describe())."""

    model: str
    dtype: str
    method: str
    scope: str | None = None
    recipe: str | None = None
    recipe_sha256: str | None = None
    sparsity: float | None = None
    structure: str = "dense"

    @property
    def is_dense(self) -> bool:
        return self.method == "dense"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CellInfo:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


@dataclass
class CellResult:
    """One cell's record. `phases` maps each phase to {status, reason, seconds[, traceback]}; `status` is ok,
    partial or failed (runner.cell_status). The prune, load and evaluate phases fill the typed fields; every
    other measure's keys (`perplexity`, `agreement`, `latency`, `size`, ...) live in `measures`."""

    cell_id: str = ""
    cell: CellInfo | None = None
    status: str = "failed"
    reason: str | None = None
    flags: list[str] = field(default_factory=list)
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    started: str = ""
    seconds: float | None = None
    environment: dict[str, Any] = field(default_factory=dict)
    model_path: str | None = None
    model_fingerprint: str | None = None
    model_family: str | None = None  # harness_ext.models.model_family; None in records older than families
    prune: dict[str, Any] | None = None  # PruneReport.to_dict() of a pruned cell
    pruned_checkpoint: str | None = None
    prune_cached: bool | None = None
    sparsity: dict[str, Any] | None = None  # the loaded model's measured sparsity (PruneReport.to_dict())
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # one lm-eval call each
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # {task: {metric: value}}
    skipped_tasks: dict[str, str] = field(default_factory=dict)  # {task: why the model's family cannot run it}
    higher_is_better: dict[str, dict[str, bool]] = field(default_factory=dict)
    measures: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str) -> Any:
        """A field, or a measure's key (None when not measured)."""
        return getattr(self, key) if key in _FIELDS else self.measures.get(key)

    def update(self, values: dict[str, Any]) -> None:
        """Set fields and measure keys from a phase's output."""
        for key, value in values.items():
            if key in _FIELDS:
                setattr(self, key, value)
            else:
                self.measures[key] = value

    def phase_ok(self, phase: str) -> bool:
        """False if `phase` failed (records written before phases were recorded: always True)."""
        return self.phases.get(phase, {}).get("status", "ok") == "ok"

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "measures"}
        data["cell"] = None if self.cell is None else dataclasses.asdict(self.cell)
        return {"format": RESULT_FORMAT, **data, **self.measures}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CellResult:
        """A record of format 1 (every version of it: keys it lacks take their defaults)."""
        values = {key: value for key, value in data.items() if key != "format"}
        cell = values.pop("cell", None)
        result = cls(cell=None if cell is None else CellInfo.from_dict(cell))
        result.update({key: value for key, value in values.items() if value is not None or key not in _FIELDS})
        return result


_FIELDS = {f.name for f in dataclasses.fields(CellResult)} - {"measures"}


def read_result(out_dir: Path, cell_id: str) -> CellResult | None:
    """A cell's result, or None if there is none (or it cannot be read: then it is recomputed)."""
    try:
        data = json.loads(result_path(out_dir, cell_id).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != RESULT_FORMAT:
        return None
    return CellResult.from_dict(data)


def write_result(out_dir: Path, result: CellResult) -> Path:
    return write_json_atomic(result_path(out_dir, result.cell_id), result.to_dict())


# --- the grid file ------------------------------------------------------------------------------------------

def read_grid_file(out_dir: Path) -> dict[str, Any]:
    """OUT/grid.json: {format, source, spec (GridSpec.to_dict()), cells [{cell_id, **describe()}]}."""
    try:
        return json.loads(grid_file(out_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"{out_dir} has no readable grid.json; give the --out folder of `leaderboard run`") from None


def write_grid_file(out_dir: Path, spec: Any, cells: list[Any]) -> None:
    """Record the spec (a GridSpec) and its cells in OUT/grid.json; refuse an OUT that holds results of a spec
    whose numbers differ (display-only changes such as `name`, `log_samples` or a task's `metrics` just update
    the file)."""
    path = grid_file(out_dir)
    spec_dict = json.loads(json.dumps(spec.to_dict()))
    try:
        existing = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        existing = None
    if existing is not None and _result_relevant(existing.get("spec", {})) != _result_relevant(spec_dict):
        raise UserError(f"{out_dir} holds results of a different grid spec ({existing.get('source')}); use "
                        "another --out folder, or delete its grid.json to mix grids on purpose")
    if existing is None or existing.get("spec") != spec_dict:
        write_json_atomic(path, {"format": GRID_FORMAT, "source": spec.source, "spec": spec_dict,
                                 "cells": [{"cell_id": c.cell_id, **c.describe()} for c in cells]})


def _result_relevant(spec_dict: dict[str, Any]) -> dict[str, Any]:
    """The spec without the keys that change no number in a cell (and without keys left unset, so a spec key
    added later does not set old folders apart)."""
    kept = {k: v for k, v in spec_dict.items() if k not in RESULT_NEUTRAL_KEYS and v is not None}
    kept["tasks"] = [{k: v for k, v in task.items() if k != "metrics"} for task in kept.get("tasks", [])]
    return kept


__all__ = ["RESULT_FORMAT", "GRID_FORMAT", "CellInfo", "CellResult", "read_result", "write_result",
           "read_grid_file", "write_grid_file", "CELLS", "SAMPLES", "REPORTS", "JOBS", "SLURM", "PLOTS", "ANALYSIS",
           "subfolder",
           "grid_file", "leaderboard_file", "result_path", "running_marker", "job_file", "samples_dir", "samples_file",
           "report_file", "utc_now", "FINETUNED", "finetuned_dir"]
