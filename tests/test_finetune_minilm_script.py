"""benchmarks/finetune_minilm.py: its run syntax, and one pruning reused across precisions on a tiny BERT."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from sparse_bench.harness_ext.errors import UserError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import finetune_minilm  # noqa: E402 (after the sys.path line)
from minilm_runs import RunSpec, parse_run, parse_runs  # noqa: E402


@pytest.mark.parametrize("text, expected", [
    ("dense:fp32", RunSpec("dense:fp32", "dense")),
    ("magnitude-global:0.9:bf16-amp:120",
     RunSpec("magnitude-global:0.9:bf16-amp:120", "magnitude", "global", 0.9, None, "bf16-amp", 120)),
    ("wanda:0.5:fp32", RunSpec("wanda:0.5:fp32", "wanda", sparsity=0.5)),
    ("sparsegpt:2:4:fp32:7", RunSpec("sparsegpt:2:4:fp32:7", "sparsegpt", structure="2:4", max_steps=7)),
])
def test_run_specs_parse(text, expected):
    assert parse_run(text) == expected


def test_run_labels_and_prune_options():
    runs = parse_runs("dense:fp32,magnitude-global:0.99:fp32,sparsegpt:2:4:bf16-amp")
    assert [run.label for run in runs] == ["dense", "magnitude-global 99%", "sparsegpt 2:4"]
    assert [run.prune_options() for run in runs] == [
        {}, {"method": "magnitude", "scope": "global", "sparsity": 0.99}, {"method": "sparsegpt", "structure": "2:4"}]


def test_default_runs_cover_both_tables():
    runs = parse_runs(finetune_minilm.DEFAULT_RUNS)
    assert len({run.prune_key for run in runs}) == 8  # dense + 3 magnitude-global + wanda/sparsegpt x 50 %/2:4
    amp = [run for run in runs if run.precision == "bf16-amp"]
    assert len(amp) == 4 and all(run.max_steps == finetune_minilm.AMP_STEPS for run in amp)
    assert {(run.prune_key, run.max_steps) for run in amp} < {(run.prune_key, run.max_steps) for run in runs
                                                               if run.precision == "fp32"}


@pytest.mark.parametrize("text, message", [
    ("wanda:0.5", "not METHOD"),                     # no precision
    ("fp32", "not METHOD"),                          # no method
    ("wanda:0.5:fp32:1:2", "not METHOD"),            # two fields after the precision
    ("dense:0.5:fp32", "dense takes no target"),
    ("wanda:half:fp32", "neither a fraction nor N:M"),
    ("wanda:2:x:fp32", "M of N:M"),
    ("wanda:0.5:fp32:0", "MAX_STEPS must be a positive integer"),
    ("wanda-global:0.5:fp32", "scope=global"),       # the request layer's own check
    ("wanda:1.5:fp32", "sparsity"),
    ("pruneall:0.5:fp32", "pruneall"),
])
def test_bad_run_specs_name_the_run(text, message):
    with pytest.raises(UserError, match=message) as error:
        parse_run(text)
    assert repr(text) in str(error.value)


@pytest.mark.slow  # four fresh processes: ~20 s on a quiet 2-core machine, minutes on a busy one
def test_tiny_bert_pruned_once_fine_tuned_at_two_precisions(tiny_model_dirs, tmp_path, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("finetune.md", "families.md"):
        shutil.copy(REPO / "docs" / name, docs / name)
    prunes, real_prune = [], finetune_minilm.prune
    monkeypatch.setattr(finetune_minilm, "prune", lambda *args: prunes.append(args) or real_prune(*args))
    finetune_minilm.main([
        "--model", str(tiny_model_dirs["bert"]), "--runs", "dense:fp32:1,wanda:2:4:fp32:1,wanda:2:4:bf16-amp:1",
        "--machine", "test", "--limit", "8", "--eval-limit", "8", "--batch-size", "4", "--nsamples", "2",
        "--seqlen", "32", "--results", str(tmp_path), "--docs", str(docs)])
    results = json.loads((tmp_path / "finetune_minilm.json").read_text())
    assert len(prunes) == 1 and [r["precision"] for r in results] == ["fp32", "fp32", "bf16-amp"]
    assert results[0]["prune"] is None and results[1]["prune"] == results[2]["prune"]
    assert results[1]["prune"]["overall_sparsity"] == 0.5
    for result in results:
        zeros = result["finetune"]["zeros"]
        assert zeros["zeros_before"] == zeros["zeros_after"] and result["finetune"]["steps"] == 1
        assert zeros["sparsity_before"] == (0.0 if result["method"] == "dense" else 0.5)
    magnitude_table = (docs / "finetune.md").read_text().split("demo:finetune-minilm:start")[1].split("-->")[1]
    methods_table = (docs / "families.md").read_text().split("demo:minilm-methods:start")[1].split("-->")[1]
    assert "| 0.00%" in magnitude_table and "wanda" not in magnitude_table
    assert methods_table.count("| wanda 2:4") == 2 and methods_table.count("| dense") == 1
    assert "machine: test. bf16 autocast took" in methods_table and "bf16" not in magnitude_table
