"""Recipe files of every format parse to the expected pruning plan (no model needed)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from sparse_bench.harness_ext.pruning.plan import BlockStructure, NMStructure, OwlConfig, PruneStep
from sparse_bench.harness_ext.pruning.request import shortcut_plan
from sparse_bench.harness_ext.recipes import load_recipe, read_recipe

RECIPES = Path(__file__).parent / "data" / "recipes"
WANDA = "s_stage:\n  g_modifiers:\n    WandaPruningModifier:\n"

EXPECTED_STEPS = {
    "llmc_sparsegpt_2of4_quant.yaml": (
        PruneStep("sparsegpt", 0.5, NMStructure(2, 4), ignore=("lm_head", "re:.*lm_head"),
                  options={"block_size": 64, "dampening": 0.001}),),
    "llmc_wanda_2of4.yaml": (PruneStep("wanda", 0.5, NMStructure(2, 4)),),
    "llmc_wanda_owl.yaml": (
        PruneStep("wanda", 0.7, targets=(r"re:model.layers.\d+",), ignore=("lm_head", "re:.*lm_head"),
                  owl=OwlConfig(5, 0.08)),),
    "llmc_per_layer.yaml": (
        PruneStep("sparsegpt", 0.6, targets=("model.layers.0", "model.layers.1"),
                  layer_sparsity=((r"re:(?:model\.layers\.0)(?:\..+)?", 0.4),
                                  (r"re:(?:model\.layers\.1)(?:\..+)?", 0.6))),),
    "llmc_magnitude.yaml": (PruneStep("magnitude", 0.6),),
    "sparseml_stage_alternating.yaml": (
        PruneStep("sparsegpt", 0.7, targets=(r"re:model.layers.\d+",), options={"dampening": 0.02}),),
    "sparseml_stage_obcq_quant.yaml": (PruneStep("sparsegpt", 0.5, targets=("model.layers.0", "model.layers.1")),),
    "sparseml_stage_constant_only.yaml": (),
    "sparseml_v1_gmp_card.md": (PruneStep("magnitude", 0.8),),
    "sparseml_v1_2of4.yaml": (
        PruneStep("magnitude", 0.5, NMStructure(2, 4),
                  targets=("re:model.layers.*.mlp.*_proj", "re:model.layers.*.self_attn.[qkvo]_proj")),),
    "sparseml_v1_block4_list.yaml": (
        PruneStep("magnitude", 0.8, BlockStructure(1, 4),
                  targets=("re:model.layers.*.mlp.(gate|up|down)_proj", "re:model.layers.*.self_attn.[qkvo]_proj")),),
    "sparseml_v1_block4_name.yaml": (PruneStep("magnitude", 0.5, BlockStructure(1, 4)),),
    "sparseml_v1_obert.yaml": (
        PruneStep("sparsegpt", 0.8, targets=tuple(f"re:bert.encoder.layer.*.{name}" for name in (
            "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
            "intermediate.dense", "output.dense"))),),
    "sparseml_v1_layer_groups.yaml": (
        PruneStep("magnitude", 0.8,
                  targets=("re:model.layers.*.self_attn.[qkvo]_proj", "re:model.layers.*.mlp.(gate|up|down)_proj"),
                  layer_sparsity=(("re:(?:model.layers.*.self_attn.[qkvo]_proj)(?:\\..+)?", 0.6),
                                  ("re:(?:model.layers.*.mlp.(gate|up|down)_proj)(?:\\..+)?", 0.8))),),
    "vision_resnet50_global.yaml": (
        PruneStep("magnitude", 0.9, scope="global",
                  targets=("conv1", "re:layer1.*.conv1", "re:layer1.*.conv2", "re:layer4.0.downsample.0")),),
}


def test_every_recipe_file_has_an_expectation():
    files = {path.name for path in RECIPES.iterdir()} - {"stage_recipe_args.yaml"}
    assert files == set(EXPECTED_STEPS)


@pytest.mark.parametrize("name", sorted(EXPECTED_STEPS))
def test_recipe_parses_to_expected_plan(name):
    path = RECIPES / name
    plan = load_recipe(path)
    assert plan.steps == EXPECTED_STEPS[name]
    assert plan.source == str(path)
    assert plan.recipe_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert plan.notes and plan.notes[0].startswith("recipe format: ")


def test_recipe_and_shortcut_build_equal_plans():
    assert load_recipe(RECIPES / "llmc_wanda_2of4.yaml").steps == shortcut_plan("wanda", None, "2:4").steps


def test_formats_are_recognised():
    assert read_recipe(RECIPES / "sparseml_v1_gmp_card.md").format == "sparseml-v1"
    assert read_recipe(RECIPES / "llmc_wanda_2of4.yaml").format == "stage"


def _plan_of(tmp_path: Path, text: str, name: str = "r.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return load_recipe(path)


def _notes(name: str) -> str:
    return "\n".join(load_recipe(RECIPES / name).notes)


def test_gradual_schedule_is_reported_as_one_shot():
    assert "gradual schedule 0.05->0.8 applied one-shot at final sparsity 0.8" in _notes("sparseml_v1_gmp_card.md")


def test_ignored_modifiers_and_fields_are_listed():
    notes = _notes("sparseml_v1_gmp_card.md")
    for name in ("EpochRangeModifier", "LearningRateModifier", "SetLearningRateModifier"):
        assert f"ignored: {name}" in notes
    assert "ignored for one-shot pruning: start_epoch, end_epoch, update_frequency, inter_func, leave_enabled" in notes
    quant = _notes("sparseml_stage_obcq_quant.yaml")
    assert "ignored: GPTQModifier" in quant and "evaluated unquantized" in quant
    assert "ignored: DistillationModifier" in _notes("sparseml_v1_obert.yaml")


def test_obs_maps_to_sparsegpt_and_says_global_ranking_is_dropped():
    notes = _notes("sparseml_v1_obert.yaml")
    assert "OBSPruningModifier (line 15) -> sparsegpt" in notes
    assert "global ranking across layers is not available for sparsegpt" in notes


def test_constant_pruning_only_prunes_nothing_and_says_so():
    recipe = read_recipe(RECIPES / "sparseml_stage_constant_only.yaml")
    assert recipe.plan.steps == () and recipe.prunes_nothing_new
    assert any("nothing is pruned" in note for note in recipe.plan.notes)


def test_later_stage_supersedes_earlier_one_on_same_layers():
    notes = _notes("sparseml_stage_alternating.yaml")
    assert "is superseded by SparseGPTModifier in next_sparsity_stage (line 25)" in notes


def test_recipe_args_define_and_override_variables():
    path = RECIPES / "stage_recipe_args.yaml"
    plan = load_recipe(path, {"target_sparsity": 0.6, "warm_up_epochs": 2})
    assert plan.steps == (PruneStep("magnitude", 0.6, targets=("re:model.layers.0.mlp.up_proj",
                                                                "model.layers.1.mlp.up_proj")),)
    card = load_recipe(RECIPES / "sparseml_v1_gmp_card.md", {"final_sparsity": 0.7})
    assert card.steps[0].sparsity == 0.7


def test_line_numbers_survive_front_matter_padding():
    recipe = read_recipe(RECIPES / "sparseml_v1_gmp_card.md")
    assert recipe.sources[0].line == 42  # the !GMPruningModifier line of the file, after the HTML comment


def test_unquoted_nm_is_read_as_text_not_base60():
    assert load_recipe(RECIPES / "sparseml_v1_2of4.yaml").steps[0].structure == NMStructure(2, 4)
    assert load_recipe(RECIPES / "llmc_sparsegpt_2of4_quant.yaml").steps[0].structure == NMStructure(2, 4)


@pytest.mark.parametrize("text, structure", [
    ('mask_structure: "4:8"', NMStructure(4, 8)), ("mask_structure: 4:8", NMStructure(4, 8)),
    ("mask_structure: '0:0'", None), ("mask_structure: 0:0", None), ("mask_structure: unstructured", None),
    ("mask_structure: tensorrt", NMStructure(2, 4)), ("mask_structure: [1, 4]", BlockStructure(1, 4)),
    ("mask_structure: [2, 2]", BlockStructure(2, 2)), ("mask_structure: [1, 1]", None),
    ("mask_structure: block", BlockStructure(1, 4)), ("mask_structure: 'block:4x1'", BlockStructure(4, 1)),
])
def test_mask_structure_spellings(tmp_path, text, structure):
    sparsity = structure.sparsity if isinstance(structure, NMStructure) else 0.5
    plan = _plan_of(tmp_path, f"{WANDA}      sparsity: {sparsity}\n      {text}\n")
    assert plan.steps[0].structure == structure


def test_scientific_notation_without_dot_is_a_number(tmp_path):
    assert _plan_of(tmp_path, "s_stage:\n  g_modifiers:\n    SparseGPTModifier:\n      sparsity: 0.5\n"
                    "      dampening_frac: 1e-3\n").steps[0].method_options.dampening == 0.001


def test_eval_arithmetic_and_functions(tmp_path):
    step = _plan_of(tmp_path, "base: 0.25\nscale: eval(base * 2)\nmodifiers:\n  - !GMPruningModifier\n"
                    "    params: __ALL_PRUNABLE__\n    final_sparsity: eval(min(scale + 0.1, 0.9) - 0.1)\n"
                    "    mask_type: eval(kind)\nkind: unstructured\n").steps[0]
    assert step.sparsity == pytest.approx(0.5) and step.structure is None


def test_stage_variables_override_globals(tmp_path):
    assert _plan_of(tmp_path, "sp: 0.3\na_stage:\n  sp: 0.6\n  g_modifiers:\n    WandaPruningModifier:\n"
                    "      sparsity: eval(sp)\n").steps[0].sparsity == 0.6


def test_json_recipe(tmp_path):
    plan = _plan_of(tmp_path, '{"oneshot_stage": {"sparsity_modifiers": {"SparseGPTModifier": '
                    '{"sparsity": 0.5, "mask_structure": "2:4", "targets": ["Linear"]}}}}', "r.json")
    assert plan.steps == (PruneStep("sparsegpt", 0.5, NMStructure(2, 4)),)


def test_list_of_single_key_mappings_and_flat_groups(tmp_path):
    assert _plan_of(tmp_path, "sparsity_modifiers:\n  - WandaPruningModifier:\n      sparsity: 0.4\n"
                    "  - GPTQModifier: {}\n").steps == (PruneStep("wanda", 0.4),)


def test_disjoint_steps_both_run(tmp_path):
    steps = _plan_of(tmp_path, "a_stage:\n  g_modifiers:\n    WandaPruningModifier:\n      sparsity: 0.5\n"
                    "      targets: ['re:.*mlp.*']\nb_stage:\n  g_modifiers:\n    SparseGPTModifier:\n"
                    "      sparsity: 0.6\n      targets: ['re:.*self_attn.*']\n").steps
    assert [step.method for step in steps] == ["wanda", "sparsegpt"]
    assert steps[0].ignore == ("lm_head", "re:.*self_attn.*")


def test_per_layer_list_with_equal_values_is_one_sparsity(tmp_path):
    assert _plan_of(tmp_path, "s_stage:\n  g_modifiers:\n    SparseGPTModifier:\n      sparsity: [0.5, 0.5]\n"
                    "      targets: ['re:model.layers.\\d+$']\n").steps[0].layer_sparsity == ()


def test_docs_table_lists_every_modifier_and_field():
    from sparse_bench.harness_ext.recipes.fields import MODIFIERS

    docs = (Path(__file__).parents[1] / "docs" / "recipes.md").read_text(encoding="utf-8")
    for spec in MODIFIERS.values():
        assert f"`{spec.name}`" in docs, spec.name
        for field in spec.known_fields:
            assert f"`{field}`" in docs, (spec.name, field)


@pytest.mark.parametrize("params, targets", [
    ("__ALL_PRUNABLE__", ()), ("[__ALL__]", ()), ("[Linear]", ()), ("[LlamaDecoderLayer]", ()),
    ("['re:.*weight']", ()), ("['model.layers.0.mlp.up_proj.weight']", ("model.layers.0.mlp.up_proj",)),
    (r"['re:model\.layers\.0\..*_proj\.weight']", (r"re:model\.layers\.0\..*_proj",)),
    ("['re:model.layers.1.*weight']", ("re:model.layers.1.*",)), ("['re:model.layers.0$']", ("re:model.layers.0",)),
    ("model.layers.1", ("model.layers.1",)),
])
def test_target_spellings(tmp_path, params, targets):
    text = f"modifiers:\n  - !GMPruningModifier\n    final_sparsity: 0.5\n    params: {params}\n"
    assert _plan_of(tmp_path, text).steps[0].targets == targets
