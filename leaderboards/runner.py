"""Run the cells of a grid: prune (cached), evaluate through lm-eval's Python API, measure, write one file each.

Layout of an output folder:
    OUT/grid.json             the resolved spec and the list of cells (every shard writes the same file)
    OUT/cells/CELL_ID.json    one result per cell, written to a temporary name and renamed into place
    OUT/cells/CELL_ID.running marker of the cell in flight (left behind if the process was killed)

A cell whose file says `"status": "ok"` is never recomputed; a failed cell is retried on the next run unless
`retry_failed=False`. Killing the process at any moment loses at most the cell in flight.

Pruned models are cached (see cache.py): a dtype sweep or a re-run prunes each model once.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import socket
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..harness_ext.errors import UserError
from ..harness_ext.io import write_json_atomic, write_text_atomic
from .cache import PrunedModelCache, model_fingerprint, pruned_checkpoint
from .spec import Cell, GridSpec, TaskSpec, expand_cells, shard_cells

RESULT_FORMAT = "sparse-bench-leaderboard-cell/1"
GRID_FORMAT = "sparse-bench-leaderboard-grid/1"
CHARS_PER_TOKEN_CAP = 16  # see cell_perplexity
RESULT_NEUTRAL_KEYS = ("source", "name", "log_samples")  # spec keys that change no number in a cell
NOT_METRICS = ("alias", "name", "sample_len", "samples")  # bookkeeping entries of lm-eval's per-task results


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

def task_groups(tasks: tuple[TaskSpec, ...]) -> list[tuple[int | float | None, int | None, list[str]]]:
    """Tasks that share (limit, num_fewshot) run in one `simple_evaluate` call."""
    groups: dict[tuple, list[str]] = {}
    for task in tasks:
        groups.setdefault((task.limit, task.num_fewshot), []).append(task.name)
    return [(limit, fewshot, names) for (limit, fewshot), names in groups.items()]


def flatten_metrics(results: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, bool]]]:
    """lm-eval's `results` and `higher_is_better` -> {task: {metric: value}} with `metric,none` shortened to
    `metric` (other filters keep `metric,filter`) and stderr as `metric_stderr`."""
    metrics: dict[str, dict[str, Any]] = {}
    for task, values in results.get("results", {}).items():
        metrics[task] = {key.removesuffix(",none"): value for key, value in values.items()
                         if key not in NOT_METRICS and isinstance(value, (int, float))}
    better = {task: {key.removesuffix(",none"): flag for key, flag in flags.items()}
              for task, flags in results.get("higher_is_better", {}).items()}
    return metrics, better


def nonfinite_flags(metrics: dict[str, dict[str, Any]], *extra: tuple[str, Any]) -> list[str]:
    """One flag per NaN or infinite number (metrics, perplexity, ...): shown in the table, never hidden."""
    flags = [f"{task}/{name} is {value}" for task, values in metrics.items() for name, value in values.items()
             if isinstance(value, float) and not math.isfinite(value)]
    return flags + [f"{name} is {value}" for name, value in extra
                    if isinstance(value, float) and not math.isfinite(value)]


def evaluate_cell(lm: Any, spec: GridSpec, task_manager: Any) -> list[dict[str, Any]]:
    """All the grid's tasks on one loaded model; one `simple_evaluate` per (limit, num_fewshot) group."""
    import lm_eval

    evaluations = []
    for limit, num_fewshot, names in task_groups(spec.tasks):
        start = time.perf_counter()
        results = lm_eval.simple_evaluate(
            model=lm, tasks=names, limit=limit, num_fewshot=num_fewshot, bootstrap_iters=spec.bootstrap_iters,
            task_manager=task_manager, log_samples=spec.log_samples, random_seed=spec.seed,
            numpy_random_seed=spec.seed, torch_random_seed=spec.seed, fewshot_random_seed=spec.seed,
            verbosity="WARNING")
        if results is None:
            raise RuntimeError("lm-eval returned no results (not rank 0?)")
        evaluations.append({"tasks": names, "limit": limit, "num_fewshot": num_fewshot, "results": results,
                            "seconds": time.perf_counter() - start})
    return evaluations


def needs_builtin_tasks(spec: GridSpec) -> bool:
    """True if some task of the grid is neither ours nor in include_path, so lm-eval's thousands of built-in
    task YAML files must be indexed (10-40 s on 2 cores, once per cell)."""
    from lm_eval.tasks import TaskManager

    own = TaskManager(include_path=spec.include_path, include_defaults=False)
    return not all(task.name in own.all_tasks for task in spec.tasks)


