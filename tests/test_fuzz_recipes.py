"""Fuzzing the recipe loader through `sparse-bench recipe validate`: mutated real recipes, generated recipes
of both formats, and arbitrary text. Every case ends with exit status 0 or 2 (one `error:` line), never a
traceback, within the per-case deadline (tests/fuzzing.py)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import yaml
from click.testing import CliRunner
from fuzzing import assert_clean_exit, mutated
from hypothesis import given
from hypothesis import strategies as st

from sparse_bench.harness_ext.cli import main
from sparse_bench.harness_ext.recipes.fields import MODIFIERS

RECIPES = sorted((Path(__file__).parent / "data" / "recipes").iterdir())
YAML_SEEDS = [path.read_bytes() for path in RECIPES if path.suffix == ".yaml"]
CARD_SEEDS = [path.read_bytes() for path in RECIPES if path.suffix == ".md"]

FIELDS = sorted({name for spec in MODIFIERS.values() for name in (*spec.used, *spec.ignored)} | {"unknown_field"})
TEXT = st.sampled_from(["2:4", "4:8", "0:0", "unstructured", "tensorrt", "__ALL__", "__ALL_PRUNABLE__", "Linear",
                        "re:model.layers.\\d+$", "re:(", "lm_head", "eval(a)", "eval(a * 2)", "eval(1/0)",
                        "eval(__import__('os'))", "eval(2 ** 999)", "[1, 4]", "block4", "global", "owl", ""])
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True), TEXT,
                   st.text(max_size=12))
VALUE = st.recursive(SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(st.sampled_from(FIELDS), inner, max_size=3)),
                     max_leaves=8)
MODIFIER_FIELDS = st.dictionaries(st.sampled_from(FIELDS), VALUE, max_size=6)
MODIFIER_NAMES = st.sampled_from([*MODIFIERS, "NoSuchModifier"])
VARIABLES = st.dictionaries(st.sampled_from(["a", "num_epochs", "sparsity", "version"]), SCALAR, max_size=3)


@st.composite
def stage_recipe(draw) -> str:
    """llm-compressor / SparseML stage format: variables, stages, *_modifiers groups of Name: {fields}."""
    stages = {}
    for index in range(draw(st.integers(1, 2))):
        group = {draw(MODIFIER_NAMES): draw(MODIFIER_FIELDS) for _ in range(draw(st.integers(0, 2)))}
        stages[f"s{index}_stage"] = {"run_type": draw(st.sampled_from(["oneshot", "train", 3])),
                                     draw(st.sampled_from(["pruning_modifiers", "obcq_modifiers", "modifers"])): group,
                                     **draw(VARIABLES)}
    return yaml.safe_dump({**draw(VARIABLES), **stages}, allow_unicode=True)


@st.composite
def v1_recipe(draw) -> str:
    """SparseML v1 format: variables, then lists of `!Modifier` nodes."""
    lines = [yaml.safe_dump(draw(VARIABLES)) if draw(st.booleans()) else ""]
    lines.append(draw(st.sampled_from(["modifiers:", "pruning_modifiers:", "training_modifiers:"])))
    for _ in range(draw(st.integers(0, 3))):
        fields = draw(MODIFIER_FIELDS)
        body = textwrap.indent(yaml.safe_dump(fields, allow_unicode=True), "    ") if fields else ""
        lines.append(f"  - !{draw(MODIFIER_NAMES)}\n{body}")
    return "\n".join(lines) + "\n"


def validate(tmp_path: Path, content: bytes, suffix: str = ".yaml"):
    path = tmp_path / f"recipe{suffix}"
    path.write_bytes(content)
    return CliRunner().invoke(main, ["recipe", "validate", str(path)])


@given(content=mutated(YAML_SEEDS))
def test_mutated_recipes(tmp_path, content):
    assert_clean_exit(validate(tmp_path, content))


@given(content=mutated(CARD_SEEDS))
def test_mutated_recipe_cards(tmp_path, content):
    assert_clean_exit(validate(tmp_path, content, ".md"))


@given(text=st.one_of(stage_recipe(), v1_recipe()))
def test_generated_recipes(tmp_path, text):
    assert_clean_exit(validate(tmp_path, text.encode()))


@given(text=st.text(max_size=300))
def test_arbitrary_text(tmp_path, text):
    assert_clean_exit(validate(tmp_path, text.encode("utf-8", "surrogatepass")))
