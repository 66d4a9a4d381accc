"""Answer flips between two runs of a multiple-choice or yes/no task, from lm-eval's logged samples.

Two models can have the same accuracy and still answer different questions right: accuracy hides how many
answers flipped. With A the dense run and B the pruned one, paired by document (`doc_id`, same `doc_hash`):
- `right_to_wrong`: documents A answered right and B wrong; `wrong_to_right`: the reverse;
- `flip_rate`: (right_to_wrong + wrong_to_right) / documents; accuracy changes by
  (wrong_to_right - right_to_wrong) / documents, so equal accuracy can hide a large flip rate.
Right means the per-sample correctness metric (`acc` by default, 1 right / 0 wrong) is 1; lm-eval logs it
for every multiple-choice task and for sparsebench_mrpc.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import UserError
from .samples import read_samples, same_task, shared_doc_ids

DEFAULT_CORRECTNESS_METRIC = "acc"


def _correct(sample: dict[str, Any], metric: str, path: Path | str) -> bool:
    value = sample.get(metric)
    if value not in (0, 1) or isinstance(value, str):  # bools and 0.0 / 1.0 pass
        raise UserError(f"{path}: doc {sample.get('doc_id')} has no 0/1 per-sample {metric!r} (got {value!r}); "
                        "flips need a correctness metric such as acc or exact_match")
    return bool(value)


def count_flips(samples_a: dict[int, dict[str, Any]], samples_b: dict[int, dict[str, Any]],
                metric: str = DEFAULT_CORRECTNESS_METRIC, names: tuple[str, str] = ("A", "B")) -> dict[str, Any]:
    """Flip counts between run A and run B over the documents both scored (module docstring for the keys)."""
    counts = {"right_to_wrong": 0, "wrong_to_right": 0, "both_right": 0, "both_wrong": 0}
    for doc_id in shared_doc_ids(samples_a, samples_b):
        a, b = _correct(samples_a[doc_id], metric, names[0]), _correct(samples_b[doc_id], metric, names[1])
        key = ("both_right" if b else "right_to_wrong") if a else ("wrong_to_right" if b else "both_wrong")
        counts[key] += 1
    documents = sum(counts.values())
    return {**counts, "documents": documents, "metric": metric,
            "flip_rate": (counts["right_to_wrong"] + counts["wrong_to_right"]) / documents}


def flips_between_files(file_a: Path, file_b: Path, metric: str = DEFAULT_CORRECTNESS_METRIC,
                        filter_name: str | None = None) -> dict[str, Any]:
    """`count_flips` for two lm-eval samples files (A = reference run, e.g. dense; B = the pruned run)."""
    same_task(file_a, file_b)
    return count_flips(read_samples(Path(file_a), filter_name), read_samples(Path(file_b), filter_name), metric,
                       (str(file_a), str(file_b)))


__all__ = ["DEFAULT_CORRECTNESS_METRIC", "count_flips", "flips_between_files"]
