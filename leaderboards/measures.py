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
from .evaluation import GridTasks, evaluate_cell, flatten_metrics, write_samples
from .perplexity import cell_perplexity
from .spec import GridSpec


@dataclass
class LoadedCell:
    """What the phases of one cell share: the cell, its grid, and the model once prune and load ran."""

    cell: Cell
    spec: GridSpec
    resolve: Callable[[str], tuple[str, str]]  # model name -> (path, weights fingerprint)
    cache: PrunedModelCache
    tasks: GridTasks
    samples_dir: Path
    finetuned_dir: Path | None = None  # where the cell's fine-tuned checkpoint goes (a `finetune:` block)
    source: str = ""  # the checkpoint the cell loads (the model, or its pruned copy)
    model_args: dict[str, Any] = field(default_factory=dict)
    lm: Any = None  # the lm-eval model; `lm.model` the torch module


def sparse_hf_model(source: str, dtype: str, spec: GridSpec):
    """The checkpoint `source` loaded through lm-eval's `sparse-hf` model in `dtype`, with the grid's batch size
    and device."""
    from lm_eval.api.registry import get_model

    return get_model("sparse-hf").create_from_arg_obj({"pretrained": source, "dtype": dtype},
                                                      {"batch_size": spec.batch_size, "device": spec.device})


def _evaluate(lm, run: LoadedCell) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """(evaluations, metrics per task, higher_is_better per task) of every grid task on `lm`."""
    evaluations = evaluate_cell(lm, run.spec, *run.tasks.for_model(run.resolve(run.cell.model)[0]))
    metrics: dict[str, Any] = {}
    better: dict[str, Any] = {}
    for evaluation in evaluations:
        task_metrics, task_better = flatten_metrics(evaluation["results"])
        metrics.update(task_metrics)
        better.update(task_better)
    return evaluations, metrics, better


def measure_evaluation(run: LoadedCell) -> dict[str, Any]:
    """Every task through lm-eval; per-sample outputs to `samples_dir`; metrics flattened per task."""
    evaluations, metrics, better = _evaluate(run.lm, run)
    write_samples(run.samples_dir, evaluations)
    return {"evaluations": evaluations, "metrics": metrics, "higher_is_better": better}


def measure_perplexity(run: LoadedCell) -> dict[str, Any]:
    """Perplexity and, in the same forward, KL / top-1 agreement with the dense model (agreement.py; building
    the dense reference first when no cell has yet)."""
    from .agreement import cell_agreement

    agreement = cell_agreement(run.cell, run.spec, *run.resolve(run.cell.model), run.cache.root)
    return {"perplexity": cell_perplexity(run.lm, run.spec, agreement),
            "agreement": None if agreement is None else agreement.finish()}


def measure_latency(run: LoadedCell) -> dict[str, Any]:
    """Forward latency, generation speed and peak memory (latency.py), when the spec asks for them."""
    from .latency import measure_latency as latency_of

    settings = run.spec.latency
    return {"latency": None if settings is None else latency_of(
        run.lm.model, settings.batch, settings.seqlen, settings.new_tokens, settings.repeats, run.spec.seed)}


def measure_size(run: LoadedCell) -> dict[str, Any]:
    """Dense and compressed checkpoint bytes of the model as evaluated (its dtype), from the checkpoints module."""
    from ..harness_ext.checkpoints import checkpoint_sizes

    return {"size": {"status": "measured", **checkpoint_sizes(run.lm.model)}}


def measure_finetune(run: LoadedCell) -> dict[str, Any]:
    """With a `finetune:` block: the cell's checkpoint fine-tuned with every zero kept (harness_ext.finetune,
    into `finetuned_dir`), its record, and every grid task evaluated again on the fine-tuned model
    (`finetuned_metrics`, per task as `metrics`). A run interrupted inside training resumes from its Trainer
    checkpoints."""
    from ..harness_ext.finetune import finetune
    from ..harness_ext.finetune.run import work_dir_for

    if run.spec.finetune is None:
        return {"finetune": None, "finetuned_metrics": {}}
    out = Path(run.finetuned_dir)
    resume = any(work_dir_for(out).glob("checkpoint-*"))
    record = finetune(run.source, run.spec.finetune.config(run.spec.device), out, resume=resume, progress=False)
    _, metrics, _ = _evaluate(sparse_hf_model(str(out), run.cell.dtype, run.spec), run)
    return {"finetune": record, "finetuned_metrics": metrics}


@dataclass(frozen=True)
class Measure:
    """One measure: its phase name, the record keys its function fills, the function."""

    name: str
    keys: tuple[str, ...]
    function: Callable[[LoadedCell], dict[str, Any]]


MEASURES: dict[str, Measure] = {measure.name: measure for measure in (
    Measure("evaluate", ("evaluations", "metrics", "higher_is_better"), measure_evaluation),
    Measure("perplexity", ("perplexity", "agreement"), measure_perplexity),
    Measure("latency", ("latency",), measure_latency),
    Measure("size", ("size",), measure_size),
    Measure("finetune", ("finetune", "finetuned_metrics"), measure_finetune),
)}

__all__ = ["LoadedCell", "Measure", "MEASURES", "measure_evaluation", "measure_perplexity", "measure_latency",
           "measure_size", "measure_finetune", "sparse_hf_model"]
