"""What a cell measures once its model is loaded: one function per measure, one `Measure` row each.

A measure function takes the loaded cell (`LoadedCell`) and returns the record keys it fills
(`{"latency": {...}}`); `MEASURES` lists them in the order they run. A failed measure is recorded with its
reason and discards no other measure's result (runner.py). Adding a leaderboard column: a function here, a row
in `MEASURES`, a row in columns.COLUMNS (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cache import PrunedModelCache
from .cells import Cell
from .evaluation import GridTasks, evaluate_cell, flatten_metrics, task_output_type, write_samples
from .families import Evaluator, skipped
from .perplexity import cell_perplexity, cell_pseudo_perplexity
from .spec import GridSpec
from .store import ANALYSIS, finetuned_dir, subfolder


@dataclass
class LoadedCell:
    """What the phases of one cell share: the cell, its grid, and the model once prune and load ran."""

    cell: Cell
    spec: GridSpec
    resolve: Callable[[str], tuple[str, str]]  # model name -> (path, weights fingerprint)
    cache: PrunedModelCache
    tasks: GridTasks
    samples_dir: Path
    out_dir: Path  # the grid's output folder (store.py knows its layout)
    source: str = ""  # the checkpoint the cell loads (the model, or its pruned copy)
    evaluator: Evaluator | None = None  # families.evaluator_for the model's config, set by the prune phase
    model_args: dict[str, Any] = field(default_factory=dict)
    lm: Any = None  # the lm-eval model; `lm.model` the torch module


def sparse_hf_model(source: str, dtype: str, spec: GridSpec):
    """The checkpoint `source` loaded through lm-eval's `sparse-hf` model in `dtype`, with the grid's batch size
    and device."""
    from lm_eval.api.registry import get_model

    return get_model("sparse-hf").create_from_arg_obj({"pretrained": source, "dtype": dtype},
                                                      {"batch_size": spec.batch_size, "device": spec.device})


def _evaluate(lm, run: LoadedCell) -> dict[str, Any]:
    """Every grid task the model's family can run, through lm-eval on `lm` (the others skipped with the reason):
    evaluations, metrics and higher_is_better per task, skipped_tasks."""
    manager, tasks = run.tasks.for_model(run.resolve(run.cell.model)[0])
    skipped_tasks = {}
    for task in run.spec.tasks:
        reason = run.evaluator.task_skip_reason(task_output_type(tasks[task.name]))
        if reason:
            skipped_tasks[task.name] = reason
    runnable = tuple(task for task in run.spec.tasks if task.name not in skipped_tasks)
    evaluations = evaluate_cell(lm, run.spec, manager, tasks, runnable)
    metrics: dict[str, Any] = {}
    better: dict[str, Any] = {}
    for evaluation in evaluations:
        task_metrics, task_better = flatten_metrics(evaluation["results"])
        metrics.update(task_metrics)
        better.update(task_better)
    return {"evaluations": evaluations, "metrics": metrics, "higher_is_better": better,
            "skipped_tasks": skipped_tasks}


def measure_evaluation(run: LoadedCell) -> dict[str, Any]:
    """`_evaluate` on the cell's model; per-sample outputs to `samples_dir`."""
    evaluated = _evaluate(run.lm, run)
    write_samples(run.samples_dir, evaluated["evaluations"])
    return evaluated


def measure_perplexity(run: LoadedCell) -> dict[str, Any]:
    """Perplexity and, in the same forward, KL / top-1 agreement with the dense model (agreement.py; building
    the dense reference first when no cell has yet)."""
    from .agreement import cell_agreement

    reason = run.evaluator.causal_skip_reason()
    if run.spec.perplexity is None:
        return {"perplexity": None, "agreement": None}
    if reason:
        return {"perplexity": skipped(reason), "agreement": skipped(reason)}
    agreement = cell_agreement(run.cell, run.spec, *run.resolve(run.cell.model), run.cache.root)
    return {"perplexity": cell_perplexity(run.lm, run.spec, agreement),
            "agreement": None if agreement is None else agreement.finish()}


def measure_pseudo_perplexity(run: LoadedCell) -> dict[str, Any]:
    """Masked-LM pseudo-perplexity on the perplexity text (encoder-only models with a masked-LM head)."""
    reason = run.evaluator.masked_lm_skip_reason()
    if run.spec.perplexity is None:
        return {"pseudo_perplexity": None}
    return {"pseudo_perplexity": skipped(reason) if reason else cell_pseudo_perplexity(run.lm, run.spec)}


