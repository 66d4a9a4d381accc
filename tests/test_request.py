"""The request layer: one table of pruning options, the same plan from every way in (model_args text, CLI flags,
a grid spec, a recipe), every option accepted by each way in, and an option that would be ignored is an error."""

from __future__ import annotations

import pytest
from lm_eval.utils import simple_parse_args_string

from sparse_bench.harness_ext.errors import UserError
from sparse_bench.harness_ext.pruning.cli import prune_command, request_from_flags
from sparse_bench.harness_ext.pruning.methods import get_method, option_fields
from sparse_bench.harness_ext.pruning.options import BY_NAME, LIST_SEPARATOR, OPTIONS, option_names
from sparse_bench.harness_ext.pruning.plan import OwlConfig
from sparse_bench.harness_ext.pruning.request import PruneRequest, parse_request, prune_on_load
from sparse_bench.harness_ext.recipes.fields import modifier_spec
from sparse_bench.leaderboards.cells import expand_cells
from sparse_bench.leaderboards.spec_parser import parse_spec
from sparse_bench.model_wrappers.prune_on_load import PruneOnLoad

WANDA_OWL = {"method": "wanda", "sparsity": 0.5, "targets": ("re:.*mlp.*", "re:.*self_attn.*"),
             "ignore": ("re:.*down_proj",), "owl": True, "owl_m": 4.0, "owl_lambda": 0.1}
WANDA_OWL_RECIPE = """oneshot_stage:
  pruning_modifiers:
    WandaPruningModifier:
      sparsity: 0.5
      targets: ["re:.*mlp.*", "re:.*self_attn.*"]
      ignore: ["re:.*down_proj"]
      sparsity_profile: owl
      owl_m: 4.0
      owl_lmbda: 0.1
"""
SPARSEGPT_24 = {"method": "sparsegpt", "structure": "2:4", "block_size": 64, "dampening": 0.05}
SPARSEGPT_24_RECIPE = """oneshot_stage:
  pruning_modifiers:
    SparseGPTModifier:
      sparsity: 0.5
      mask_structure: "2:4"
      block_size: 64
      dampening_frac: 0.05
"""


def model_args_text(options: dict) -> str:
    """The options as a `--model_args` string (lists joined by ';', flags as true/false)."""
    def text(value):
        if isinstance(value, (list, tuple)):
            return LIST_SEPARATOR.join(value)
        return str(value).lower() if isinstance(value, bool) else str(value)
    return ",".join(f"{name}={text(value)}" for name, value in options.items())


def cli_flags(options: dict) -> list[str]:
    flags = []
    for name, value in options.items():
        row = BY_NAME[name]
        if row.kind == "flag":
            flags.append(row.flag if value else f"--no-{row.flag[2:]}")
        else:
            for item in value if row.kind == "patterns" else (value,):
                flags += [row.flag, str(item)]
    return flags


def from_model_args(text: str) -> PruneRequest:
    """What sparse-hf / sparse-encoder do with a model_args string (lm-eval's own parser, which casts)."""
    model_args = {"pretrained": "any", **simple_parse_args_string(text)}
    request = PruneOnLoad.from_model_args(model_args).request
    assert model_args == {"pretrained": "any"}  # every pruning option was taken
    return request


def from_cli(flags: list[str]) -> PruneRequest:
    context = prune_command.make_context("prune", ["model", "--out", "unused", *flags])
    return request_from_flags({name: value for name, value in context.params.items() if name in option_names()})


def from_grid_spec(options: dict, base_dir=None) -> PruneRequest:
    """The one pruned cell of a grid whose methods entry holds `options` (sparsity / structure: the grid's
    axes; calibration options: its `calibration` mapping, where `data` is the table's `calibration`)."""
    entry = {name: list(value) if isinstance(value, tuple) else value for name, value in options.items()
             if BY_NAME[name].group in ("plan", "recipe") and name not in ("sparsity", "structure")}
    calibration = {("data" if name == "calibration" else name): value for name, value in options.items()
                   if BY_NAME[name].group == "calibration"}
    axes = {"structures": [options["structure"]]} if "structure" in options else \
        {"sparsities": [options.get("sparsity", 0.5)]}
    spec = parse_spec({"models": ["m"], "tasks": ["t"], "methods": [entry], "calibration": calibration, **axes},
                      source="grid.yaml", base_dir=base_dir)
    pruned = [cell for cell in expand_cells(spec) if not cell.is_dense]
    assert len(pruned) == 1
    return PruneRequest(pruned[0].plan(), spec.calibration)


def from_recipe(tmp_path, text: str) -> PruneRequest:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return parse_request({"recipe": str(path)}, source="recipe")


@pytest.mark.parametrize("options, recipe", [(WANDA_OWL, WANDA_OWL_RECIPE), (SPARSEGPT_24, SPARSEGPT_24_RECIPE)])
def test_every_way_in_builds_the_same_plan(tmp_path, options, recipe):
    steps = {
        "model_args": from_model_args(model_args_text(options)).plan.steps,
        "cli": from_cli(cli_flags(options)).plan.steps,
        "grid spec": from_grid_spec(options).plan.steps,
        "recipe": from_recipe(tmp_path, recipe).plan.steps,
        "python": parse_request(options, source="python").plan.steps,
    }
    assert len(steps["python"]) == 1
    assert all(found == steps["python"] for found in steps.values()), steps
    step = steps["python"][0]
    assert "lm_head" in step.ignore  # ignore extends the default in every way in
    if "owl" in options:
        assert step.owl == OwlConfig(m=4.0, lmbda=0.1) and step.ignore == ("lm_head", "re:.*down_proj")


