"""Turn a grid's output folder into leaderboards: one table per task (markdown, CSV or JSON).

Rows are cells in grid order (per model and dtype: the dense baseline first, then methods x structures x
sparsities); `rank` orders them by the task's primary metric (the first of the spec's `metrics`, else the
first metric lm-eval reports), lm-eval's `higher_is_better` deciding the direction. Every number comes from
the cell files; what was not measured says so. NaN and infinite values are printed as such and flagged.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from tabulate import tabulate

from ..harness_ext.errors import UserError
from ..harness_ext.io import write_text_atomic
from .runner import cells_dir, read_result
from .status import (
    DONE,
    NOT_RUN,
    PARTIAL,
    QUEUED,
    RUNNING,
    SUBMITTED,
    CellState,
    cell_states,
    counts,
    in_flight,
)
from .status import FAILED as FAILED_STATE

FORMATS = ("md", "csv", "json")
FLAG = "(!)"
FAILED = f"failed {FLAG}"  # in place of the numbers of a phase that failed (its reason under "Failed")
# What the metrics our tasks and the engine report mean (others show only their direction).
METRIC_NOTES = {
    "bits_per_byte": "bits per UTF-8 byte of the reference text under teacher forcing",
    "acc": "accuracy", "f1": "F1 of the positive class",
    "rouge1": "ROUGE-1 F-measure (stemmed)", "rouge2": "ROUGE-2 F-measure (stemmed)",
    "rougeL": "ROUGE-L F-measure (stemmed)", "rougeLsum": "ROUGE-Lsum F-measure (stemmed)",
    "ppl": "token-level perplexity over a WikiText-2 test slice in windows of `seqlen` tokens (the pruning "
           "papers' protocol; lm-eval's `wikitext` task reports word-level perplexity, not comparable)",
    "bertscore_f1": "BERTScore F1 against the reference (scorer in the header)",
    "bertscore_precision": "BERTScore precision", "bertscore_recall": "BERTScore recall",
    "repeated_4gram": "share of the output's word 4-grams that repeat an earlier one (1 = a loop)",
    "distinct_1": "distinct words / words", "distinct_2": "distinct word bigrams / bigrams",
}
SUMMARY_EXTRAS = ("bertscore_f1", "repeated_4gram")  # shown in the summary next to their task's primary metric


@dataclass
class Grid:
    """An output folder read back: its spec, its cells in grid order and their result records (or None)."""

    folder: Path
    spec: dict[str, Any]
    cells: list[dict[str, Any]]
    results: dict[str, dict[str, Any] | None]
    comparisons: dict[tuple[str, str], dict[str, Any]] | None = None  # comparisons.compare_cells, when computed

    @cached_property
    def states(self) -> list[CellState]:
        """Each cell's state, done to not run (status.py; asks squeue once if a cell went to Slurm)."""
        return cell_states(self.folder, [c["cell_id"] for c in self.cells])

    def ok(self) -> list[dict[str, Any]]:
        """Records of the cells with results: every phase ok, or partial (a failed phase is marked where its
        numbers would be)."""
        return [r for c in self.cells if (r := self.results[c["cell_id"]]) and r["status"] in ("ok", "partial")]

    def with_comparisons(self) -> "Grid":
        """Compare each pruned cell's logged samples with its dense cell's (answer flips; error-analysis reports
        written to OUT/reports/), for the flips and errors columns; returns self."""
        from .comparisons import compare_cells

        self.comparisons = compare_cells(self.folder, self.ok(), task_names(self))
        return self


