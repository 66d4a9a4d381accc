"""Run the cells of a grid: prune (cached), evaluate through lm-eval's Python API, measure, write one file each.

Layout of an output folder:
    OUT/grid.json             the resolved spec and the list of cells (every shard writes the same file)
    OUT/cells/CELL_ID.json    one result per cell, written to a temporary name and renamed into place
    OUT/cells/CELL_ID.running marker of the cell in flight (left behind if the process was killed)

A cell runs in phases (prune, load, evaluate, perplexity, latency, size); each records its result or its
failure reason in `phases`, and a failed phase discards no other phase's result. A cell's `status` is ok (every
phase ok), partial (some measure ok, some phase failed) or failed (nothing measured). An ok cell is never
recomputed; a partial or failed one is retried on the next run unless `retry_failed=False`, and only its
phases that did not end ok run again (prune and load too, from the pruned-model cache, to have the model).
The cell's file is rewritten after every phase, so killing the process at any moment loses at most the
phase in flight.

Pruned models are cached (see cache.py): a dtype sweep or a re-run prunes each model once.
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..harness_ext.errors import UserError
from ..harness_ext.io import write_json_atomic
from .cache import PrunedModelCache, model_fingerprint, pruned_checkpoint
from .evaluation import GridTasks, evaluate_cell, flatten_metrics, needs_builtin_tasks, write_samples
from .perplexity import cell_perplexity
from .spec import Cell, GridSpec, expand_cells, shard_cells

RESULT_FORMAT = "sparse-bench-leaderboard-cell/1"
GRID_FORMAT = "sparse-bench-leaderboard-grid/1"
RESULT_NEUTRAL_KEYS = ("source", "name", "log_samples")  # spec keys that change no number in a cell


# --- the output folder -----------------------------------------------------------------------------------

def cells_dir(out_dir: Path) -> Path:
    return Path(out_dir) / "cells"


def result_path(out_dir: Path, cell: Cell) -> Path:
    return cells_dir(out_dir) / f"{cell.cell_id}.json"


def read_result(path: Path) -> dict[str, Any] | None:
    """A cell's result, or None if there is none (or it cannot be read: then it is recomputed)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == RESULT_FORMAT else None


def write_grid_file(out_dir: Path, spec: GridSpec, cells: list[Cell]) -> None:
    """Record the spec in OUT/grid.json; refuse an OUT that holds results of a spec whose numbers differ
    (display-only changes such as `name`, `log_samples` or a task's `metrics` just update the file)."""
    path = Path(out_dir) / "grid.json"
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
    """The spec without the keys that change no number in a cell."""
    kept = {k: v for k, v in spec_dict.items() if k not in RESULT_NEUTRAL_KEYS}
    kept["tasks"] = [{k: v for k, v in task.items() if k != "metrics"} for task in kept.get("tasks", [])]
    return kept


# --- one cell ----------------------------------------------------------------------------------------------

def nonfinite_flags(metrics: dict[str, dict[str, Any]], *extra: tuple[str, Any]) -> list[str]:
    """One flag per NaN or infinite number (metrics, perplexity, ...): shown in the table, never hidden."""
    flags = [f"{task}/{name} is {value}" for task, values in metrics.items() for name, value in values.items()
             if isinstance(value, float) and not math.isfinite(value)]
    return flags + [f"{name} is {value}" for name, value in extra
                    if isinstance(value, float) and not math.isfinite(value)]


def samples_path(out_dir: Path, cell: Cell) -> Path:
    return Path(out_dir) / "samples" / cell.cell_id


def cell_size(model: Any) -> dict[str, Any]:
    """Dense and compressed checkpoint bytes of the model as evaluated (its dtype), from the checkpoints module."""
    from ..harness_ext.checkpoints import checkpoint_sizes

    return {"status": "measured", **checkpoint_sizes(model)}


@dataclass
class CellRun:
    """What the phases of one cell share: the cell, its grid, and the model once prune and load ran."""

    cell: Cell
    spec: GridSpec
    resolve: Callable[[str], tuple[str, str]]  # model name -> (path, weights fingerprint)
    cache: PrunedModelCache
    tasks: GridTasks
    samples_dir: Path
    source: str = ""
    model_args: dict[str, Any] = field(default_factory=dict)
    lm: Any = None


