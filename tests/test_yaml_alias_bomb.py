"""YAML alias bombs ("billion laughs": a 1 KB file whose nested aliases expand to billions of nodes) get one
line, `error: FILE: too many YAML aliases (...); ...`, exit status 2, through every path that reads user YAML:
`recipe validate`, `prune --recipe`, `lm_eval --model_args recipe=`, and a grid spec naming the recipe (or
being a bomb itself). The budget check runs on the composed node graph, once per written node."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from fuzzing import bomb_text

from sparse_bench.harness_ext.cli import main
from sparse_bench.harness_ext.errors import UserError
from sparse_bench.harness_ext.recipes import load_recipe
from sparse_bench.harness_ext.recipes.expressions import all_expressions
from sparse_bench.harness_ext.recipes.yaml_loader import (
    ALIAS_EXPANSION_BUDGET,
    load_yaml,
    parse_value,
)
from sparse_bench.leaderboards.spec_parser import load_spec

# (levels, aliases per list): the nine lists of nine (~390 million leaf references in 1 KB), a wide
# 2-level one (1,000 x 1,000 = a million) and a 12-level one (~282 billion).
BOMBS = {"9x9": (9, 9), "2x1000": (2, 1000), "12x9": (12, 9)}
SECONDS = 1.0  # the bound, for the loader itself (it takes milliseconds)
HANG_GUARD = 10.0  # for whole commands in-process (imports included); before the fix they ran for minutes.
# benchmarks/bench_yaml_bombs.py measures each command in a fresh process against the same command on a valid file.


@pytest.fixture(params=list(BOMBS))
def bomb(request, tmp_path) -> Path:
    path = tmp_path / f"bomb_{request.param}.yaml"
    path.write_text("modifiers:\n  - !GMPruningModifier {final_sparsity: 0.5, params: __ALL_PRUNABLE__}\n"
                    + bomb_text(*BOMBS[request.param]))
    return path


def assert_alias_error(text: str, path: Path) -> None:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"{path}: too many YAML aliases (" in lines[0], text


def test_loader_refuses_bombs_at_load_time(bomb):
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"too many YAML aliases \(expanding them gives [\d,]+ nodes"):
        load_yaml(bomb)
    assert time.perf_counter() - start < SECONDS


@pytest.mark.parametrize("text", ["a: &a [1, *a]\n", "a: &a {b: {c: *a}}\n"])
def test_recursive_alias_is_refused(tmp_path, text):
    path = tmp_path / "cycle.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match="too many YAML aliases .an alias refers to the node that contains it"):
        load_yaml(path)


def test_aliases_within_budget_still_work(tmp_path):
    """Ordinary anchors (shared fields) load; a document at the budget loads, one node over it is refused."""
    path = tmp_path / "shared.yaml"
    path.write_text("base: &base {final_sparsity: 0.5, params: __ALL_PRUNABLE__}\nmodifiers:\n"
                    "  - !GMPruningModifier {<<: *base, init_sparsity: 0.1}\n")
    assert load_recipe(path).steps[0].sparsity == 0.5
    width = 100  # `copies` aliases of a list of `width` scalars add exactly copies * (width + 1) nodes
    copies = ALIAS_EXPANSION_BUDGET // (width + 1)

    def repeated(count: int) -> str:
        return f"a: &a [{', '.join(['x'] * width)}]\nb: [{', '.join(['*a'] * count)}]\n"

    path.write_text(repeated(copies))
    assert len(load_yaml(path)[0]["b"]) == copies
    path.write_text(repeated(copies + 1))
    with pytest.raises(UserError, match=f"at most {ALIAS_EXPANSION_BUDGET:,} more than written"):
        load_yaml(path)


def test_expression_walk_visits_shared_nodes_once():
    """all_expressions over a shared structure is linear in the written nodes (9 levels: 9 x 9 visits, not 9^9)."""
    level: list = ["eval(a + 1)"] * 9
    for _ in range(8):
        level = [level] * 9
    start = time.perf_counter()
    assert list(all_expressions({"x": level})) == ["a + 1"] * 9  # the nine written, once each
    assert time.perf_counter() - start < SECONDS


def test_nesting_is_limited(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("x: " + "[" * 101 + "]" * 101 + "\n")
    with pytest.raises(UserError, match=r"deep.yaml:1: nested more than 100 levels deep"):
        load_yaml(path)
    text = "[" * 101 + "]" * 101
    assert parse_value(text) == text  # a command-line value too deep for the loader stays the text it is
    assert parse_value("[" * 100 + "]" * 100) is not None


def cli(*args: str):
    return CliRunner().invoke(main, [*map(str, args)])


def test_recipe_validate(bomb):
    start = time.perf_counter()
    result = cli("recipe", "validate", bomb)
    assert result.exit_code == 2 and time.perf_counter() - start < HANG_GUARD
    assert_alias_error(result.stderr, bomb)


def test_prune_with_recipe(bomb, tiny_llama, tmp_path):
    start = time.perf_counter()
    result = cli("prune", tiny_llama, "--recipe", bomb, "--out", tmp_path / "out")
    assert result.exit_code == 2 and time.perf_counter() - start < HANG_GUARD
    assert_alias_error(result.stderr, bomb)
    assert not (tmp_path / "out").exists()


def test_lm_eval_model_args(bomb, tiny_llama):
    """The sparse-hf model as lm-eval builds it from `--model_args` (the recipe is read before the model)."""
    from lm_eval.api.registry import get_model

    from sparse_bench.model_wrappers.registration import register_with_lm_eval

    register_with_lm_eval()
    start = time.perf_counter()
    with pytest.raises(UserError) as error:
        get_model("sparse-hf").create_from_arg_string(f"pretrained={tiny_llama},recipe={bomb}", {})
    assert time.perf_counter() - start < HANG_GUARD
    assert_alias_error(f"error: {error.value}", bomb)


@pytest.mark.parametrize("command", ["cells", "run"])
def test_grid_spec_naming_the_bomb(bomb, tmp_path, command):
    spec = tmp_path / "grid.yaml"
    spec.write_text(f"models: [smollm2-135m]\nmethods: [{{recipe: {bomb.name}}}]\ntasks: [sparsebench_mrpc]\n")
    start = time.perf_counter()
    result = cli("leaderboard", command, spec, *(["--out", tmp_path / "out"] if command == "run" else []))
    assert result.exit_code == 2 and time.perf_counter() - start < HANG_GUARD
    assert_alias_error(result.stderr, bomb)
    assert result.stderr.startswith(f"error: {spec}: methods[0].recipe: ")
    assert not (tmp_path / "out").exists()


def test_grid_spec_that_is_a_bomb(tmp_path):
    spec = tmp_path / "grid.yaml"
    spec.write_text("models: [smollm2-135m]\ntasks: [sparsebench_mrpc]\n" + bomb_text(9, 9))
    with pytest.raises(UserError, match=f"{spec}: too many YAML aliases"):
        load_spec(spec)


HOOK = Path(sysconfig.get_paths()["purelib"]) / "sparse_bench_lm_eval_hook.pth"


@pytest.mark.slow
@pytest.mark.skipif(not HOOK.exists(), reason="editable install: no start-up hook (CI installs with pip install .)")
def test_plain_lm_eval_command(tmp_path, tiny_llama):
    """The real `lm_eval` program (~30 s: it indexes lm-eval's built-in tasks before building the model)."""
    from tiny_tasks import TASK_NAME, write_tiny_choice_task

    path = tmp_path / "bomb.yaml"
    path.write_text(bomb_text(9, 9))
    lm_eval = Path(sys.executable).with_name("lm_eval")
    result = subprocess.run(
        [str(lm_eval), "--model", "sparse-hf", "--model_args", f"pretrained={tiny_llama},recipe={path}",
         "--tasks", TASK_NAME, "--include_path", str(write_tiny_choice_task(tmp_path / "tasks"))],
        capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    assert_alias_error(result.stderr.strip().splitlines()[-1], path)
