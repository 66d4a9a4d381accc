"""Turn a grid's output folder into leaderboards: one table per task (markdown, CSV or JSON).

Rows are cells in grid order (per model and dtype: the dense baseline first, then methods x structures x
sparsities); `rank` orders them by the task's primary metric (the first of the spec's `metrics`, else the
first metric lm-eval reports), lm-eval's `higher_is_better` deciding the direction. Every number comes from
the cells' `CellResult`s (store.py) through `columns.COLUMNS` and the tasks' metrics; what was not measured
says so. NaN and infinite values are printed as such and flagged.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from tabulate import tabulate

from ..harness_ext.errors import UserError
from ..harness_ext.io import write_text_atomic
from .columns import FAILED, MEASURED_PHASES, Column, cell_columns, fmt, shown_columns, with_stderr
from .grid_results import Grid, load_grid, task_metrics, task_names
from .header import header, incomplete_note, metric_legend
from .status import FAILED as FAILED_STATE
from .status import PARTIAL
from .store import CellResult, leaderboard_file

FORMATS = ("md", "csv", "json")
SUMMARY_EXTRAS = ("bertscore_f1", "repeated_4gram")  # shown in the summary next to their task's primary metric


def _ranks(values: list[Any], higher_is_better: bool) -> list[str]:
    finite = sorted({v for v in values if isinstance(v, (int, float)) and math.isfinite(v)},
                    reverse=higher_is_better)
    return [str(finite.index(v) + 1) if v in finite else "-" for v in values]


def comparison_columns(grid: Grid, result: CellResult, task: str) -> dict[str, str]:
    """`flips r→w / w→r` (tasks scored by acc) and `errors` (a link to the error-analysis report of generation
    tasks) against the dense cell, when the cells logged samples; empty otherwise."""
    found = (grid.comparisons or {}).get((result.cell_id, task))
    has = {kind for (_, name), value in (grid.comparisons or {}).items() if name == task
           for kind in ("flips", "report") if value[kind] is not None}
    columns = {}
    if "flips" in has:
        flips = (found or {}).get("flips")
        columns["flips r→w / w→r"] = "-" if not flips else f"{flips['right_to_wrong']} / {flips['wrong_to_right']}"
    if "report" in has:
        report = (found or {}).get("report")
        columns["errors"] = "-" if not report else f"[report]({Path(report).relative_to(grid.folder).as_posix()})"
    return columns


def _delta(grid: Grid, result: CellResult, task: str, primary: str) -> str:
    """The primary metric's difference to the dense cell of the same model and dtype."""
    dense = grid.dense_of(result)
    reference = None if dense is None else dense.metrics.get(task, {}).get(primary)
    value = result.metrics.get(task, {}).get(primary)
    delta = (value - reference if isinstance(value, (int, float)) and isinstance(reference, (int, float))
             else None)
    if delta is None or result.cell.is_dense:
        return "-"
    return f"{delta:+.4g}" if math.isfinite(delta) else fmt(delta)


def finetuned_columns(grid: Grid, result: CellResult, task: str, primary: str) -> dict[str, str]:
    """With a `finetune:` block: the primary metric after fine-tuning and the recovery, the share of the gap
    to the fine-tuned dense model (same model and dtype) that fine-tuning closed:
    (after - before) / (dense after - before), before = this cell's zero-shot value."""
    if not grid.spec.get("finetune"):
        return {}
    after_name = f"{primary} after FT"
    if not result.phase_ok("finetune"):
        return {after_name: FAILED, "FT recovery": FAILED}
    values = (result.get("finetuned_metrics") or {}).get(task, {})
    after, before = values.get(primary), result.metrics.get(task, {}).get(primary)
    dense = grid.dense_of(result)
    dense_after = None if dense is None else ((dense.get("finetuned_metrics") or {}).get(task) or {}).get(primary)
    numbers = [v for v in (after, before, dense_after) if isinstance(v, (int, float)) and math.isfinite(v)]
    gap = dense_after - before if len(numbers) == 3 else 0
    recovery = "-" if result.cell.is_dense or not gap else f"{100 * (after - before) / gap:.0f} %"
    return {after_name: with_stderr(after, values.get(f"{primary}_stderr")), "FT recovery": recovery}


