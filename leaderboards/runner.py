"""Run the cells of a grid: prune (cached), load, measure (measures.py), write one `CellResult` each (store.py).

A cell runs in phases: prune and load, then each measure of `measures.MEASURES` (evaluate, perplexity,
latency, size, finetune); each records its result or its failure reason in `phases`, and a failed phase discards no
other phase's result. A cell's `status` is ok (every phase ok), partial (some measure ok, some phase failed)
or failed (nothing measured). An ok cell is never recomputed; a partial or failed one is retried on the next
run unless `retry_failed=False`, and only its phases that did not end ok run again (prune and load too, from
the pruned-model cache, to have the model). The cell's file is rewritten after every phase, so killing the
process at any moment loses at most the phase in flight.

Pruned models are cached (see cache.py): a dtype sweep or a re-run prunes each model once.
"""

from __future__ import annotations

import functools
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
from .cells import Cell, expand_cells, shard_cells
from .evaluation import GridTasks, needs_builtin_tasks
from .families import evaluator_for
from .measures import MEASURES, LoadedCell
from .spec import GridSpec
from .store import (
    CellInfo,
    CellResult,
    read_result,
    running_marker,
    samples_dir,
    utc_now,
    write_grid_file,
    write_result,
)


def nonfinite_flags(metrics: dict[str, dict[str, Any]], *extra: tuple[str, Any]) -> list[str]:
    """One flag per NaN or infinite number (metrics, perplexity, ...): shown in the table, never hidden."""
    flags = [f"{task}/{name} is {value}" for task, values in metrics.items() for name, value in values.items()
             if isinstance(value, float) and not math.isfinite(value)]
    return flags + [f"{name} is {value}" for name, value in extra
                    if isinstance(value, float) and not math.isfinite(value)]


def prune_phase(run: LoadedCell) -> dict[str, Any]:
    """The model's path, fingerprint and family (its evaluator), and for a pruned cell its pruned checkpoint
    (cached)."""
    from transformers import AutoConfig

    model_path, fingerprint = run.resolve(run.cell.model)
    run.evaluator = evaluator_for(AutoConfig.from_pretrained(model_path))
    result: dict[str, Any] = {"model_path": model_path, "model_fingerprint": fingerprint, "prune": None,
                              "model_family": run.evaluator.family}
    run.source = model_path
    if not run.cell.is_dense:
        folder, prune_report, cached = pruned_checkpoint(run.cell, run.spec, model_path, fingerprint, run.cache)
        run.source = str(folder)
        result.update(prune=prune_report, pruned_checkpoint=str(folder), prune_cached=cached)
    return result


def load_phase(run: LoadedCell) -> dict[str, Any]:
    """Load the (pruned) checkpoint in the cell's dtype through the lm-eval model of its evaluator (`sparse-hf`,
    `sparse-encoder`; families.py), or as a bare model when none fits; its measured sparsity."""
    from lm_eval.api.registry import get_model

    run.model_args = {"pretrained": run.source, "dtype": run.cell.dtype, **run.evaluator.model_args}
    if run.evaluator.lm_eval_model is None:
        run.lm = BareModel.load(run.source, run.cell.dtype, run.spec.device)
    else:
        run.lm = get_model(run.evaluator.lm_eval_model).create_from_arg_obj(
            run.model_args, {"batch_size": run.spec.batch_size, "device": run.spec.device})
    return {"sparsity": run.lm.sparsity_report.to_dict()}


@dataclass
class BareModel:
    """A model no lm-eval model evaluates (its tasks are skipped), loaded for the measures that need only the
    weights (size, latency, analysis): `model`, `tokenizer` and `sparsity_report` as the lm-eval models have."""

    model: Any
    tokenizer: Any
    sparsity_report: Any

    @classmethod
    def load(cls, path: str, dtype: str, device: str) -> BareModel:
        from ..harness_ext.models import load_model
        from ..harness_ext.pruning.report import report_as_loaded

        model, tokenizer = load_model(path, dtype, device)
        return cls(model, tokenizer, report_as_loaded(model))