def measure_latency(run: LoadedCell) -> dict[str, Any]:
    """Forward latency, generation speed (causal LMs) and peak memory (harness_ext/runtime/latency.py) with dense
    kernels and, when the spec's latency names a runtime, with it too, in interleaved pairs (`runtime_latency`:
    its numbers, the speedups over dense and the per-layer kernel report). Runs last: a runtime swaps layers in."""
    from ..harness_ext.runtime.latency import measure_latency as latency_of
    from ..harness_ext.runtime.latency import measure_runtime

    settings = run.spec.latency
    if settings is None:
        return {"latency": None, "runtime_latency": None}
    no_generation = run.evaluator.causal_skip_reason()
    shapes = (settings.batch, settings.seqlen, settings.new_tokens, settings.repeats)
    if settings.runtime == "dense" or run.cell.is_dense:
        latency, runtime_latency = latency_of(run.lm.model, *shapes, run.spec.seed, generate=not no_generation), None
    else:
        result = measure_runtime(run.lm.model, settings.runtime, *shapes, run.cell.block,
                                 seed=run.spec.seed, generate=not no_generation)
        chosen, latency = result["chosen"], result["dense"]
        runtime_latency = {
            "runtime": settings.runtime, "forward_ms": chosen["forward_ms"],
            "generate_tokens_per_s": chosen["generate_tokens_per_s"], "peak_memory_bytes": chosen["peak_memory_bytes"],
            "weights_bytes": chosen["weights_bytes"], "prefill_speedup": result["prefill_speedup"],
            "decode_speedup": result["decode_speedup"], "report": result["runtime_report"]}
    if no_generation:
        for record in (latency, runtime_latency):
            if record is not None:
                record["generate_tokens_per_s"] = skipped(no_generation)
    return {"latency": latency, "runtime_latency": runtime_latency}


def measure_analysis(run: LoadedCell) -> dict[str, Any]:
    """Per-layer weight analysis (harness_ext.analysis) when the spec asks for it: zeros of the block
    projections, zeros per block, |w| below each threshold; the full report in OUT/analysis/CELL_ID/."""
    if run.spec.analysis is None:
        return {"analysis": None}
    from ..harness_ext.analysis import analyze
    from ..harness_ext.analysis.report import write_report

    analysis = analyze(run.lm.model, list(run.spec.analysis.thresholds))
    folder = subfolder(run.out_dir, ANALYSIS) / run.cell.cell_id
    write_report(analysis, folder)
    return {"analysis": {"block_linear": {key: analysis["block_linear"][key] for key in ("zero_fraction", "below")},
                         "per_layer": [{"label": row["label"], "side": row["side"],
                                        "zero_fraction": row["zero_fraction"]} for row in analysis["per_layer"]],
                         "report": str(folder)}}


def measure_size(run: LoadedCell) -> dict[str, Any]:
    """Dense and compressed checkpoint bytes of the model as evaluated (its dtype), from the checkpoints module."""
    from ..harness_ext.checkpoints import checkpoint_sizes

    return {"size": {"status": "measured", **checkpoint_sizes(run.lm.model)}}


def measure_finetune(run: LoadedCell) -> dict[str, Any]:
    """With a `finetune:` block: the cell's checkpoint fine-tuned with every zero kept (harness_ext.finetune,
    into store.finetuned_dir), its record, and every grid task evaluated again on the fine-tuned model
    (`finetuned_metrics`, per task as `metrics`). A run interrupted inside training resumes from its Trainer
    checkpoints."""
    from ..harness_ext.finetune import finetune
    from ..harness_ext.finetune.run import work_dir_for

    if run.spec.finetune is None:
        return {"finetune": None, "finetuned_metrics": {}}
    out = finetuned_dir(run.out_dir, run.cell.cell_id)
    resume = any(work_dir_for(out).glob("checkpoint-*"))
    record = finetune(run.source, run.spec.finetune, out, resume=resume, progress=False)
    evaluated = _evaluate(sparse_hf_model(str(out), run.cell.dtype, run.spec), run)
    return {"finetune": record, "finetuned_metrics": evaluated["metrics"]}


@dataclass(frozen=True)
class Measure:
    """One measure: its phase name, the record keys its function fills, the function."""

    name: str
    keys: tuple[str, ...]
    function: Callable[[LoadedCell], dict[str, Any]]


MEASURES: dict[str, Measure] = {measure.name: measure for measure in (
    Measure("evaluate", ("evaluations", "metrics", "higher_is_better"), measure_evaluation),
    Measure("perplexity", ("perplexity", "agreement"), measure_perplexity),
    Measure("pseudo_perplexity", ("pseudo_perplexity",), measure_pseudo_perplexity),
    Measure("size", ("size",), measure_size),
    Measure("analysis", ("analysis",), measure_analysis),
    Measure("finetune", ("finetune", "finetuned_metrics"), measure_finetune),
    Measure("latency", ("latency", "runtime_latency"), measure_latency),  # last: a runtime swaps layers
)}

__all__ = ["LoadedCell", "Measure", "MEASURES", "measure_evaluation", "measure_perplexity", "measure_latency",
           "measure_size", "measure_pseudo_perplexity", "measure_analysis", "measure_finetune", "sparse_hf_model"]
