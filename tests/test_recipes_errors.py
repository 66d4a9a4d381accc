"""Malformed recipes: each gives one line naming the file, the line, the field and what is expected."""

from __future__ import annotations

import re

import pytest

from sparse_bench.harness_ext.errors import UserError
from sparse_bench.harness_ext.recipes import load_recipe

WANDA = "s_stage:\n  g_modifiers:\n    WandaPruningModifier:\n"
GMP = "pruning_modifiers:\n  - !GMPruningModifier\n    params: __ALL_PRUNABLE__\n"

# (recipe text, line the error must name or None, fragment of the message)
CASES = {
    "unknown modifier": ("modifiers:\n  - !GMPrunningModifier\n    final_sparsity: 0.5\n", 2,
                         "GMPrunningModifier: unknown modifier (did you mean 'GMPruningModifier'?)"),
    "unknown stage modifier": ("s_stage:\n  g_modifiers:\n    SparseGPTModifer:\n      sparsity: 0.5\n", 3,
                               "(did you mean 'SparseGPTModifier'?)"),
    "unknown field": (GMP + "    final_sparsty: 0.5\n", 4,
                      "GMPruningModifier.final_sparsty: unknown field (did you mean 'final_sparsity'?)"),
    "duplicate field": (WANDA + "      sparsity: 0.5\n      sparsity: 0.6\n", 5,
                        "duplicate key 'sparsity' (first at line 4)"),
    "duplicate stage": ("a_stage:\n  g_modifiers:\n    WandaPruningModifier: {sparsity: 0.5}\n"
                        "a_stage:\n  g_modifiers:\n    WandaPruningModifier: {sparsity: 0.6}\n", 4,
                        "duplicate key 'a_stage' (first at line 1)"),
    "sparsity above 1": (WANDA + "      sparsity: 1.5\n", 4,
                         "WandaPruningModifier.sparsity: sparsity must be in [0, 1)"),
    "sparsity as percent": (GMP + "    final_sparsity: 50\n", 4, "for 50 % write 0.5"),
    "sparsity zero": (WANDA + "      sparsity: 0\n", 4, "sparsity 0 prunes nothing"),
    "sparsity wrong type": (WANDA + "      sparsity: high\n", 4, "expected a sparsity (fraction of weights set to "
                                                               "zero, e.g. 0.5), got str 'high'"),
    "impossible N:M": (WANDA + "      mask_structure: '4:2'\n", 4, "impossible N:M structure '4:2'"),
    "malformed N:M": (WANDA + "      mask_structure: 2-4\n", 4, "malformed structure '2-4'"),
    "N:M as a number": (WANDA + "      sparsity: 0.5\n      mask_structure: 124\n", 5,
                        "expected 'unstructured', a quoted N:M"),
    "N:M contradicts sparsity": (WANDA + "      sparsity: 0.7\n      mask_structure: 2:4\n", 4,
                                 "sparsity 0.7 contradicts mask 2:4"),
    "block mask of three sides": (GMP + "    final_sparsity: 0.8\n    mask_type: [1, 4, 2]\n", 5,
                                  "block mask [1, 4, 2] must be two whole numbers"),
    "channel mask": (GMP + "    final_sparsity: 0.8\n    mask_type: channel\n", 5, "'channel' masks"),
    "block mask without sparsity": (WANDA + "      mask_structure: [1, 4]\n", 3, "no sparsity given"),
    "OWL with N:M": (WANDA + "      sparsity_profile: owl\n      mask_structure: '2:4'\n", 5,
                     "cannot be combined with per-layer sparsities or OWL"),
    "owl_m without profile": (WANDA + "      sparsity: 0.5\n      owl_m: 5\n", 5, "only used with sparsity_profile"),
    "unknown profile": (WANDA + "      sparsity: 0.5\n      sparsity_profile: fancy\n", 5, "the only profile is 'owl'"),
    "targets wrong type": (WANDA + "      sparsity: 0.5\n      targets: 5\n", 5, "expected a name, a 're:' regex"),
    "block_size float": ("s_stage:\n  g_modifiers:\n    SparseGPTModifier:\n      sparsity: 0.5\n"
                         "      block_size: 1.5\n", 5, "SparseGPTModifier.block_size: expected an integer"),
    "flag wrong type": (GMP + "    final_sparsity: 0.5\n    global_sparsity: maybe\n", 5, "expected true or false"),
    "two damping fields": ("s_stage:\n  g_modifiers:\n    SparseGPTModifier:\n      sparsity: 0.5\n"
                           "      percdamp: 0.01\n      dampening_frac: 0.01\n", 6, "give only one of"),
    "bad regex": (WANDA + "      sparsity: 0.5\n      targets: ['re:model.(layers']\n", 5, "bad regex"),
    "bias params": (GMP.replace("__ALL_PRUNABLE__", "['re:.*dense.bias']") + "    final_sparsity: 0.5\n", 3,
                    "names biases"),
    "class name target": (WANDA + "      sparsity: 0.5\n      targets: [LlamaRMSNorm]\n", 5,
                          "class name 'LlamaRMSNorm' is not a layer type"),
    "ignore everything": (WANDA + "      sparsity: 0.5\n      ignore: [Linear]\n", 5, "leaves nothing to prune"),
    "per-layer list with regex": (WANDA + "      sparsity: [0.4, 0.6]\n      targets: ['re:.*']\n", 4,
                                  "needs exactly one explicitly named target per value"),
    "missing params": ("modifiers:\n  - !GMPruningModifier\n    final_sparsity: 0.5\n", 2,
                       "no params/targets given"),
    "no sparsity": (WANDA + "      targets: [Linear]\n", 3, "no sparsity given"),
    "movement scores": (GMP + "    final_sparsity: 0.5\n    score_type: movement\n", 5, "scores need training"),
    "rejected modifier": ("modifiers:\n  - !MovementPruningModifier\n    final_sparsity: 0.5\n", 2,
                          "MovementPruningModifier: not supported: it scores weights by how they move"),
    "undefined variable": (WANDA + "      sparsity: eval(target)\n", 4,
                           "eval(target) uses undefined variable 'target'"),
    "undefined in variable": ("a: eval(b + 1)\n" + WANDA + "      sparsity: 0.5\n", 1,
                              "a: eval(b + 1) uses undefined variable 'b'"),
    "variable cycle": ("a: eval(b)\nb: eval(a)\n" + WANDA + "      sparsity: 0.5\n", 1,
                       "variables a, b refer to each other in a cycle"),
    "python in eval": (WANDA + "      sparsity: eval(__import__('os').getpid())\n", 4, "is not allowed"),
    "attribute in eval": ("x: 1\n" + WANDA + "      sparsity: eval(x.real)\n", 5, "is not allowed"),
    "python tag": ("x: !!python/object/apply:os.system ['true']\n" + WANDA + "      sparsity: 0.5\n", 1,
                   "tag !!python/object/apply:os.system refused"),
    "misnamed group": ("pruning_modifers:\n  - !GMPruningModifier\n    final_sparsity: 0.5\n", 1,
                       "did you mean 'pruning_modifiers'?"),
    "misnamed stage group": ("a_stage:\n  run_type: oneshot\n  sparsity_modifers:\n    WandaPruningModifier:\n"
                             "      sparsity: 0.5\n", 3, "did you mean 'sparsity_modifiers'?"),
    "group item not a modifier": ("modifiers:\n  - 0.5\n", 2, "each item must be a '!ModifierName' node"),
    "modifier fields not a mapping": (WANDA.rstrip("\n") + " 0.5\n", 3, "expected the modifier's fields as a mapping"),
    "later stage lowers sparsity": ("a_stage:\n  g_modifiers:\n    WandaPruningModifier: {sparsity: 0.7}\n"
                                    "b_stage:\n  g_modifiers:\n    WandaPruningModifier: {sparsity: 0.5}\n", 6,
                                    "asks for sparsity 0.5 on layers"),
    "no pruning modifier": ("q_stage:\n  q_modifiers:\n    GPTQModifier:\n      targets: [Linear]\n", None,
                            "no pruning modifier (found GPTQModifier): nothing to prune"),
    "empty file": ("", None, "empty recipe"),
    "only comments": ("# nothing here\n", None, "empty recipe"),
    "only variables": ("num_epochs: 10\n", None, "empty recipe: no modifiers found"),
    "empty group": ("modifiers: []\n", None, "empty recipe: no modifiers found"),
    "top level list": ("- a\n- b\n", 1, "expected a mapping of variables, stages and *_modifiers"),
    "yaml syntax": (WANDA + "      sparsity: [0.5\n", 5, "expected ',' or ']'"),
    "two documents": (WANDA + "      sparsity: 0.5\n---\nx: 1\n", 5, "several YAML documents"),
}


