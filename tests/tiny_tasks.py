"""A tiny lm-eval task on local data, for end-to-end runs that must not depend on any shipped task."""

from __future__ import annotations

import json
from pathlib import Path

TASK_NAME = "tiny_choice"


def write_tiny_choice_task(folder: Path, n_docs: int = 12) -> Path:
    """Write a `tiny_choice` multiple-choice task (+ its JSONL data) into `folder`; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    subjects = ["The river", "A small cat", "The old house", "Our new car", "The quiet town", "A red bird"]
    endings = ["flows to the sea.", "sleeps on the warm bed.", "stands on the hill.", "runs very fast.",
               "lies near the coast.", "sings in the morning."]
    docs = [{"query": subjects[i % 6], "choices": [endings[i % 6], endings[(i + 1) % 6], endings[(i + 3) % 6]],
             "gold": 0} for i in range(n_docs)]
    data_file = folder / "tiny_choice.jsonl"
    data_file.write_text("".join(json.dumps(doc) + "\n" for doc in docs), encoding="utf-8")
    (folder / f"{TASK_NAME}.yaml").write_text(f"""task: {TASK_NAME}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data_file}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{query}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""", encoding="utf-8")
    return folder
