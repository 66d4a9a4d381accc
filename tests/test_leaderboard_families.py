"""Grids over the three model families: each cell evaluated by the lm-eval model that fits its family, what a
family cannot run skipped with the reason in the table, a plot per family; bad family/method/structure
combinations stop before any weight changes.

The fast test runs the shipped `families_global_magnitude` seed spec on tiny gpt2 / bert / bart with one
sparsity and small limits (plus a tiny generation task, which encoder-only models skip); the slow one runs the
whole seed spec (5 sparsities x 3 families).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sparse_bench.harness_ext.errors import UserError
from sparse_bench.leaderboards.cli import SPECS_DIR
from sparse_bench.leaderboards.families import EVALUATORS, evaluator_for
from sparse_bench.leaderboards.grid_results import load_grid
from sparse_bench.leaderboards.plots import make_plots
from sparse_bench.leaderboards.render import render, task_rows
from sparse_bench.leaderboards.runner import run_grid
from sparse_bench.leaderboards.spec_parser import parse_spec

FAMILIES = {"gpt2": "decoder-only", "bert": "encoder-only", "bart": "encoder-decoder"}
GEN_TASK = "tiny_gen"


def write_generation_task(folder: Path) -> Path:
    """A 4-document `generate_until` task (exact match of a one-word answer)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "tiny_gen.jsonl"
    data.write_text("".join(json.dumps({"query": f"Say {word}:", "answer": word}) + "\n"
                            for word in ("yes", "no", "river", "town")), encoding="utf-8")
    (folder / "tiny_gen.yaml").write_text(f"""task: {GEN_TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: generate_until
test_split: test
doc_to_text: "{{{{query}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 3
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""", encoding="utf-8")
    return folder


def seed_spec(models: dict[str, Path], tasks_dir: Path, **changes) -> dict:
    """The shipped family seed spec with the tiny models in place of tiny-models/KIND, and `changes`."""
    data = yaml.safe_load((SPECS_DIR / "families_global_magnitude.yaml").read_text(encoding="utf-8"))
    assert data["models"] == [f"tiny-models/{kind}" for kind in FAMILIES]
    data["models"] = [str(models[kind]) for kind in FAMILIES]
    data["include_path"] = str(tasks_dir)
    return {**data, **changes}


@pytest.fixture(scope="module")
def family_models(tiny_model_dirs) -> dict[str, Path]:
    return {kind: tiny_model_dirs[kind] for kind in FAMILIES}


def test_evaluator_per_family(family_models, tiny_model_dirs):
    from transformers import AutoConfig

    for kind, family in FAMILIES.items():
        assert evaluator_for(AutoConfig.from_pretrained(family_models[kind])).family == family
    assert evaluator_for(AutoConfig.from_pretrained(tiny_model_dirs["t5"])).model_args == {"backend": "seq2seq"}
    headless = AutoConfig.from_pretrained(family_models["bert"])
    headless.architectures = ["BertModel"]  # all-MiniLM-L6-v2's form: no masked-LM head
    evaluator = evaluator_for(headless)
    assert evaluator is EVALUATORS["encoder-without-head"] and "MRPC classifier" in evaluator.task_skip_reason("x")


def test_family_seed_study_on_tiny_models(family_models, tmp_path):
    """One sparsity of the seed study on each family: every cell ok, the family column, the skips stated."""
    tasks = write_generation_task(tmp_path / "tasks")
    spec = parse_spec(seed_spec(family_models, tasks, sparsities=[0.5],
                                tasks=[{"name": "sparsebench_mrpc", "limit": 4, "metrics": ["auc", "acc"]},
                                       {"name": GEN_TASK, "limit": 2}],
                                perplexity={"data": "wikitext2", "seqlen": 64, "max_tokens": 128},
                                latency={"batch": 1, "seqlen": 16, "new_tokens": 2, "repeats": 1}),
                      source="families.yaml")
    out = tmp_path / "out"
    summary = run_grid(spec, out, cache_root=tmp_path / "cache", progress=False)
    assert summary.failed == [] and summary.partial == [] and len(summary.ok) == 6, summary
    grid = load_grid(out)
    assert {r.model_family for r in grid.ok()} == set(FAMILIES.values())
    for result in grid.ok():
        assert result.sparsity["overall_sparsity"] == pytest.approx(0.0 if result.cell.is_dense else 0.5, abs=0.02)
        encoder, decoder = result.model_family == "encoder-only", result.model_family == "decoder-only"
        assert ("sparsebench_mrpc" in result.metrics) and (GEN_TASK in result.metrics) != encoder
        assert (GEN_TASK in result.skipped_tasks) == encoder
        assert ("pseudo_perplexity" in result.get("pseudo_perplexity")) == encoder
        assert ("perplexity" in result.get("perplexity")) == decoder
    plots = make_plots(grid)
    assert {f"family:{family}" for family in FAMILIES.values()} <= set(plots)
    text, _ = render(out, "md", plots)
    gen_rows = {row["model"]: row for row in task_rows(load_grid(out), GEN_TASK)[0]}
    assert gen_rows["bert"]["exact_match"] == "skipped: encoder-only models cannot generate text"
    assert gen_rows["bart"]["family"] == "encoder-decoder" and gen_rows["gpt2"]["ppl (token)"] != "-"
    assert gen_rows["bart"]["ppl (token)"] == "skipped: not a causal LM (encoder-decoder)"
    assert gen_rows["bart"]["tokens/s"] == "skipped: not a causal LM (encoder-decoder)"
    assert gen_rows["gpt2"]["pseudo-ppl"] == "skipped: not a masked LM (decoder-only)"
    assert float(gen_rows["bert"]["pseudo-ppl"]) > 1
    assert "![family:encoder-only](plots/family-encoder-only.png)" in text and "| family " in text