def prune_phase(run: CellRun) -> dict[str, Any]:
    """The model's path and fingerprint, and for a pruned cell its pruned checkpoint (cached)."""
    model_path, fingerprint = run.resolve(run.cell.model)
    result: dict[str, Any] = {"model_path": model_path, "model_fingerprint": fingerprint, "prune": None}
    run.source = model_path
    if not run.cell.is_dense:
        folder, prune_report, cached = pruned_checkpoint(run.cell, run.spec, model_path, fingerprint, run.cache)
        run.source = str(folder)
        result.update(prune=prune_report, pruned_checkpoint=str(folder), prune_cached=cached)
    return result


def load_phase(run: CellRun) -> dict[str, Any]:
    """Load the (pruned) checkpoint through `sparse-hf` in the cell's dtype; its measured sparsity."""
    from lm_eval.api.registry import get_model

    run.model_args = {"pretrained": run.source, "dtype": run.cell.dtype}
    run.lm = get_model("sparse-hf").create_from_arg_obj(
        run.model_args, {"batch_size": run.spec.batch_size, "device": run.spec.device})
    return {"sparsity": run.lm.sparsity_report.to_dict()}


def evaluate_phase(run: CellRun) -> dict[str, Any]:
    """Every task through lm-eval; per-sample outputs to `samples_dir`; metrics flattened per task."""
    evaluations = evaluate_cell(run.lm, run.spec, *run.tasks.for_model(run.resolve(run.cell.model)[0]))
    write_samples(run.samples_dir, evaluations)
    metrics: dict[str, Any] = {}
    better: dict[str, Any] = {}
    for evaluation in evaluations:
        task_metrics, task_better = flatten_metrics(evaluation["results"])
        metrics.update(task_metrics)
        better.update(task_better)
    return {"evaluations": evaluations, "metrics": metrics, "higher_is_better": better}


def perplexity_phase(run: CellRun) -> dict[str, Any]:
    """Perplexity and, in the same forward, KL / top-1 agreement with the dense model (agreement.py; building
    the dense reference first when no cell has yet)."""
    from .agreement import cell_agreement

    agreement = cell_agreement(run.cell, run.spec, *run.resolve(run.cell.model), run.cache.root)
    return {"perplexity": cell_perplexity(run.lm, run.spec, agreement),
            "agreement": None if agreement is None else agreement.finish()}


def latency_phase(run: CellRun) -> dict[str, Any]:
    from .measure import measure_latency

    latency = run.spec.latency
    return {"latency": None if latency is None else measure_latency(
        run.lm.model, latency.batch, latency.seqlen, latency.new_tokens, latency.repeats, run.spec.seed)}


def size_phase(run: CellRun) -> dict[str, Any]:
    return {"size": cell_size(run.lm.model)}


PREREQUISITES: dict[str, Callable[[CellRun], dict[str, Any]]] = {"prune": prune_phase, "load": load_phase}
MEASURES: dict[str, Callable[[CellRun], dict[str, Any]]] = {  # each needs only the loaded model
    "evaluate": evaluate_phase, "perplexity": perplexity_phase, "latency": latency_phase, "size": size_phase}
PHASES = (*PREREQUISITES, *MEASURES)
NOT_RUN_YET = "not run yet (in flight, or the run stopped before it)"
PHASE_KEYS = {  # the record keys each phase fills
    "prune": ("model_path", "model_fingerprint", "prune", "pruned_checkpoint", "prune_cached"),
    "load": ("sparsity",), "evaluate": ("evaluations", "metrics", "higher_is_better"),
    "perplexity": ("perplexity", "agreement"), "latency": ("latency",), "size": ("size",)}


def finished_phases(previous: dict[str, Any] | None) -> dict[str, Any]:
    """The part of an earlier record of the cell that a re-run keeps: every phase that ended ok, with the
    keys it filled and its timing. Records written before phases were recorded keep nothing."""
    kept: dict[str, Any] = {"phases": {}, "timings": {}}
    for name, state in ((previous or {}).get("phases") or {}).items():
        if name in PHASE_KEYS and state.get("status") == "ok":
            kept["phases"][name] = state
            kept["timings"][name] = previous.get("timings", {}).get(name, state.get("seconds"))
            kept.update({key: previous[key] for key in PHASE_KEYS[name] if key in previous})
    return kept