PREREQUISITES: dict[str, Callable[[LoadedCell], dict[str, Any]]] = {"prune": prune_phase, "load": load_phase}
PHASES = (*PREREQUISITES, *MEASURES)
NOT_RUN_YET = "not run yet (in flight, or the run stopped before it)"
PHASE_KEYS = {  # the record keys each phase fills
    "prune": ("model_path", "model_fingerprint", "model_family", "prune", "pruned_checkpoint", "prune_cached"),
    "load": ("sparsity",), **{name: measure.keys for name, measure in MEASURES.items()}}



def finished_phases(result: CellResult, previous: CellResult | None) -> CellResult:
    """`result` with the part of an earlier record of the cell that a re-run keeps: every phase that ended ok,
    with the keys it filled and its timing. Records written before phases were recorded keep nothing."""
    for name, state in (previous.phases if previous else {}).items():
        if name in PHASE_KEYS and state.get("status") == "ok":
            result.phases[name] = state
            result.timings[name] = previous.timings.get(name, state.get("seconds"))
            result.update({key: previous.get(key) for key in PHASE_KEYS[name]})
    return result


def run_phase(record: CellResult, name: str, work: Callable[[], dict[str, Any]]) -> bool:
    """Run one phase: the keys `work()` returns go into `record`, its status (ok, or failed with a one-line
    reason and the traceback) into `record.phases[name]`, its wall seconds into `record.timings`."""
    start = time.perf_counter()
    try:
        record.update(work())
        state: dict[str, Any] = {"status": "ok", "reason": None}
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:  # noqa: BLE001 - a failed phase is recorded and the cell goes on
        state = {"status": "failed", "reason": failure_reason(error), "traceback": traceback.format_exc()}
    seconds = time.perf_counter() - start
    record.timings[name] = seconds
    record.phases[name] = {**state, "seconds": seconds}
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


def with_status(record: CellResult) -> CellResult:
    """`record` with `status`, `reason` and `flags` set from what it holds."""
    record.status, record.reason = cell_status(record.phases)
    ppl = (record.get("perplexity") or {}).get("perplexity")
    record.flags = nonfinite_flags(record.metrics, ("perplexity", ppl))
    return record


