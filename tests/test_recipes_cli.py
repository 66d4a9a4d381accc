"""`sparse-bench recipe validate | explain | new` on tiny models: exit codes, messages, numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from sparse_bench.harness_ext.cli import main
from sparse_bench.harness_ext.pruning.request import shortcut_plan
from sparse_bench.harness_ext.recipes import load_recipe

RECIPES = Path(__file__).parent / "data" / "recipes"
# tiny llama: 2 blocks x (q 64x64, k 32x64, v 32x64, o 64x64, gate/up 128x64, down 64x128) = 73,728 weights
TINY_LLAMA_BLOCK_WEIGHTS = 36_864


def run(*args: str):
    return CliRunner().invoke(main, ["recipe", *map(str, args)])


def test_validate_without_model_lists_steps_and_notes():
    result = run("validate", RECIPES / "sparseml_v1_gmp_card.md")
    assert result.exit_code == 0, result.output
    assert "OK" in result.stdout and "step 1: magnitude sparsity 0.8 unstructured" in result.stdout
    assert "gradual schedule 0.05->0.8 applied one-shot" in result.stdout


def test_validate_vision_recipe_without_model():
    result = run("validate", RECIPES / "vision_resnet50_global.yaml", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["valid"] and report["plan"]["steps"][0]["scope"] == "global"


def test_validate_error_is_one_line_exit_2():
    result = run("validate", RECIPES / "stage_recipe_args.yaml")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert result.stderr.startswith(f"error: {RECIPES / 'stage_recipe_args.yaml'}:6: ")
    assert "(CLI: --arg NAME=VALUE)" in result.stderr


def test_validate_with_recipe_args():
    result = run("validate", RECIPES / "stage_recipe_args.yaml", "--arg", "target_sparsity=0.6",
                 "--arg", "warm_up_epochs=1", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["plan"]["steps"][0]["sparsity"] == 0.6


def test_validate_with_model_resolves_layers(tiny_model_dirs):
    result = run("validate", RECIPES / "sparseml_v1_obert.yaml", "--model", tiny_model_dirs["bert"], "--json")
    assert result.exit_code == 0, result.output
    layers = json.loads(result.stdout)["layers"]
    assert len(layers) == 12 and "bert.encoder.layer.1.output.dense" in layers


def test_validate_regex_matching_no_layer_names_the_line(tiny_model_dirs):
    result = run("validate", RECIPES / "sparseml_v1_obert.yaml", "--model", tiny_model_dirs["llama"])
    assert result.exit_code == 2
    assert f"{RECIPES / 'sparseml_v1_obert.yaml'}:17: OBSPruningModifier targets: target " in result.stderr
    assert "matches no Linear/Conv1D layer of LlamaForCausalLM" in result.stderr


def test_explain_per_layer_and_overall_sparsity(tiny_llama):
    result = run("explain", RECIPES / "llmc_per_layer.yaml", "--model", tiny_llama, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    sparsities = {row["layer"]: row["sparsity"] for row in report["layers"]}
    assert sparsities["model.layers.0.mlp.down_proj"] == 0.4 and sparsities["model.layers.1.self_attn.q_proj"] == 0.6
    summary = report["summary"]
    assert summary["layers"] == 14 and summary["pruned_layer_params"] == 2 * TINY_LLAMA_BLOCK_WEIGHTS
    expected = sum(round(row["params"] * row["sparsity"]) for row in report["layers"])
    assert summary["expected_zeros"] == expected
    assert summary["sparsity_of_pruned_layers"] == pytest.approx(0.5, abs=1e-4)


def test_explain_text_table(tiny_model_dirs):
    result = run("explain", RECIPES / "llmc_sparsegpt_2of4_quant.yaml", "--model", tiny_model_dirs["gpt2"])
    assert result.exit_code == 0, result.output
    assert "transformer.h.1.mlp.c_proj" in result.stdout and "2:4" in result.stdout
    assert "= 50.00% of the pruned layers" in result.stdout


def test_explain_nm_width_not_divisible(tmp_path, tiny_llama):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("s_stage:\n  g_modifiers:\n    WandaPruningModifier:\n      mask_structure: '3:5'\n")
    result = run("explain", recipe, "--model", tiny_llama)
    assert result.exit_code == 2
    assert f"{recipe}:3: WandaPruningModifier in s_stage mask 3:5: layer model.layers.0.self_attn.q_proj " \
           "has 64 input features, not a multiple of M=5" in result.stderr


def test_explain_constant_only_says_nothing_is_pruned(tiny_llama):
    result = run("explain", RECIPES / "sparseml_stage_constant_only.yaml", "--model", tiny_llama)
    assert result.exit_code == 0, result.output
    assert "prunes nothing new" in result.stdout


@pytest.mark.parametrize("recipe_format", ["llmcompressor", "sparseml-stage", "sparseml"])
@pytest.mark.parametrize("method, sparsity, structure", [
    ("magnitude", "0.5", None), ("magnitude", None, "2:4"), ("wanda", None, "2:4"), ("sparsegpt", "0.6", None),
])
def test_new_recipe_parses_back_to_the_shortcut_plan(tmp_path, recipe_format, method, sparsity, structure):
    out = tmp_path / "starter.yaml"
    args = ["new", "--method", method, "--format", recipe_format, "--out", out]
    args += ["--sparsity", sparsity] if sparsity else []
    args += ["--structure", structure] if structure else []
    result = run(*args)
    if recipe_format == "sparseml" and method != "magnitude":
        assert result.exit_code == 2 and "have no" in result.stderr and not out.exists()
        return
    assert result.exit_code == 0, result.output
    expected = shortcut_plan(method, float(sparsity) if sparsity else None, structure)
    assert load_recipe(out).steps == expected.steps
    assert out.read_text().startswith("# Starter recipe: ")


def test_new_prints_to_stdout():
    result = run("new", "--method", "wanda", "--structure", "2:4")
    assert result.exit_code == 0
    assert "WandaPruningModifier:" in result.stdout and 'mask_structure: "2:4"' in result.stdout


def test_help_has_examples():
    for command in ("validate", "explain", "new"):
        result = run(command, "--help")
        assert result.exit_code == 0 and "Example:" in result.stdout
