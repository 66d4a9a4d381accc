"""PNG plots of a grid: each task's primary metric vs measured sparsity, and perplexity / size / latency vs
measured sparsity. One line per method (and dtype, and model, when the grid has several), unstructured
sparsities joined by a line that starts at the dense baseline; N:M cells are separate labelled markers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..harness_ext.io import write_figure_atomic  # noqa: E402
from .cells import model_name  # noqa: E402
from .columns import COLUMNS  # noqa: E402
from .grid_results import Grid, task_metrics, task_names  # noqa: E402
from .store import PLOTS, CellResult, subfolder  # noqa: E402

Getter = Callable[[CellResult], Any]
MARKERS = {"2:4": "s", "4:8": "D"}


def _series_key(result: CellResult, grid: Grid) -> str:
    cell, spec = result.cell, grid.spec
    parts = [cell.method]
    if len(spec["dtypes"]) > 1:
        parts.append(cell.dtype)
    if len(spec["models"]) > 1:
        parts.append(model_name(cell.model))
    return " ".join(parts)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _draw(axes, grid: Grid, getter: Getter, ylabel: str, log: bool = False) -> bool:
    """One metric vs measured sparsity (%) on `axes`; False if no cell has a finite value."""
    results = [r for r in grid.ok() if _number(getter(r)) is not None and r.sparsity]
    if not results:
        return False
    dense = {(r.cell.model, r.cell.dtype): r for r in results if r.cell.is_dense}
    series: dict[str, list[CellResult]] = {}
    for result in results:
        if not result.cell.is_dense:
            series.setdefault(_series_key(result, grid), []).append(result)
    x_of = lambda r: 100 * r.sparsity["overall_sparsity"]  # noqa: E731
    for label, members in series.items():
        base = dense.get((members[0].cell.model, members[0].cell.dtype))
        line = sorted([m for m in members if m.cell.structure in ("unstructured", "recipe")], key=x_of)
        line = ([base] if base else []) + line
        drawn = axes.plot([x_of(r) for r in line], [getter(r) for r in line], marker="o", label=label)
        color = drawn[0].get_color()
        for result in members:
            structure = result.cell.structure
            if structure not in ("unstructured", "recipe"):
                axes.scatter([x_of(result)], [getter(result)], color=color, marker=MARKERS.get(structure, "^"),
                             s=50, zorder=3)
                axes.annotate(structure, (x_of(result), getter(result)), textcoords="offset points",
                              xytext=(4, 4), fontsize=7, color=color)
    if not series:
        for result in dense.values():
            axes.scatter([x_of(result)], [getter(result)], label="dense")
    axes.set_xlabel("measured sparsity of the pruned layers (%)")
    axes.set_ylabel(ylabel)
    if log:
        axes.set_yscale("log")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7)
    return True


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    return write_figure_atomic(figure, path, dpi=110)


def make_plots(grid: Grid, out_dir: Path | None = None) -> dict[str, Path]:
    """Write OUT/plots/TASK.png per task, OUT/plots/cost.png (perplexity, size, latency) and OUT/plots/measures.png
    (KL and top-1 agreement with dense, BERTScore F1, repetition); returns {task, "cost" or "measures": path}."""
    out_dir = Path(out_dir or subfolder(grid.folder, PLOTS))
    written: dict[str, Path] = {}
    for task in task_names(grid):
        metrics = task_metrics(grid, task)
        if not metrics:
            continue
        metric = metrics[0]
        better = next((r.higher_is_better[task].get(metric) for r in grid.ok()
                       if task in r.higher_is_better), None)
        label = metric + {True: " (higher is better)", False: " (lower is better)"}.get(better, "")
        figure, axes = plt.subplots(figsize=(6, 4))
        if _draw(axes, grid, lambda r, t=task, m=metric: r.metrics.get(t, {}).get(m), label):
            axes.set_title(f"{task}: {metric} vs sparsity", fontsize=10)
            written[task] = _save(figure, out_dir / f"{task}.png")
        else:
            plt.close(figure)
    _panel_figure(grid, column_panels("cost"), out_dir / "cost.png", written, "cost")
    measures = column_panels("measures")
    for task in task_names(grid):
        for metric, label in (("bertscore_f1", "BERTScore F1"), ("repeated_4gram", "repeated 4-gram share")):
            if any(metric in r.metrics.get(task, {}) for r in grid.ok()):
                measures.append((lambda r, t=task, m=metric: r.metrics.get(t, {}).get(m), f"{task}\n{label}",
                                 False))
    _panel_figure(grid, measures, out_dir / "measures.png", written, "measures")
    return written


def _panel_figure(grid: Grid, panels: list[tuple[Getter, str, bool]], path: Path, written: dict[str, Path],
                  key: str) -> None:
    """One row of panels (getter, y label, log scale) vs sparsity, saved as written[key] if any is measured."""
    figure, axes_list = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    drawn = [_draw(axes, grid, getter, label, log) for axes, (getter, label, log) in zip(axes_list[0], panels)]
    if not any(drawn):
        plt.close(figure)
        return
    for axes, ok in zip(axes_list[0], drawn):
        if not ok:
            axes.text(0.5, 0.5, "not measured", ha="center", va="center", transform=axes.transAxes)
    written[key] = _save(figure, path)


def column_panels(figure: str) -> list[tuple[Getter, str, bool]]:
    """(getter, y label, log scale) of every column of columns.COLUMNS drawn in `figure`, in table order."""
    return [(column.number, column.panel.label, column.panel.log) for column in COLUMNS
            if column.panel and column.panel.figure == figure]


__all__ = ["make_plots"]