def run_cell(run: LoadedCell, record: CellResult, previous: CellResult | None = None,
             save: Callable[[CellResult], None] = lambda record: None) -> CellResult:
    """Run the phases of one cell that `previous` (its earlier record, if any) did not finish, into `record`
    (which holds what the cell is); `save(record)` is called after every phase, so a run killed mid-cell keeps
    the phases that finished.

    prune (model resolution, fingerprint, pruning or the cache lookup) and load run whenever a measure is to
    run (a re-run keeps their earlier result when they ended ok), then each measure not finished before. A
    failed measure never discards another's result; a failed prune or load marks the phases it kept from
    running as failed ("not run: ..."), to be retried."""
    record = finished_phases(record, previous)
    steps = [(name, work, name in record.phases) for name, work in PREREQUISITES.items()]
    steps += [(name, m.function, False) for name, m in MEASURES.items() if name not in record.phases]
    for index, (name, work, kept) in enumerate(steps):
        target = CellResult() if kept else record  # kept: run for the model, keep the earlier result
        done = run_phase(target, name, lambda work=work: work(run))
        if not done:
            record.phases[name] = target.phases[name]
            if name in PREREQUISITES:
                for later, _, _ in steps[index + 1:]:
                    record.phases[later] = {"status": "failed", "reason": f"not run: the {name} phase failed",
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



def cells_to_run(cells: list[Cell], out_dir: Path, retry_failed: bool,
                 summary: GridSummary) -> list[tuple[Cell, CellResult | None]]:
    """The cells to run with their earlier records; the others are noted done in `summary`."""
    todo = []
    for cell in cells:
        existing = read_result(out_dir, cell.cell_id)
        stopped = existing and existing.phases and not set(PHASES) <= set(existing.phases)
        if existing and (existing.status == "ok" or not (retry_failed or stopped)):
            summary.done.append(cell.cell_id)
        else:
            todo.append((cell, existing))
    return todo


def run_grid(spec: GridSpec, out_dir: Path, shard: tuple[int, int] = (0, 1), cache_root: Path | None = None,
             retry_failed: bool = True, progress: bool = True) -> GridSummary:
    """Run this shard's cells of `spec` into `out_dir` (see the module docstring); returns what happened."""
    from tqdm import tqdm

    from ..harness_ext.models import find_or_prepare_model, sparse_bench_home
    from ..model_wrappers.registration import register_with_lm_eval

    out_dir = Path(out_dir)
    all_cells = expand_cells(spec)
    write_grid_file(out_dir, spec, all_cells)
    cells = shard_cells(all_cells, *shard)
    cache = PrunedModelCache(Path(cache_root) if cache_root else sparse_bench_home() / "pruned")
    summary = GridSummary()
    todo = cells_to_run(cells, out_dir, retry_failed, summary)
    say = tqdm.write if progress else (lambda text: None)
    say(f"grid {spec.name}: {len(all_cells)} cells, shard {shard[0]}/{shard[1]}: {len(cells)} cells, "
        f"{len(summary.done)} already done, {len(todo)} to run; results in {out_dir}")
    if not todo:
        return summary
    check_models(spec, [cell for cell, _ in todo])
    register_with_lm_eval()
    quiet_library_progress_bars()
    tasks = GridTasks(spec, needs_builtin_tasks(spec))
    resolve = functools.cache(lambda model: (path := find_or_prepare_model(model), model_fingerprint(path)))
    env = environment()
    bar = tqdm(todo, desc=f"grid {spec.name}", unit="cell", disable=not progress)
    for cell, previous in bar:
        bar.set_postfix_str(cell.label)
        run = LoadedCell(cell, spec, resolve, cache, tasks, samples_dir(out_dir, cell.cell_id), out_dir)
        record = run_one_cell(run, out_dir, previous, env, summary, say)
        getattr(summary, record.status).append(cell.cell_id)
        say(f"{cell.label}: {record.status} in {record.seconds:.0f} s"
            + (f" - {record.reason}" if record.reason else "")
            + (f" - FLAGGED: {'; '.join(record.flags)}" if record.flags else ""))
    return summary


def check_models(spec: GridSpec, cells: list[Cell]) -> None:
    """UserError before any cell runs if a cell's pruning cannot work on its model (preflight.py)."""
    from ..harness_ext.models import find_or_prepare_model
    from .preflight import check_cells

    by_model: dict[str, list[Cell]] = {}
    for cell in cells:
        by_model.setdefault(cell.model, []).append(cell)
    for model, model_cells in by_model.items():
        try:
            path = find_or_prepare_model(model)
        except UserError:
            continue  # its cells fail in their prune phase, with the reason
        check_cells(model_cells, spec.source, path)


def run_one_cell(run: LoadedCell, out_dir: Path, previous: CellResult | None, env: dict[str, Any],
                 summary: GridSummary, say: Callable[[str], None]) -> CellResult:
    """`run_cell` inside the cell's running marker, its record saved after every phase."""
    cell = run.cell
    marker = running_marker(out_dir, cell.cell_id)
    if marker.exists():
        summary.interrupted_before.append(cell.cell_id)
        say(f"{cell.label}: a previous run stopped inside this cell (killed or out of memory?); running it again")
    write_json_atomic(marker, {"pid": os.getpid(), "host": socket.gethostname(), "started": utc_now()})
    start = time.perf_counter()

    def save(record: CellResult) -> None:
        record.seconds = time.perf_counter() - start
        write_result(out_dir, record)

    head = CellResult(cell.cell_id, CellInfo.from_dict(cell.describe()), started=utc_now(), environment=env)
    record = run_cell(run, head, previous, save)
    record.seconds = time.perf_counter() - start
    marker.unlink(missing_ok=True)
    return record


def quiet_library_progress_bars() -> None:
    """Hide transformers' and datasets' per-file progress bars: the grid shows its own bar over cells."""
    import datasets
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    datasets.disable_progress_bars()


__all__ = ["GridSummary", "PHASES", "NOT_RUN_YET", "run_grid", "run_cell", "cell_status", "failure_reason"]
