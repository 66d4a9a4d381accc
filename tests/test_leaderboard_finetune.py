"""The grid's `finetune:` block on a tiny llama: every cell is fine-tuned with its zeros kept, the grid's tasks are
evaluated again, and the tables gain "after FT" and recovery columns; bad blocks are refused before any load."""

from __future__ import annotations

import json

import pytest
import yaml
from tiny_tasks import TASK_NAME, write_tiny_choice_task

from sparse_bench.harness_ext.errors import UserError
from sparse_bench.leaderboards.render import load_grid, render, summary_rows, task_rows
from sparse_bench.leaderboards.runner import run_grid
from sparse_bench.leaderboards.spec_parser import load_spec, parse_spec
from sparse_bench.leaderboards.store import finetuned_dir, result_path

FINETUNE = {"data": "mrpc", "mode": "lora", "max_steps": 2, "lr": 1e-2, "batch_size": 4, "limit": 8,
            "eval_limit": 8, "max_length": 96, "lora_r": 2, "lora_alpha": 4}


def spec_dict(tiny_llama, tasks_dir, **changes) -> dict:
    return {"name": "tiny-ft", "models": [str(tiny_llama)], "methods": ["magnitude"], "sparsities": [0.5],
            "include_path": str(tasks_dir), "tasks": [{"name": TASK_NAME, "limit": 8}], "perplexity": None,
            "latency": None, "batch_size": 4, "bootstrap_iters": 0, "finetune": FINETUNE, **changes}


@pytest.fixture(scope="module")
def finetuned_grid(tmp_path_factory, tiny_llama):
    root = tmp_path_factory.mktemp("ft_grid")
    spec_file = root / "grid.yaml"
    spec_file.write_text(yaml.safe_dump(spec_dict(tiny_llama, write_tiny_choice_task(root / "tasks"))))
    summary = run_grid(load_spec(spec_file), root / "out", cache_root=root / "cache", progress=False)
    assert summary.failed == [] and summary.partial == [] and len(summary.ok) == 2, summary
    return root / "out"


def test_every_cell_is_fine_tuned_with_its_zeros_kept_and_evaluated_again(finetuned_grid):
    grid = load_grid(finetuned_grid)
    for result in grid.ok():
        record = json.loads(result_path(finetuned_grid, result.cell_id).read_text(encoding="utf-8"))
        finetune = record["finetune"]
        assert finetune["mode"] == "lora" and finetune["steps"] == 2 and record["phases"]["finetune"]["status"] == "ok"
        assert finetune["zeros"]["zeros_after"] == finetune["zeros"]["zeros_before"]
        assert finetune["zeros"]["sparsity_before"] == pytest.approx(0.0 if result.cell.is_dense else 0.5, abs=0.01)
        assert 0.0 <= record["finetuned_metrics"][TASK_NAME]["acc"] <= 1.0
        assert (finetuned_dir(finetuned_grid, result.cell_id) / "config.json").is_file()


def test_tables_show_after_fine_tune_and_recovery_beside_zero_shot(finetuned_grid):
    grid = load_grid(finetuned_grid)
    rows, primary = task_rows(grid, TASK_NAME)
    dense, pruned = sorted(grid.ok(), key=lambda r: not r.cell.is_dense)
    by_method = {row["method"]: row for row in rows}
    for result in (dense, pruned):
        after = result.get("finetuned_metrics")[TASK_NAME]["acc"]
        assert by_method[result.cell.method]["acc after FT"].split(" ± ")[0] == f"{after:.4g}"
        assert by_method[result.cell.method]["FT zeros kept"] == "yes"
    assert by_method["dense"]["FT recovery"] == "-" and primary == "acc"
    # recovery = (after - before) / (dense after - before): zero-shot 0.40, after 0.55, dense after 0.60 -> 75 %
    pruned.metrics[TASK_NAME]["acc"] = 0.40
    pruned.get("finetuned_metrics")[TASK_NAME]["acc"] = 0.55
    dense.get("finetuned_metrics")[TASK_NAME]["acc"] = 0.60
    assert {row["method"]: row["FT recovery"] for row in task_rows(grid, TASK_NAME)[0]} == \
        {"dense": "-", "magnitude": "75 %"}
    assert all(row["FT held-out"].startswith("AUC ") for row in summary_rows(grid))
    text, _ = render(finetuned_grid, "md")
    assert "acc after FT" in text and "FT recovery" in text and "FT zeros kept" in text


def test_grids_without_the_block_show_no_fine_tuning_columns(tiny_llama, tmp_path):
    spec = parse_spec(spec_dict(tiny_llama, tmp_path, finetune=None))
    assert spec.finetune is None and spec.to_dict()["finetune"] is None


@pytest.mark.parametrize("block, message", [
    ({"mode": "adapter"}, "finetune: unknown fine-tuning mode 'adapter'"),
    ({"precision": "fp16-amp"}, "finetune: fp16-amp needs a CUDA GPU"),
    ({"max_steps": 0}, "finetune.max_steps: must be"),
    ({"lr": "fast"}, "finetune.lr: must be a finite number"),
    ({"epochs": float("inf")}, "finetune.epochs: must be a finite number"),
    ({"steps": 3}, "finetune.steps: unknown key; known keys: data, mode"),
])
def test_bad_finetune_block_is_refused_naming_the_key(tiny_llama, tmp_path, block, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        parse_spec(spec_dict(tiny_llama, tmp_path, finetune=block), source="grid.yaml")
