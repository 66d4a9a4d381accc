"""lm-eval's per-sample files (`--log_samples`): read them, pair two runs' samples by document, read their
outputs and per-sample metrics. Used by compare-samples, the error analysis and answer flips."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from .errors import UserError
from .io import read_jsonl_records

# lm-eval writes samples_<task>_<date>.jsonl, the leaderboards samples_<task>.jsonl
SAMPLES_FILE_NAME = re.compile(r"^samples_(?P<task>.+?)(_\d{4}-\d{2}-\d{2}T[0-9.:-]+)?\.jsonl$")


def task_of(path: Path) -> str | None:
    """The task a samples file belongs to, from its name (None for a name lm-eval did not give)."""
    match = SAMPLES_FILE_NAME.match(Path(path).name)
    return match["task"] if match else None


def same_task(file_a: Path, file_b: Path) -> None:
    """UserError if the two files' names say they hold different tasks."""
    task_a, task_b = task_of(file_a), task_of(file_b)
    if task_a and task_b and task_a != task_b:
        raise UserError(f"{Path(file_a).name} holds task {task_a} and {Path(file_b).name} task {task_b}; compare "
                        "two runs of the same task")


def read_samples(path: Path, filter_name: str | None = None) -> dict[int, dict[str, Any]]:
    """{doc_id: sample} from an lm-eval samples file, for one filter (the file's first one by default)."""
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass the samples_<task>_<date>.jsonl files that lm-eval writes "
                        "with --log_samples")
    samples: dict[int, dict[str, Any]] = {}
    for line_number, sample in read_jsonl_records(path, hint="is this an lm-eval samples file?"):
        if "doc_id" not in sample:
            raise UserError(f"{path}, line {line_number}: no doc_id; is this an lm-eval samples file?")
        filter_name = filter_name or sample.get("filter")
        if sample.get("filter") == filter_name:
            samples[int(sample["doc_id"])] = sample
    if not samples:
        raise UserError(f"{path} holds no samples" + (f" for filter {filter_name!r}" if filter_name else "")
                        + "; give a samples_TASK.jsonl written by lm-eval --log_samples")
    return samples


def output_text(sample: dict[str, Any]) -> str | None:
    """The generated text of a generation sample (stripped), None for likelihood tasks."""
    responses = sample.get("filtered_resps") or []
    first = responses[0] if responses else None
    return first.strip() if isinstance(first, str) else None


def scalar_metrics(sample: dict[str, Any]) -> dict[str, float]:
    """The sample's per-sample metrics that are numbers: plain ones, and `bits_per_byte` from lm-eval's
    (log-likelihood in nats, bytes) pair; other aggregation inputs (pairs for F1, AUC) are left out."""
    metrics = {}
    for name in sample.get("metrics", []):
        value = sample.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics[name] = float(value)
        elif name == "bits_per_byte" and isinstance(value, list) and len(value) == 2 and value[1]:
            metrics[name] = -value[0] / value[1] / math.log(2)
    return metrics


def shared_doc_ids(samples_a: dict[int, dict], samples_b: dict[int, dict]) -> list[int]:
    """The doc_ids both runs scored, in order; UserError unless they are the same documents (`doc_hash`)."""
    shared = sorted(set(samples_a) & set(samples_b))
    if not shared:
        raise UserError("the two files share no doc_id; compare two runs of the same task")
    for doc_id in shared:
        if samples_a[doc_id].get("doc_hash") != samples_b[doc_id].get("doc_hash"):
            raise UserError(f"doc_id {doc_id} is a different document in the two files (another task, data "
                            "or limit?); compare two runs of the same task on the same data")
    return shared
