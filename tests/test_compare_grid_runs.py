"""benchmarks/compare_grid_runs.py: every leaderboard value compared except this machine's speed."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from compare_grid_runs import MACHINE_COLUMNS, compare  # noqa: E402 (after the sys.path line)

KEY = ("sparsebench_mrpc", "smollm2-135m", "wanda", "2:4", "0.5", "50.00 %", "float32")


def test_only_speed_columns_may_differ():
    assert {"ms/forward", "tokens/s", "peak MiB", "prune s"} <= MACHINE_COLUMNS
    assert "ppl (token)" not in MACHINE_COLUMNS and "KL vs dense" not in MACHINE_COLUMNS
    first = {KEY: {"auc": "0.61", "ppl (token)": "259.3", "ms/forward": "440.1", "prune s": "16.6"}}
    second = {KEY: {"auc": "0.61", "ppl (token)": "259.3", "ms/forward": "511.9", "prune s": "20.2"}}
    assert compare(first, second) == ([], 2)


def test_a_changed_value_and_a_missing_cell_are_reported():
    first = {KEY: {"auc": "0.61", "ppl (token)": "259.3"}, ("sparsebench_mrpc", "dense"): {"auc": "0.27"}}
    second = {KEY: {"auc": "0.61", "ppl (token)": "259.4"}}
    differences, compared = compare(first, second)
    assert compared == 2
    assert [KEY[0], "smollm2-135m wanda 2:4 0.5 50.00 % float32", "ppl (token)", "259.3", "259.4"] in differences
    assert ["sparsebench_mrpc", "dense", "(the whole row)", "present", "missing"] in differences