def make_task_manager(spec: GridSpec, model_args: dict[str, Any], builtin_tasks: bool) -> Any:
    """A TaskManager that hands `model_args` to the tasks as metadata, as `lm_eval --model_args` does (Billsum
    reads the tokenizer and context length from them)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=spec.include_path, include_defaults=builtin_tasks, metadata=dict(model_args))


def samples_path(out_dir: Path, cell: Cell) -> Path:
    return Path(out_dir) / "samples" / cell.cell_id


def write_samples(folder: Path, evaluations: list[dict[str, Any]]) -> None:
    """Move lm-eval's per-sample records out of the results into one JSONL file per task."""
    for evaluation in evaluations:
        for task, samples in (evaluation["results"].pop("samples", None) or {}).items():
            lines = "".join(json.dumps(sample, default=str, ensure_ascii=False) + "\n" for sample in samples)
            write_text_atomic(Path(folder) / f"samples_{task}.jsonl", lines)


def wikitext2_test_text() -> str:
    """WikiText-2 raw test: $SPARSE_BENCH_DATA_DIR/wikitext2/wiki.test.raw, else the hub's
    `Salesforce/wikitext` (wikitext-2-raw-v1, test) rows joined with "\\n\\n" as the pruning papers do."""
    from ..harness_ext.perplexity import read_text

    root = os.environ.get("SPARSE_BENCH_DATA_DIR")
    if root:
        return read_text(Path(root) / "wikitext2" / "wiki.test.raw")
    try:
        import datasets

        rows = datasets.load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split="test")["text"]
    except Exception as error:  # noqa: BLE001 - offline, no such dataset: one line for the user
        raise UserError(f"cannot load WikiText-2 test from the hub ({type(error).__name__}); set "
                        "SPARSE_BENCH_DATA_DIR to a folder with wikitext2/wiki.test.raw, or set perplexity.data "
                        "to a text file, or perplexity: null") from None
    return "\n\n".join(rows)


def perplexity_text(spec: GridSpec, tokenizer: Any) -> str:
    """The text whose first `max_tokens` tokens perplexity (and agreement) are measured on.

    Tokenizing all of WikiText-2 test takes ~5 s on 2 cores, so the text is first cut to `CHARS_PER_TOKEN_CAP`
    characters per wanted token (BPE splits words locally, so the first `max_tokens` tokens are unchanged);
    if the cut yields fewer tokens than asked, the whole text is used.
    """
    from ..harness_ext.perplexity import read_text

    settings = spec.perplexity
    text = wikitext2_test_text() if settings.data == "wikitext2" else read_text(settings.data)
    head = text[:settings.max_tokens * CHARS_PER_TOKEN_CAP]
    head_tokens = len(tokenizer(head, add_special_tokens=False, verbose=False)["input_ids"])
    return text if len(head) < len(text) and head_tokens < settings.max_tokens else head


def cell_perplexity(lm: Any, spec: GridSpec, on_logits: Any = None) -> dict[str, Any] | None:
    """Token-level perplexity (harness_ext.perplexity) on the first `max_tokens` tokens of `perplexity_text`;
    `on_logits` sees every batch of windows (the agreement meter)."""
    if spec.perplexity is None:
        return None
    from ..harness_ext.perplexity import token_perplexity

    settings = spec.perplexity
    result = token_perplexity(lm.model, lm.tokenizer, perplexity_text(spec, lm.tokenizer), settings.seqlen,
                              settings.max_tokens, on_logits)
    return {**result, "data": settings.data}


def cell_size(model: Any) -> dict[str, Any]:
    """Dense and compressed checkpoint bytes of the model as evaluated (its dtype), from the checkpoints module."""
    from ..harness_ext.checkpoints import checkpoint_sizes

    return {"status": "measured", **checkpoint_sizes(model)}