def _companions(name: str) -> dict:
    """The other options `name` needs to mean something (a method for plan options, owl=true for its settings)."""
    if BY_NAME[name].group != "plan" or name == "method":  # the CLI needs something to prune
        return {"sparsity": 0.5} if name == "method" else {"method": "magnitude", "sparsity": 0.5}
    if name in option_fields():
        owner = option_fields()[name][1].split(" or ")[0]
        kind, _, owner_name = owner.partition("=")
        base = {"method": owner_name} if kind == "method" else {"method": "wanda", "update": owner_name}
        return {**base, "sparsity": 0.5}
    if name == "update":
        return {"method": "wanda", "sparsity": 0.5}
    if name in ("owl_m", "owl_lambda"):
        return {"method": "wanda", "sparsity": 0.5, "owl": True}
    return {"method": "magnitude"} | ({} if name == "structure" else {"sparsity": 0.5})


@pytest.mark.parametrize("name", [row.name for row in OPTIONS if row.name != "recipe"])
def test_every_option_is_accepted_by_model_args_cli_and_grid_spec_with_one_meaning(name):
    options = {**_companions(name), name: BY_NAME[name].example}
    expected = parse_request(options, source="python")
    for request in (from_model_args(model_args_text(options)), from_cli(cli_flags(options)),
                    from_grid_spec(options)):
        assert request.calibration == expected.calibration
        assert request.plan.steps == expected.plan.steps


@pytest.mark.parametrize("row", [row for row in OPTIONS if row.recipe_fields], ids=lambda row: row.name)
def test_options_with_recipe_fields_are_read_by_a_modifier_of_a_method_that_takes_them(row):
    methods = [owner.partition("=")[2] for owner in option_fields()[row.name][1].split(" or ")] \
        if row.name in option_fields() else ["magnitude", "wanda", "sparsegpt"]
    fields = {field for method in methods for modifier in get_method(method).recipe_modifiers
              for field in modifier_spec(modifier).used}
    assert set(row.recipe_fields) <= fields


def test_recipe_with_calibration_options_is_accepted(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(SPARSEGPT_24_RECIPE)
    text = f"recipe={path},calibration=wikitext2,nsamples=16,seqlen=64,seed=3,true_sequential=true"
    request = from_model_args(text)
    assert request.plan.steps == parse_request(SPARSEGPT_24, source="python").plan.steps
    assert (request.calibration.data, request.calibration.nsamples, request.calibration.true_sequential) == \
        ("wikitext2", 16, True)


@pytest.mark.parametrize("options, message", [
    ({"recipe": "r.yaml", "targets": ("re:.*mlp.*",)}, "a recipe already defines the pruning, so targets would be "
                                                       "ignored"),
    ({"recipe": "r.yaml", "owl": True}, "owl would be ignored"),
    ({"recipe": "r.yaml", "block_size": 64}, "block_size would be ignored"),
    ({"ignore": ("re:.*mlp.*",)}, "ignore given without method"),
    ({"method": "wanda", "sparsity": 0.5, "owl_m": 3.0}, "owl_m given without owl=true would be ignored"),
    ({"method": "wanda", "sparsity": 0.5, "block_size": 64}, "option block_size applies to method=sparsegpt"),
])
def test_an_option_that_would_be_ignored_is_an_error(tmp_path, options, message):
    (tmp_path / "r.yaml").write_text(SPARSEGPT_24_RECIPE)
    options = {name: str(tmp_path / "r.yaml") if value == "r.yaml" else value for name, value in options.items()}
    with pytest.raises(UserError, match=message):
        from_cli(cli_flags(options))
    with pytest.raises(UserError, match=message):
        from_model_args(model_args_text(options))
    if "sparsity" in options or "recipe" in options:  # a grid always has a method or recipe entry
        with pytest.raises(UserError, match=message):
            from_grid_spec(options, base_dir=tmp_path)


def test_model_args_lists_and_unknown_options():
    request = from_model_args("method=magnitude,sparsity=0.5,ignore=re:.*q_proj;re:.*k_proj")
    assert request.plan.steps[0].ignore == ("lm_head", "re:.*q_proj", "re:.*k_proj")
    with pytest.raises(UserError, match="ignore is empty"):
        from_model_args("method=magnitude,sparsity=0.5,ignore=;")


def test_prune_on_load_prunes_or_measures(tiny_model_dirs):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"])
    assert prune_on_load(model, None, {}).overall_sparsity < 0.01
    report = prune_on_load(model, None, {"method": "magnitude", "sparsity": 0.5, "ignore": "re:.*down_proj"})
    assert abs(report.overall_sparsity - 0.5) < 1e-3
    assert not any(name.endswith("down_proj") for name in report.layers)


def test_docs_show_the_options_table():
    from pathlib import Path

    from sparse_bench.harness_ext.pruning.options import markdown_table

    docs = (Path(__file__).parents[1] / "docs" / "pruning.md").read_text(encoding="utf-8")
    assert f"<!-- options table start -->\n{markdown_table()}\n<!-- options table end -->" in docs