def test_impossible_structure_stops_before_any_weight_changes(tmp_path, family_models):
    """N:M on widths not divisible by M: one line naming the spec, the cell and the layer, before any cell runs."""
    spec = parse_spec(seed_spec(family_models, write_generation_task(tmp_path / "tasks"), methods=["magnitude"],
                                structures=["3:7"], sparsities=[], tasks=[GEN_TASK]), source="families.yaml")
    with pytest.raises(UserError, match=r"^families\.yaml: magnitude 3:7 cannot prune .*gpt2") as error:
        run_grid(spec, tmp_path / "out", cache_root=tmp_path / "cache", progress=False)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "cache").exists() and not list((tmp_path / "out" / "cells").glob("*.json"))


@pytest.mark.slow
def test_whole_family_seed_study(family_models, tmp_path):
    """The shipped seed study as it is (5 sparsities x 3 families), on tiny models."""
    spec = parse_spec(seed_spec(family_models, write_generation_task(tmp_path / "tasks")), source="families.yaml")
    summary = run_grid(spec, tmp_path / "out", cache_root=tmp_path / "cache", progress=False)
    assert summary.failed == [] and summary.partial == [] and len(summary.ok) == 18, summary
    plots = make_plots(load_grid(tmp_path / "out"))
    assert len([key for key in plots if key.startswith("family:")]) == 3


def test_encoder_without_masked_lm_head_is_measured_and_its_tasks_skipped(family_models, tmp_path):
    """all-MiniLM-L6-v2's form (a bare BertModel): no lm-eval model scores it yet, so every task is skipped with
    the reason; the cell is still pruned, and its size, latency and per-layer analysis measured."""
    from transformers import AutoModel, AutoTokenizer

    headless = tmp_path / "bert-headless"
    AutoModel.from_pretrained(family_models["bert"]).save_pretrained(headless)
    AutoTokenizer.from_pretrained(family_models["bert"]).save_pretrained(headless)
    spec = parse_spec({"name": "headless", "models": [str(headless)], "methods": ["magnitude"], "sparsities": [0.5],
                       "tasks": ["sparsebench_mrpc"], "perplexity": None,
                       "latency": {"batch": 1, "seqlen": 16, "new_tokens": 2, "repeats": 1},
                       "analysis": {"thresholds": [0.01]}})
    summary = run_grid(spec, tmp_path / "out", cache_root=tmp_path / "cache", progress=False)
    assert summary.failed == [] and summary.partial == [] and len(summary.ok) == 2, summary
    for result in load_grid(tmp_path / "out").ok():
        assert result.model_family == "encoder-only" and result.metrics == {}
        assert "MRPC classifier" in result.skipped_tasks["sparsebench_mrpc"]
        assert result.get("size")["compressed_bytes"] > 0 and result.get("latency")["forward_ms"] > 0
    row = task_rows(load_grid(tmp_path / "out"), "sparsebench_mrpc")[0][1]
    assert row["measured"] == "50.00 %" and row["result"].startswith("skipped: encoder-only without a masked-LM head")
    assert float(row["block zeros"]) == pytest.approx(0.5, abs=0.01) and row["layer zeros (min-max)"].endswith("%")
    assert len(list((tmp_path / "out" / "analysis").glob("*/summary.md"))) == 2  # per-layer report per cell