@contextmanager
def timed(timings: dict[str, float], phase: str) -> Iterator[None]:
    """Add the wall seconds of the block to `timings[phase]`."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - start


def run_cell(cell: Cell, spec: GridSpec, model_path: str, fingerprint: str, cache: PrunedModelCache,
             builtin_tasks: bool, samples_dir: Path) -> dict[str, Any]:
    """Everything one cell measures, as a JSON-ready dict (status ok). Raises on failure.

    `timings` holds the wall seconds of each phase: prune (pruning, saving and the cache lookup), load,
    evaluate (all lm-eval calls), agreement_reference (building the dense reference when no cell did yet),
    perplexity (with KL / top-1 agreement in the same forward), latency, size. Per-sample outputs (spec `log_samples`) go to
    `samples_dir/samples_TASK.jsonl`, lm-eval's own format (for `sparse-bench compare-samples`)."""
    from lm_eval.api.registry import get_model

    from .agreement import cell_agreement
    from .measure import measure_latency

    timings: dict[str, float] = {}
    record: dict[str, Any] = {"model_path": model_path, "model_fingerprint": fingerprint, "prune": None,
                              "timings": timings}
    source = model_path
    if not cell.is_dense:
        with timed(timings, "prune"):
            folder, prune_report, cached = pruned_checkpoint(cell, spec, model_path, fingerprint, cache)
        source = str(folder)
        record.update(prune=prune_report, pruned_checkpoint=source, prune_cached=cached)
    model_args = {"pretrained": source, "dtype": cell.dtype}
    with timed(timings, "load"):
        lm = get_model("sparse-hf").create_from_arg_obj(
            model_args, {"batch_size": spec.batch_size, "device": spec.device})
    record["sparsity"] = lm.sparsity_report.to_dict()
    with timed(timings, "evaluate"):
        record["evaluations"] = evaluate_cell(lm, spec, make_task_manager(spec, model_args, builtin_tasks))
    write_samples(samples_dir, record["evaluations"])
    record["metrics"], record["higher_is_better"] = {}, {}
    for evaluation in record["evaluations"]:
        metrics, better = flatten_metrics(evaluation["results"])
        record["metrics"].update(metrics)
        record["higher_is_better"].update(better)
    with timed(timings, "agreement_reference"):  # only when the dense reference is not cached yet
        agreement = cell_agreement(cell, spec, model_path, fingerprint, cache.root)
    with timed(timings, "perplexity"):
        record["perplexity"] = cell_perplexity(lm, spec, agreement)
        record["agreement"] = None if agreement is None else agreement.finish()
    latency = spec.latency
    with timed(timings, "latency"):
        record["latency"] = None if latency is None else measure_latency(
            lm.model, latency.batch, latency.seqlen, latency.new_tokens, latency.repeats, spec.seed)
    with timed(timings, "size"):
        record["size"] = cell_size(lm.model)
    ppl = (record["perplexity"] or {}).get("perplexity")
    record["flags"] = nonfinite_flags(record["metrics"], ("perplexity", ppl))
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
    """What a run did, per cell id: done (already there), ok, failed."""

    done: list[str] = field(default_factory=list)
    ok: list[str] = field(default_factory=list)
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
        if existing and (existing["status"] == "ok" or (existing["status"] == "failed" and not retry_failed)):
            summary.done.append(cell.cell_id)
        else:
            todo.append(cell)
    say = tqdm.write if progress else (lambda text: None)
    say(f"grid {spec.name}: {len(all_cells)} cells, shard {shard[0]}/{shard[1]}: {len(cells)} cells, "
        f"{len(summary.done)} already done, {len(todo)} to run; results in {out_dir}")
    if not todo:
        return summary
    register_with_lm_eval()
    quiet_library_progress_bars()
    builtin_tasks = needs_builtin_tasks(spec)
    models: dict[str, tuple[str, str]] = {}
    env = environment()
    bar = tqdm(todo, desc=f"grid {spec.name}", unit="cell", disable=not progress)
    for cell in bar:
        bar.set_postfix_str(cell_label(cell))
        marker = result_path(out_dir, cell).with_suffix(".running")
        if marker.exists():
            summary.interrupted_before.append(cell.cell_id)
            say(f"{cell_label(cell)}: a previous run stopped inside this cell (killed or out of memory?); "
                "running it again")
        write_json_atomic(marker, {"pid": os.getpid(), "host": socket.gethostname(), "started": _now()})
        started, start = _now(), time.perf_counter()
        record: dict[str, Any] = {"format": RESULT_FORMAT, "cell_id": cell.cell_id, "cell": cell.describe(),
                                  "started": started, "environment": env}
        try:
            if cell.model not in models:
                path = resolve_model_path(cell.model)
                models[cell.model] = (path, model_fingerprint(path))
            record.update(status="ok", reason=None,
                          **run_cell(cell, spec, *models[cell.model], cache, builtin_tasks,
                                     samples_path(out_dir, cell)))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as error:  # noqa: BLE001 - a failed cell is recorded and the grid goes on
            record.update(status="failed", reason=failure_reason(error), traceback=traceback.format_exc())
        record["seconds"] = time.perf_counter() - start
        write_json_atomic(result_path(out_dir, cell), record)
        marker.unlink(missing_ok=True)
        (summary.ok if record["status"] == "ok" else summary.failed).append(cell.cell_id)
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
           "result_path", "cells_dir", "model_fingerprint", "task_groups", "flatten_metrics", "cell_label"]
