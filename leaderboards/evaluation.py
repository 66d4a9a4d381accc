"""A cell's lm-eval evaluation: the grid's tasks built once per model, one `simple_evaluate` per task.

lm-eval's `simple_evaluate` takes one `limit` for all tasks; a grid gives each task its own. Each task's limit
becomes a list of document indices (`samples`, the first `limit` documents, as `limit` itself would pick). The
tasks' data depend on the model's tokenizer
only (Billsum cuts bills to the model's context), so the task objects are built once per model and reused by
every cell of that model: a grid of 7 cells on one model reads and tokenizes its task data once.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..harness_ext.errors import UserError
from ..harness_ext.io import write_text_atomic
from ..model_wrappers.log_filters import git_lookup_once
from .spec import GridSpec, TaskSpec

NOT_METRICS = ("alias", "name", "sample_len", "samples")  # bookkeeping entries of lm-eval's per-task results


def document_indices(limit: int | float | None, documents: int) -> list[int] | None:
    """The first `limit` documents' indices (a fraction: that share, rounded up, as lm-eval's `limit`); None: all."""
    if limit is None:
        return None
    count = int(math.ceil(documents * limit)) if limit < 1 else int(limit)
    return list(range(min(count, documents)))


def needs_builtin_tasks(spec: GridSpec) -> bool:
    """True if some task of the grid is neither ours nor in include_path, so lm-eval's thousands of built-in
    task YAML files must be indexed (10-40 s on 2 cores, once per model)."""
    from lm_eval.tasks import TaskManager

    own = TaskManager(include_path=spec.include_path, include_defaults=False)
    return not all(task.name in own.all_tasks for task in spec.tasks)


def make_task_manager(spec: GridSpec, model_args: dict[str, Any], builtin_tasks: bool) -> Any:
    """A TaskManager that hands the spec's `metadata` and `model_args` to the tasks as metadata, as `lm_eval
    --metadata --model_args` do (Billsum reads the tokenizer and context length from them)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=spec.include_path, include_defaults=builtin_tasks,
                       metadata={**spec.metadata, **model_args})


@dataclass
class GridTasks:
    """The grid's lm-eval task objects, built on first use for each model (checkpoint path)."""

    spec: GridSpec
    builtin_tasks: bool
    _built: dict[str, tuple[Any, dict[str, Any]]] = field(default_factory=dict)

    def for_model(self, model_path: str) -> tuple[Any, dict[str, Any]]:
        """(TaskManager, {task name: lm-eval Task}) for the model at `model_path` (a pruned copy shares its
        tokenizer, so it shares these)."""
        if model_path not in self._built:
            manager = make_task_manager(self.spec, {"pretrained": model_path}, self.builtin_tasks)
            names = [task.name for task in self.spec.tasks]
            built = manager.load(names)["tasks"]
            groups = [name for name in names if name not in built]
            if groups:
                raise UserError(f"{groups[0]} is a group or tag of lm-eval tasks, not one task; list its tasks "
                                "one by one in the grid spec's tasks")
            self._built[model_path] = (manager, built)
        return self._built[model_path]


def task_output_type(task: Any) -> str:
    """An lm-eval task's output type: `loglikelihood`, `loglikelihood_rolling`, `multiple_choice` or
    `generate_until`."""
    return task.OUTPUT_TYPE


def evaluate_cell(lm: Any, spec: GridSpec, manager: Any, tasks: dict[str, Any],
                  task_specs: tuple[TaskSpec, ...] | None = None) -> list[dict[str, Any]]:
    """The grid's tasks (or `task_specs`, some of them) on one loaded model: one `simple_evaluate` per task
    (its own `num_fewshot` and `gen_kwargs`, its first `limit` documents). One call per task because lm-eval pads every batch to
    its longest request: in one call the demo's 80-token MRPC prompts rode in batches padded to Billsum's
    1,300 tokens. Returns one record per call: tasks, limits, num_fewshot, results, seconds."""
    import lm_eval

    git_lookup_once()
    evaluations = []
    for task in spec.tasks if task_specs is None else task_specs:
        chosen = document_indices(task.limit, len(tasks[task.name].eval_docs))
        start = time.perf_counter()
        results = lm_eval.simple_evaluate(
            model=lm, tasks=[tasks[task.name]], samples=None if chosen is None else {task.name: chosen},
            num_fewshot=task.num_fewshot, gen_kwargs=task.gen_kwargs or None, bootstrap_iters=spec.bootstrap_iters,
            task_manager=manager,
            log_samples=spec.log_samples, random_seed=spec.seed, numpy_random_seed=spec.seed,
            torch_random_seed=spec.seed, fewshot_random_seed=spec.seed)
        if results is None:
            raise RuntimeError("lm-eval returned no results (not rank 0?)")
        evaluations.append({"tasks": [task.name], "limits": {task.name: task.limit}, "num_fewshot": task.num_fewshot,
                            "results": results, "seconds": time.perf_counter() - start})
    return evaluations


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


def write_samples(folder: Path, evaluations: list[dict[str, Any]]) -> None:
    """Move lm-eval's per-sample records out of the results into one JSONL file per task."""
    for evaluation in evaluations:
        for task, samples in (evaluation["results"].pop("samples", None) or {}).items():
            lines = "".join(json.dumps(sample, default=str, ensure_ascii=False) + "\n" for sample in samples)
            write_text_atomic(Path(folder) / f"samples_{task}.jsonl", lines)


__all__ = ["GridTasks", "evaluate_cell", "task_output_type", "flatten_metrics", "write_samples", "needs_builtin_tasks",
           "document_indices"]