def run_phase(record: dict[str, Any], name: str, work: Callable[[], dict[str, Any]]) -> bool:
    """Run one phase: the keys `work()` returns go into `record`, its status (ok, or failed with a one-line
    reason and the traceback) into `record["phases"][name]`, its wall seconds into `record["timings"]`."""
    start = time.perf_counter()
    try:
        record.update(work())
        state: dict[str, Any] = {"status": "ok", "reason": None}
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:  # noqa: BLE001 - a failed phase is recorded and the cell goes on
        state = {"status": "failed", "reason": failure_reason(error), "traceback": traceback.format_exc()}
    seconds = time.perf_counter() - start
    record["timings"][name] = seconds
    record["phases"][name] = {**state, "seconds": seconds}
    return state["status"] == "ok"


def cell_status(phases: dict[str, dict[str, Any]]) -> tuple[str, str | None]:
    """(status, reason): ok when every phase is ok; partial when some measure is ok and some phase failed or
    has not run; failed when nothing was measured. The reason names each of those phases
    (`perplexity: ...; latency: not run yet ...`)."""
    failed = [f"{name}: {phases[name]['reason'] if name in phases else NOT_RUN_YET}" for name in PHASES
              if phases.get(name, {}).get("status") != "ok"]
    if not failed:
        return "ok", None
    measured = any(phases.get(name, {}).get("status") == "ok" for name in MEASURES)
    return ("partial" if measured else "failed"), "; ".join(failed)


def with_status(record: dict[str, Any]) -> dict[str, Any]:
    """`record` with `status`, `reason` and `flags` set from what it holds."""
    record["status"], record["reason"] = cell_status(record["phases"])
    ppl = (record.get("perplexity") or {}).get("perplexity")
    record["flags"] = nonfinite_flags(record.get("metrics", {}), ("perplexity", ppl))
    return record


def run_cell(run: CellRun, previous: dict[str, Any] | None = None,
             save: Callable[[dict[str, Any]], None] = lambda record: None) -> dict[str, Any]:
    """Run the phases of one cell that `previous` (its earlier record, if any) did not finish; returns the
    record's measured part: `status`, `reason`, `phases` ({name: {status, reason, seconds}}), `timings`,
    each phase's keys (PHASE_KEYS) and `flags`. `save(record)` is called after every phase, so a run killed
    mid-cell keeps the phases that finished.

    prune (model resolution, fingerprint, pruning or the cache lookup) and load run whenever a measure is to
    run (a re-run keeps their earlier result when they ended ok), then each measure not finished before. A
    failed measure never discards another's result; a failed prune or load marks the phases it kept from
    running as failed ("not run: ..."), to be retried."""
    record = finished_phases(previous)
    steps = [(name, work, name in record["phases"]) for name, work in PREREQUISITES.items()]
    steps += [(name, work, False) for name, work in MEASURES.items() if name not in record["phases"]]
    for index, (name, work, kept) in enumerate(steps):
        target = {"phases": {}, "timings": {}} if kept else record  # kept: run for the model, keep the result
        done = run_phase(target, name, lambda work=work: work(run))
        if not done:
            record["phases"][name] = target["phases"][name]
            if name in PREREQUISITES:
                for later, _, _ in steps[index + 1:]:
                    record["phases"][later] = {"status": "failed", "reason": f"not run: the {name} phase failed",
                                               "seconds": 0.0}
        save(with_status(record))
        if not done and name in PREREQUISITES:
            break
    return record


def environment() -> dict[str, Any]:
    import lm_eval
    import torch
    import transformers

    from ..harness_ext import __version__

    return {"sparse_bench": __version__, "lm_eval": getattr(lm_eval, "__version__", "unknown"),
            "torch": torch.__version__, "transformers": transformers.__version__, "host": socket.gethostname()}


def failure_reason(error: BaseException) -> str:
    """One line: the error's own message for user errors, `Type: first line` otherwise."""
    if isinstance(error, UserError):
        return str(error)
    if isinstance(error, MemoryError) or "out of memory" in str(error).lower():
        return f"out of memory: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".strip()


# --- the grid ------------------------------------------------------------------------------------------------

