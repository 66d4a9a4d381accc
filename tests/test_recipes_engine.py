"""Recipes through the pruning engine and through lm-eval: same masks as the shortcut, measured sparsity."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sparse_bench.harness_ext.models import load_model
from sparse_bench.harness_ext.pruning.engine import prune
from sparse_bench.harness_ext.pruning.plan import CalibrationConfig
from sparse_bench.harness_ext.pruning.request import shortcut_plan
from sparse_bench.harness_ext.recipes import load_recipe, read_recipe
from sparse_bench.harness_ext.recipes.check import layer_plan

RECIPES = Path(__file__).parent / "data" / "recipes"
CALIBRATION = CalibrationConfig(data="wikitext2", nsamples=4, seqlen=64)


def _zero_masks(model_dir: Path, plan) -> tuple[dict[str, torch.Tensor], object]:
    model, tokenizer = load_model(str(model_dir))
    report = prune(model, plan, CALIBRATION, tokenizer=tokenizer, progress=False)
    return {name: parameter == 0 for name, parameter in model.named_parameters()}, report


def test_recipe_and_shortcut_give_identical_masks(tiny_llama, data_dir):
    recipe_masks, recipe_report = _zero_masks(tiny_llama, load_recipe(RECIPES / "llmc_wanda_2of4.yaml"))
    shortcut_masks, _ = _zero_masks(tiny_llama, shortcut_plan("wanda", None, "2:4"))
    assert recipe_masks.keys() == shortcut_masks.keys()
    assert all(torch.equal(recipe_masks[name], shortcut_masks[name]) for name in recipe_masks)
    assert recipe_report.overall_sparsity == pytest.approx(0.5, abs=1e-9)


def test_explain_predicts_what_the_engine_measures(tiny_llama, data_dir):
    recipe = read_recipe(RECIPES / "sparseml_v1_layer_groups.yaml")
    model, _ = load_model(str(tiny_llama))
    predicted = {row.layer: row.sparsity for row in layer_plan(recipe, model)}
    report = prune(model, recipe.plan, progress=False)
    measured = report.to_dict()["layers"]
    assert set(measured) == set(predicted)
    for name, sparsity in predicted.items():
        assert measured[name]["sparsity"] == pytest.approx(sparsity, abs=1 / 64)
    assert predicted["model.layers.1.self_attn.k_proj"] == 0.6 and predicted["model.layers.0.mlp.up_proj"] == 0.8


def test_recipe_end_to_end_through_lm_eval(tiny_llama, tmp_path, data_dir):
    from sparse_bench.model_wrappers.registration import register_with_lm_eval

    register_with_lm_eval()
    import lm_eval
    from lm_eval.tasks import TaskManager
    from tiny_tasks import TASK_NAME, write_tiny_choice_task

    manager = TaskManager(include_path=str(write_tiny_choice_task(tmp_path / "tasks")))
    recipe = RECIPES / "sparseml_v1_2of4.yaml"
    results = lm_eval.simple_evaluate(model="sparse-hf", model_args=f"pretrained={tiny_llama},recipe={recipe}",
                                      tasks=[TASK_NAME], limit=4, device="cpu", task_manager=manager,
                                      bootstrap_iters=0)
    sparsity = results["config"]["sparsity"]
    assert sparsity["overall_sparsity"] == pytest.approx(0.5, abs=1e-9)
    assert len(sparsity["layers"]) == 14
    assert sparsity["plan"]["source"] == str(recipe)
    assert sparsity["plan"]["steps"][0]["structure"] == "2:4"
    assert any("applied one-shot" in note or "ignored" in note for note in sparsity["plan"]["notes"])
    assert 0.0 <= results["results"][TASK_NAME]["acc,none"] <= 1.0
