"""Each pruned cell against its dense cell, from the logged samples (spec `log_samples: true`): answer flips
for tasks scored by `acc`, and an error-analysis report (`OUT/reports/CELL_ID/TASK.md`) for generation tasks.

The dense cell is the one of the same model and dtype. Both come from `sparse-bench compare-samples`
(harness_ext.compare_samples.compare); the reports use the cell's model directory as the tokenizer, so the
`max_tokens` category is checked (when that directory exists where the leaderboard is rendered).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..harness_ext.compare_samples import compare
from ..harness_ext.io import write_text_atomic
from ..harness_ext.samples_report import render_report
from .store import CellResult, report_file, samples_file

REPORT_EXAMPLES = 3  # largest regressions shown side by side in each report
REPORT_CHARS = 600


def compare_with_dense(folder: Path, dense: CellResult, result: CellResult, task: str) -> dict[str, Any] | None:
    """{"flips": ... or None, "report": path or None} for one pruned cell and task; None without samples."""
    file_a, file_b = (samples_file(folder, record.cell_id, task) for record in (dense, result))
    if not (file_a.is_file() and file_b.is_file()):
        return None
    model_path = result.model_path  # on another machine (shards) it may be gone: max_tokens not checked
    found = compare(file_a, file_b, tokenizer=model_path if model_path and Path(model_path).is_dir() else None)
    report = None
    if found["categories"] is not None:
        names = (f"dense ({dense.cell_id})", result.cell_id)
        text = render_report(found["pairs"], found["metric"], names, found["categories"], found["flips"],
                             (found["mean"]["a"], found["mean"]["b"]), REPORT_EXAMPLES, REPORT_CHARS,
                             title=f"{task}: {result.cell_id} vs dense")
        report = write_text_atomic(report_file(folder, result.cell_id, task), text)
    return {"flips": found["flips"], "report": report, "categories": found["categories"]}


def compare_cells(folder: Path, results: list[CellResult], tasks: list[str]) -> dict[tuple[str, str], dict]:
    """`compare_with_dense` for every finished pruned cell and task that has samples, keyed (cell_id, task)."""
    dense_of = {(r.cell.model, r.cell.dtype): r for r in results if r.cell.is_dense}
    found = {}
    for result in results:
        dense = dense_of.get((result.cell.model, result.cell.dtype))
        if dense is None or dense is result:
            continue
        for task in tasks:
            compared = compare_with_dense(folder, dense, result, task)
            if compared is not None:
                found[(result.cell_id, task)] = compared
    return found


__all__ = ["compare_cells", "compare_with_dense"]
