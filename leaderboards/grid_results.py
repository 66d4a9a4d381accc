"""A grid's output folder read back through the store: its spec, its cells in grid order, their `CellResult`s,
and the tasks and metrics they reported. What render.py, header.py and plots.py draw from."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

from .status import CellState, cell_states
from .store import CellResult, read_grid_file, read_result


@dataclass
class Grid:
    """An output folder read back: its spec, its cells in grid order and their results (or None)."""

    folder: Path
    spec: dict[str, Any]
    cells: list[dict[str, Any]]
    results: dict[str, CellResult | None]
    comparisons: dict[tuple[str, str], dict[str, Any]] | None = None  # comparisons.compare_cells, when computed

    @cached_property
    def states(self) -> list[CellState]:
        """Each cell's state, done to not run (status.py; asks squeue once if a cell went to Slurm)."""
        return cell_states(self.folder, [c["cell_id"] for c in self.cells])

    def ok(self) -> list[CellResult]:
        """Results of the cells that measured something: every phase ok, or partial (a failed phase is marked
        where its numbers would be)."""
        return [r for c in self.cells if (r := self.results[c["cell_id"]]) and r.status in ("ok", "partial")]

    def first(self, getter: Callable[[CellResult], Any]) -> Any:
        """The first non-empty `getter(result)` over `ok()` (lookups that fail count as empty)."""
        for result in self.ok():
            try:
                value = getter(result)
            except (KeyError, IndexError, TypeError):
                continue
            if value not in (None, ""):
                return value
        return None

    def dense_of(self, result: CellResult) -> CellResult | None:
        """The dense cell of `result`'s model and dtype, if it finished."""
        return next((other for other in self.ok() if other.cell.is_dense and other.cell.model == result.cell.model
                     and other.cell.dtype == result.cell.dtype), None)

    def with_comparisons(self) -> "Grid":
        """Compare each pruned cell's logged samples with its dense cell's (answer flips; error-analysis reports
        written to OUT/reports/), for the flips and errors columns; returns self."""
        from .comparisons import compare_cells

        self.comparisons = compare_cells(self.folder, self.ok(), task_names(self))
        return self


def load_grid(folder: Path) -> Grid:
    """Read OUT/grid.json and every cell's result (cells of all shards copied into one folder)."""
    folder = Path(folder)
    grid = read_grid_file(folder)
    results = {c["cell_id"]: read_result(folder, c["cell_id"]) for c in grid["cells"]}
    return Grid(folder=folder, spec=grid["spec"], cells=grid["cells"], results=results)


def task_metrics(grid: Grid, task: str) -> list[str]:
    """Metrics shown for `task`: the spec's list, else every metric any cell reported (stderr excluded)."""
    for spec_task in grid.spec["tasks"]:
        if spec_task["name"] == task and spec_task["metrics"]:
            return list(spec_task["metrics"])
    names: dict[str, None] = {}
    for result in grid.ok():
        names.update(dict.fromkeys(result.higher_is_better.get(task, {})))
        for name, value in result.metrics.get(task, {}).items():
            if "_stderr" not in name and isinstance(value, (int, float)):
                names.setdefault(name)
    reported = {name for result in grid.ok() for name in result.metrics.get(task, {})}
    return [name for name in names if name in reported]


def task_names(grid: Grid) -> list[str]:
    """Tasks in spec order, then any subtask lm-eval reported (groups expand to their members)."""
    names = {t["name"]: None for t in grid.spec["tasks"]}
    for result in grid.ok():
        names.update(dict.fromkeys(result.metrics))
    return [name for name in names if any(name in r.metrics for r in grid.ok())]


__all__ = ["Grid", "load_grid", "task_metrics", "task_names"]