def metric_text(result: CellResult, task: str, metric: str) -> str:
    """A task metric as table text: value ± stderr, or `skipped: why` when the cell's model cannot run the task."""
    if task in result.skipped_tasks:
        return fmt({"skipped": result.skipped_tasks[task]})
    values = result.metrics.get(task, {})
    return with_stderr(values.get(metric), values.get(f"{metric}_stderr"))


def task_row(grid: Grid, result: CellResult, task: str, metrics: list[str], primary: str | None,
             columns: tuple[Column, ...]) -> dict[str, Any]:
    """One cell's row of a task's table: what it is, the metrics, comparisons, Δ vs dense, the other columns."""
    texts = cell_columns(result, columns)
    row = {"rank": "", **{c.name: texts[c.name] for c in columns if c.identity}}
    row.update({metric: metric_text(result, task, metric) for metric in metrics})
    row.update(comparison_columns(grid, result, task))
    if primary:
        row[f"Δ {primary} vs dense"] = _delta(grid, result, task, primary)
        row.update(finetuned_columns(grid, result, task, primary))
    row.update({c.name: texts[c.name] for c in columns if not c.identity})
    flags = [f for f in result.flags if f.startswith(f"{task}/") or "/" not in f]
    flags += [f"{phase} failed" for phase in MEASURED_PHASES if not result.phase_ok(phase)]
    row["flags"] = "; ".join(flags) if flags else ""
    return row


def task_rows(grid: Grid, task: str) -> tuple[list[dict[str, Any]], str | None]:
    """(rows of the task's table, primary metric) over the cells that finished."""
    metrics = task_metrics(grid, task)
    primary = metrics[0] if metrics else None
    results = [r for r in grid.ok() if task in r.metrics or task in r.skipped_tasks]
    columns = shown_columns(grid.ok())
    shown = metrics or ["result"]  # no cell reported a metric (every cell skipped the task): say so per row
    rows = [task_row(grid, result, task, shown, primary, columns) for result in results]
    if primary:
        higher = next((r.higher_is_better.get(task, {}).get(primary) for r in results
                       if primary in r.higher_is_better.get(task, {})), True)
        for row, rank in zip(rows, _ranks([r.metrics.get(task, {}).get(primary) for r in results], higher)):
            row["rank"] = rank
    return rows, primary


def failed_rows(grid: Grid) -> list[dict[str, str]]:
    """One row per failed phase of each cell (`cell` for records written before phases were recorded, and for a
    cell whose process or Slurm task ended without writing its result)."""
    rows = []
    for cell, state in zip(grid.cells, grid.states):
        if state.state not in (FAILED_STATE, PARTIAL):
            continue
        result = grid.results[cell["cell_id"]]
        from_result = result is not None and result.status != "ok" and result.reason == state.reason
        phases = (result.phases if from_result else None) or {"cell": {"status": "failed", "reason": state.reason}}
        rows += [{"cell": cell["cell_id"], "phase": name, "reason": phase["reason"]}
                 for name, phase in phases.items() if phase["status"] != "ok"]
    return rows


def summary_rows(grid: Grid) -> list[dict[str, Any]]:
    """One row per finished cell: what it is, each task's primary metric (value ± stderr), perplexity, cost."""
    primaries = {task: task_rows(grid, task)[1] for task in task_names(grid)}
    several_models = len(grid.spec["models"]) > 1
    columns = shown_columns(grid.ok())
    rows = []
    for result in grid.ok():
        texts = cell_columns(result, columns)
        row = {"model": texts["model"]} if several_models else {}
        row.update({c.name: texts[c.name] for c in columns if c.identity and c.summary})
        for task, primary in primaries.items():
            values = result.metrics.get(task, {})
            row[f"{task} {primary or 'result'}"] = (FAILED if not result.phase_ok("evaluate") else
                                                    metric_text(result, task, primary or "result"))
            row.update({f"{task} {name}": fmt(values.get(name), 3) for name in SUMMARY_EXTRAS
                        if name != primary and name in values})
        row.update({c.name: texts[c.name] for c in columns if c.summary and not c.identity})
        rows.append(row)
    return rows