def _load_error(tmp_path, text: str, name: str = "recipe.yaml", **kwargs) -> tuple[str, str]:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as caught:
        load_recipe(path, **kwargs)
    return str(path), str(caught.value)


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_recipe_gives_one_line_error(tmp_path, case):
    text, line, fragment = CASES[case]
    path, message = _load_error(tmp_path, text)
    assert "\n" not in message
    assert message.startswith(f"{path}:{line}: " if line else f"{path}: "), message
    assert fragment in message, message


def test_unused_recipe_arg_is_refused(tmp_path):
    _, message = _load_error(tmp_path, WANDA + "      sparsity: 0.5\n", recipe_args={"sparsty": 0.5})
    assert re.search(r"recipe_args: 'sparsty' is neither a variable of the recipe nor used", message)


def test_markdown_without_front_matter(tmp_path):
    path, message = _load_error(tmp_path, "# Title\n\nNo YAML here.\n", name="card.md")
    assert message.startswith(f"{path}:1: no YAML front matter"), message


def test_unclosed_front_matter(tmp_path):
    path, message = _load_error(tmp_path, "<!-- c -->\n---\nmodifiers: []\n", name="card.md")
    assert message.startswith(f"{path}:2: the front matter opened here is never closed"), message


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="cannot read recipe .*nope.yaml"):
        load_recipe(tmp_path / "nope.yaml")


def test_sparsezoo_stub_is_refused_clearly():
    with pytest.raises(UserError, match="SparseZoo stubs are not supported"):
        load_recipe("zoo:nlp/masked_language_modeling/bert-base/pytorch/huggingface/wikipedia_bookcorpus/pruned80")


def test_not_utf8(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(b"x: \xff\xfe\n")
    with pytest.raises(UserError, match="not UTF-8"):
        load_recipe(path)