def load_grid(folder: Path) -> Grid:
    """Read OUT/grid.json and every OUT/cells/*.json (cells of all shards copied into one folder)."""
    folder = Path(folder)
    try:
        grid = json.loads((folder / "grid.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"{folder} has no readable grid.json; give the --out folder of `leaderboard run`") from None
    results = {c["cell_id"]: read_result(cells_dir(folder) / f"{c['cell_id']}.json") for c in grid["cells"]}
    for result in filter(None, results.values()):  # a cell whose evaluate phase failed has no metrics
        result.setdefault("metrics", {})
        result.setdefault("higher_is_better", {})
    return Grid(folder=folder, spec=grid["spec"], cells=grid["cells"], results=results)


# --- numbers as text ------------------------------------------------------------------------------------------

def fmt(value: Any, digits: int = 4) -> str:
    if value is None or value == "N/A":
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if not math.isfinite(value):
        return f"{value} {FLAG}"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def with_stderr(value: Any, stderr: Any) -> str:
    text = fmt(value)
    return f"{text} ± {fmt(stderr, 2)}" if isinstance(stderr, (int, float)) else text


def mebibytes(value: Any) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value / 2**20:.1f}"


# --- rows ------------------------------------------------------------------------------------------------------

def task_metrics(grid: Grid, task: str) -> list[str]:
    """Metrics shown for `task`: the spec's list, else every metric any cell reported (stderr excluded)."""
    for spec_task in grid.spec["tasks"]:
        if spec_task["name"] == task and spec_task["metrics"]:
            return list(spec_task["metrics"])
    names: dict[str, None] = {}
    for result in grid.ok():
        names.update(dict.fromkeys(result["higher_is_better"].get(task, {})))
        for name, value in result["metrics"].get(task, {}).items():
            if "_stderr" not in name and isinstance(value, (int, float)):
                names.setdefault(name)
    reported = {name for result in grid.ok() for name in result["metrics"].get(task, {})}
    return [name for name in names if name in reported]


def task_names(grid: Grid) -> list[str]:
    """Tasks in spec order, then any subtask lm-eval reported (groups expand to their members)."""
    names = {t["name"]: None for t in grid.spec["tasks"]}
    for result in grid.ok():
        names.update(dict.fromkeys(result["metrics"]))
    return [name for name in names if any(name in r["metrics"] for r in grid.ok())]


def _dense_value(grid: Grid, result: dict[str, Any], task: str, metric: str) -> Any:
    for other in grid.ok():
        if (other["cell"]["method"] == "dense" and other["cell"]["model"] == result["cell"]["model"]
                and other["cell"]["dtype"] == result["cell"]["dtype"]):
            return other["metrics"].get(task, {}).get(metric)
    return None


def _target(cell: dict[str, Any]) -> str:
    if cell["method"] == "dense":
        return "0"
    return "recipe" if cell["sparsity"] is None else f"{cell['sparsity']:g}"


def failed_phase(result: dict[str, Any], phase: str) -> bool:
    """True if the cell's `phase` failed (records written before phases were recorded: never)."""
    return (result.get("phases") or {}).get(phase, {}).get("status", "ok") != "ok"


def cell_columns(result: dict[str, Any]) -> dict[str, Any]:
    """Columns every table shares: what the cell is, what it measured, what it cost; `failed (!)` where the
    phase that measures a column failed."""
    cell, sparsity = result["cell"], result.get("sparsity") or {}
    latency, size = result.get("latency") or {}, result.get("size") or {}
    prune = result.get("prune") or {}
    measured = sparsity.get("overall_sparsity")
    columns = {
        "model": Path(cell["model"].rstrip("/")).name, "method": cell["method"],
        "structure": "-" if cell["method"] == "dense" else cell["structure"], "target": _target(cell),
        "measured": "-" if measured is None else f"{100 * measured:.2f} %",
        "nonzero (M)": fmt(sparsity.get("nonzero_params", 0) / 1e6) if sparsity else "-",
        "dtype": cell["dtype"],
        "ppl (token)": fmt((result.get("perplexity") or {}).get("perplexity")),
        "KL vs dense": fmt((result.get("agreement") or {}).get("kl"), 3),
        "top-1 agree": fmt((result.get("agreement") or {}).get("top1_agreement"), 3),
        "dense MiB": mebibytes(size.get("dense_bytes")) if size.get("status") == "measured" else "not measured",
        "compressed MiB": (mebibytes(size.get("compressed_bytes")) if size.get("status") == "measured"
                           else "not measured"),
        "ms/forward": fmt(latency.get("forward_ms")), "tokens/s": fmt(latency.get("generate_tokens_per_s"), 3),
        "peak MiB": mebibytes(latency.get("peak_memory_bytes")),
        "prune s": "-" if not prune else fmt(prune.get("prune_seconds")),
    }
    for phase, names in PHASE_COLUMNS.items():
        if failed_phase(result, phase):
            columns.update(dict.fromkeys(names, FAILED))
    return columns


PHASE_COLUMNS = {"perplexity": ("ppl (token)", "KL vs dense", "top-1 agree"),
                 "size": ("dense MiB", "compressed MiB"), "latency": ("ms/forward", "tokens/s", "peak MiB")}


def _ranks(values: list[Any], higher_is_better: bool) -> list[str]:
    finite = sorted({v for v in values if isinstance(v, (int, float)) and math.isfinite(v)},
                    reverse=higher_is_better)
    return [str(finite.index(v) + 1) if v in finite else "-" for v in values]


def comparison_columns(grid: Grid, result: dict[str, Any], task: str) -> dict[str, str]:
    """`flips r→w / w→r` (tasks scored by acc) and `errors` (a link to the error-analysis report of generation
    tasks) against the dense cell, when the cells logged samples; empty otherwise."""
    found = (grid.comparisons or {}).get((result["cell_id"], task))
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


def task_rows(grid: Grid, task: str) -> tuple[list[dict[str, Any]], str | None]:
    """(rows of the task's table, primary metric) over the cells that finished."""
    metrics = task_metrics(grid, task)
    primary = metrics[0] if metrics else None
    results = [r for r in grid.ok() if task in r["metrics"]]
    rows = []
    for result in results:
        values = result["metrics"][task]
        row = {"rank": "", **{k: v for k, v in cell_columns(result).items() if k in CELL_HEAD}}
        for metric in metrics:
            row[metric] = with_stderr(values.get(metric), values.get(f"{metric}_stderr"))
        row.update(comparison_columns(grid, result, task))
        if primary:
            dense = _dense_value(grid, result, task, primary)
            value = values.get(primary)
            delta = (value - dense if isinstance(value, (int, float)) and isinstance(dense, (int, float))
                     else None)
            row[f"Δ {primary} vs dense"] = ("-" if delta is None or result["cell"]["method"] == "dense" else
                                            f"{delta:+.4g}" if math.isfinite(delta) else fmt(delta))
        row.update({k: v for k, v in cell_columns(result).items() if k not in CELL_HEAD})
        flags = [f for f in result.get("flags", []) if f.startswith(f"{task}/") or "/" not in f]
        flags += [f"{phase} failed" for phase in PHASE_COLUMNS if failed_phase(result, phase)]
        row["flags"] = "; ".join(flags) if flags else ""
        rows.append(row)
    if primary:
        higher = next((r["higher_is_better"].get(task, {}).get(primary) for r in results
                       if primary in r["higher_is_better"].get(task, {})), True)
        for row, rank in zip(rows, _ranks([r["metrics"][task].get(primary) for r in results], higher)):
            row["rank"] = rank
    return rows, primary


CELL_HEAD = ("model", "method", "structure", "target", "measured", "nonzero (M)", "dtype")


# --- header, tables, files --------------------------------------------------------------------------------------

def _first(grid: Grid, getter) -> Any:
    for result in grid.ok():
        try:
            value = getter(result)
        except (KeyError, IndexError, TypeError):
            continue
        if value not in (None, ""):
            return value
    return None


def header(grid: Grid) -> dict[str, Any]:
    """Everything a reader needs to trust or reproduce the tables, as `label: text` pairs."""
    spec, env = grid.spec, _first(grid, lambda r: r["environment"]) or {}
    latency = _first(grid, lambda r: r["latency"]) or {}
    models = []
    for model in spec["models"]:
        ok = [r for r in grid.ok() if r["cell"]["model"] == model]
        evaluations = next((r["evaluations"] for r in ok if r.get("evaluations")), [{"results": {}}])
        config = evaluations[0]["results"].get("config", {})
        revision = config.get("model_revision") or "-"
        models.append(f"`{model}` ({ok[0]['model_path'] if ok else 'not run'}; weights sha256 "
                      f"{(ok[0]['model_fingerprint'] if ok else '-')[:16]}; revision {revision})")
    calibration = spec["calibration"]
    tasks = ", ".join(f"`{t['name']}` (limit {t['limit'] or 'all'}, {t['num_fewshot'] or 0}-shot)"
                      for t in spec["tasks"])
    ppl = spec.get("perplexity")
    lat = spec.get("latency")
    return {
        "Cells": _cell_counts(grid),
        "Models": "; ".join(models),
        "Pruning": (f"calibration `{calibration['data']}`, {calibration['nsamples']} x {calibration['seqlen']} "
                    f"tokens, seed {calibration['seed']}"
                    f"{', true-sequential' if calibration.get('true_sequential') else ''}; pruned in {spec['prune_dtype']} on {spec['device']} "
                    "and cached, then loaded in each row's dtype. `measured` = exact zeros over the pruned "
                    "layers (lm_head excluded); `nonzero (M)` = non-zero parameters of the whole model"),
        "Tasks": f"lm-eval {env.get('lm_eval', '?')}, {tasks}, batch size {spec['batch_size']}, "
                 f"bootstrap_iters {spec['bootstrap_iters']} (stderr after ±), seed {spec['seed']}",
        "Perplexity": "not measured" if not ppl else (
            f"`ppl (token)` = {METRIC_NOTES['ppl']}: `{ppl['data']}`, first {ppl['max_tokens']} tokens, "
            f"windows of {ppl['seqlen']}"),
        "Agreement": agreement_note(grid),
        "Scorers": scorer_note(grid),
        "Latency": "not measured" if not lat else (
            f"{latency.get('device_name', '?')} (`{latency.get('device', '?')}`, {latency.get('torch_threads', '?')}"
            f" torch threads, {latency.get('cpu_count', '?')} logical CPUs): `ms/forward` = median of "
            f"{lat['repeats']} forwards of {lat['batch']} x {lat['seqlen']} tokens; `tokens/s` = greedy "
            f"generation of {lat['new_tokens']} tokens at batch 1; `peak MiB` = "
            f"{latency.get('peak_memory_kind', '?')} during those; `prune s` = pruning wall time"),
        "Size": "`dense MiB` = the checkpoint stored dense at the row's dtype; `compressed MiB` = sparse-bench's "
                "compressed format (see `sparse-bench size`)",
        "Software": ", ".join(f"{k} {env[k]}" for k in ("sparse_bench", "lm_eval", "torch", "transformers")
                              if k in env),
    }


def agreement_note(grid: Grid) -> str:
    agreement = _first(grid, lambda r: r["agreement"])
    if not agreement:
        return "not measured"
    reference = agreement["reference"]
    return (f"`KL vs dense` = KL(dense || cell) of next-token distributions in nats per token and `top-1 agree` = "
            f"share of positions where the cell's most likely token is the dense model's, on the perplexity "
            f"windows ({agreement['positions']} positions), against the dense model in {reference['dtype']} on "
            f"`{reference['device']}`; the KL uses the dense top {agreement['top_k']} tokens plus the rest mass (a "
            "lower bound on the full KL, docs/measures.md)")


def scorer_note(grid: Grid) -> str:
    """Which BERTScore scorer the generation tasks used (from lm-eval's task config), or '-'."""
    def scorers(result: dict[str, Any]) -> str:
        found = {f"`{task}`: {config['metadata']['bertscore_model']}"
                 for evaluation in result["evaluations"]
                 for task, config in evaluation["results"].get("configs", {}).items()
                 if (config.get("metadata") or {}).get("bertscore_model")}
        return "; ".join(sorted(found))
    return _first(grid, scorers) or "-"


def _cell_counts(grid: Grid) -> str:
    states = counts(grid.states)
    held = sum(states[name] for name in (QUEUED, RUNNING, SUBMITTED))
    partial = (f", {states[PARTIAL]} with a failed phase (shown, marked `{FAILED}`)" if states[PARTIAL] else "")
    return (f"{states[DONE]} of {len(grid.cells)} finished{partial}, {states[FAILED_STATE]} failed, "
            f"{states[NOT_RUN]} not run" + (f", {held} still queued or running" if held else ""))


def incomplete_note(grid: Grid) -> str | None:
    """A warning line if some cells are still queued or running (the tables will change), else None."""
    held = in_flight(grid.states)
    if not held:
        return None
    jobs = sorted({s.job.split("_")[0] for s in held if s.job})
    return (f"INCOMPLETE: {len(held)} of {len(grid.cells)} cells are still queued or running"
            + (f" (Slurm job {', '.join(jobs)})" if jobs else "") + "; these tables will change. Render again "
            f"when `sparse-bench leaderboard status {grid.folder}` shows them done.")


def metric_legend(grid: Grid, task: str, metrics: list[str]) -> str:
    better = _first(grid, lambda r: r["higher_is_better"][task]) or {}
    parts = []
    for metric in metrics:
        direction = {True: "higher is better", False: "lower is better"}.get(better.get(metric), "")
        note = METRIC_NOTES.get(metric.split(",")[0], "")
        parts.append(f"`{metric}`: " + ", ".join(p for p in (note, direction) if p))
    return "; ".join(parts)


def failed_rows(grid: Grid) -> list[dict[str, str]]:
    """One row per failed phase of each cell (`cell` for records written before phases were recorded, and for a
    cell whose process or Slurm task ended without writing its result)."""
    rows = []
    for cell, state in zip(grid.cells, grid.states):
        if state.state not in (FAILED_STATE, PARTIAL):
            continue
        result = grid.results[cell["cell_id"]]
        from_result = result is not None and result["status"] != "ok" and result["reason"] == state.reason
        phases = (result.get("phases") if from_result else None) or {"cell": {"status": "failed",
                                                                              "reason": state.reason}}
        rows += [{"cell": cell["cell_id"], "phase": name, "reason": phase["reason"]}
                 for name, phase in phases.items() if phase["status"] != "ok"]
    return rows


def summary_rows(grid: Grid) -> list[dict[str, Any]]:
    """One row per finished cell: what it is, each task's primary metric (value ± stderr), perplexity, cost."""
    primaries = {task: task_rows(grid, task)[1] for task in task_names(grid)}
    rows = []
    for result in grid.ok():
        columns = cell_columns(result)
        row = {key: columns[key] for key in ("method", "structure", "target", "measured", "dtype")}
        if len(grid.spec["models"]) > 1:
            row = {"model": columns["model"], **row}
        for task, primary in primaries.items():
            values = result.get("metrics", {}).get(task, {})
            if primary:
                row[f"{task} {primary}"] = (FAILED if failed_phase(result, "evaluate") else
                                            with_stderr(values.get(primary), values.get(f"{primary}_stderr")))
            row.update({f"{task} {name}": fmt(values.get(name), 3) for name in SUMMARY_EXTRAS
                        if name != primary and name in values})
        row.update({key: columns[key] for key in ("ppl (token)", "KL vs dense", "top-1 agree", "compressed MiB",
                                                  "ms/forward", "prune s")})
        rows.append(row)
    return rows


def summary_table(grid: Grid) -> str:
    """The summary rows as one markdown table (what a run prints at its end)."""
    return tabulate(summary_rows(grid), headers="keys", tablefmt="github", disable_numparse=True)


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
        if plots and task in plots:
            lines += ["", f"![{task}]({plots[task].relative_to(grid.folder).as_posix()})"]
    if plots and "cost" in plots:
        lines += ["", "## Perplexity, size and latency vs sparsity", "",
                  f"![cost]({plots['cost'].relative_to(grid.folder).as_posix()})"]
    if plots and "measures" in plots:
        lines += ["", "## Agreement with the dense model, BERTScore and repetition vs sparsity", "",
                  f"![measures]({plots['measures'].relative_to(grid.folder).as_posix()})"]
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
    return text, write_text_atomic(Path(folder) / f"leaderboard.{fmt_name}", text)


__all__ = ["FORMATS", "Grid", "load_grid", "task_rows", "summary_rows", "task_names", "header", "render", "render_markdown",
           "render_csv", "render_json", "cell_columns"]