@dataclass
class GridSummary:
    """What a run did, per cell id: done (already there), ok, partial (some phase failed, the others' results
    kept), failed (nothing measured)."""

    done: list[str] = field(default_factory=list)
    ok: list[str] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    interrupted_before: list[str] = field(default_factory=list)


def cell_label(cell: Cell) -> str:
    target = "" if cell.is_dense else (f" {cell.sparsity:g}" if cell.structure == "unstructured"
                                        else f" {cell.structure}")
    return f"{Path(cell.model.rstrip('/')).name} {cell.method_label}{target} {cell.dtype}"


def run_grid(spec: GridSpec, out_dir: Path, shard: tuple[int, int] = (0, 1), cache_root: Path | None = None,
             retry_failed: bool = True, progress: bool = True) -> GridSummary:
    """Run this shard's cells of `spec` into `out_dir` (see the module docstring); returns what happened."""
    from tqdm import tqdm

    from ..harness_ext.models import resolve_model_path, sparse_bench_home
    from ..model_wrappers.registration import register_with_lm_eval

    out_dir = Path(out_dir)
    all_cells = expand_cells(spec)
    write_grid_file(out_dir, spec, all_cells)
    cells = shard_cells(all_cells, *shard)
    cache = PrunedModelCache(Path(cache_root) if cache_root else sparse_bench_home() / "pruned")
    summary, todo = GridSummary(), []
    for cell in cells:
        existing = read_result(result_path(out_dir, cell))
        stopped = existing and "phases" in existing and not set(PHASES) <= set(existing["phases"])
        if existing and (existing["status"] == "ok" or not (retry_failed or stopped)):
            summary.done.append(cell.cell_id)
        else:
            todo.append((cell, existing))
    say = tqdm.write if progress else (lambda text: None)
    say(f"grid {spec.name}: {len(all_cells)} cells, shard {shard[0]}/{shard[1]}: {len(cells)} cells, "
        f"{len(summary.done)} already done, {len(todo)} to run; results in {out_dir}")
    if not todo:
        return summary
    register_with_lm_eval()
    quiet_library_progress_bars()
    tasks = GridTasks(spec, needs_builtin_tasks(spec))
    resolve = functools.cache(lambda model: (path := resolve_model_path(model), model_fingerprint(path)))
    env = environment()
    bar = tqdm(todo, desc=f"grid {spec.name}", unit="cell", disable=not progress)
    for cell, previous in bar:
        bar.set_postfix_str(cell_label(cell))
        marker = result_path(out_dir, cell).with_suffix(".running")
        if marker.exists():
            summary.interrupted_before.append(cell.cell_id)
            say(f"{cell_label(cell)}: a previous run stopped inside this cell (killed or out of memory?); "
                "running it again")
        write_json_atomic(marker, {"pid": os.getpid(), "host": socket.gethostname(), "started": _now()})
        start = time.perf_counter()
        head: dict[str, Any] = {"format": RESULT_FORMAT, "cell_id": cell.cell_id, "cell": cell.describe(),
                                "started": _now(), "environment": env}

        def save(measured: dict[str, Any], head: dict[str, Any] = head, start: float = start, cell: Cell = cell):
            write_json_atomic(result_path(out_dir, cell), {**head, **measured,
                                                           "seconds": time.perf_counter() - start})

        measured = run_cell(CellRun(cell, spec, resolve, cache, tasks, samples_path(out_dir, cell)), previous, save)
        record = {**head, **measured, "seconds": time.perf_counter() - start}
        marker.unlink(missing_ok=True)
        getattr(summary, record["status"]).append(cell.cell_id)
        say(f"{cell_label(cell)}: {record['status']} in {record['seconds']:.0f} s"
            + (f" - {record['reason']}" if record["reason"] else "")
            + (f" - FLAGGED: {'; '.join(record['flags'])}" if record.get("flags") else ""))
    return summary


def quiet_library_progress_bars() -> None:
    """Hide transformers' and datasets' per-file progress bars: the grid shows its own bar over cells."""
    import datasets
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    datasets.disable_progress_bars()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


__all__ = ["RESULT_FORMAT", "GridSummary", "PrunedModelCache", "run_grid", "run_cell", "read_result",
           "result_path", "cells_dir", "model_fingerprint", "cell_label"]