def summary_table(grid: Grid) -> str:
    """The summary rows as one markdown table (what a run prints at its end)."""
    return tabulate(summary_rows(grid), headers="keys", tablefmt="github", disable_numparse=True)


def _figure(grid: Grid, plots: dict[str, Path] | None, key: str, title: str | None = None) -> list[str]:
    if not plots or key not in plots:
        return []
    return ["", *([f"## {title}", ""] if title else []), f"![{key}]({plots[key].relative_to(grid.folder).as_posix()})"]


def render_markdown(grid: Grid, plots: dict[str, Path] | None = None) -> str:
    lines = [f"# Leaderboard: {grid.spec['name']}", ""]
    incomplete = incomplete_note(grid)
    if incomplete:
        lines += [f"> **{incomplete}**", ""]
    lines += [f"- **{label}**: {text}" for label, text in header(grid).items()]
    if len(task_names(grid)) > 1:
        lines += ["", "## Summary: each task's primary metric", "", summary_table(grid)]
    for task in task_names(grid):
        rows, primary = task_rows(grid, task)
        metrics = task_metrics(grid, task)
        lines += ["", f"## {task}", "", f"Primary metric: `{primary}`. {metric_legend(grid, task, metrics)}.", ""]
        lines.append(tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True))
        lines += _figure(grid, plots, task)
    lines += _figure(grid, plots, "cost", "Perplexity, size and latency vs sparsity")
    families = [key for key in plots or {} if key.startswith("family:")]
    for number, key in enumerate(families):
        lines += _figure(grid, plots, key, None if number else "Each family's metrics vs sparsity")
    lines += _figure(grid, plots, "measures", "Agreement with the dense model, BERTScore and repetition vs sparsity")
    failed = failed_rows(grid)
    if failed:
        lines += ["", "## Failed cells and phases", "", tabulate(failed, headers="keys", tablefmt="github")]
    return "\n".join(lines) + "\n"


def render_csv(grid: Grid) -> str:
    """Long format: one row per (task, cell); columns are the union over tasks."""
    rows = [{"task": task, **row} for task in task_names(grid) for row in task_rows(grid, task)[0]]
    rows += [{"task": "(failed)", **row} for row in failed_rows(grid)]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    stream = io.StringIO()
    writer = csv.DictWriter(stream, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return stream.getvalue()


def render_json(grid: Grid) -> str:
    tables = {task: dict(zip(("rows", "primary_metric"), task_rows(grid, task))) for task in task_names(grid)}
    return json.dumps({"name": grid.spec["name"], "incomplete": incomplete_note(grid), "header": header(grid),
                       "tables": tables, "failed": failed_rows(grid)}, indent=2, default=str) + "\n"


def render(folder: Path, fmt_name: str = "md", plots: dict[str, Path] | None = None) -> tuple[str, Path]:
    """Render `folder` in `fmt_name`; writes OUT/leaderboard.EXT and returns (text, path)."""
    if fmt_name not in FORMATS:
        raise UserError(f"unknown format {fmt_name!r}; use one of: {', '.join(FORMATS)}")
    grid = load_grid(folder).with_comparisons()
    text = {"md": lambda: render_markdown(grid, plots), "csv": lambda: render_csv(grid),
            "json": lambda: render_json(grid)}[fmt_name]()
    return text, write_text_atomic(leaderboard_file(folder, fmt_name), text)


__all__ = ["FORMATS", "Grid", "load_grid", "task_rows", "summary_rows", "summary_table", "task_names", "render",
           "render_markdown", "render_csv", "render_json"]
