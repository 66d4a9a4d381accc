"""Every user-facing error says what is wrong and what to do: `error: WHAT; WHAT TO DO`.

Walks the source of the installed package: each `UserError(...)` / `DataError(...)` built from a literal
message must carry a "; " between the two parts; messages built by the recipe and grid-spec helpers get a
what-to-do part added when theirs has none (checked on real errors below).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sparse_bench.harness_ext
import sparse_bench.leaderboards
import sparse_bench.model_wrappers
import sparse_bench.tasks
from sparse_bench.harness_ext.errors import UserError
from sparse_bench.harness_ext.recipes import load_recipe
from sparse_bench.leaderboards.spec_parser import parse_spec

ERROR_TYPES = {"UserError", "DataError"}
PACKAGES = (sparse_bench.harness_ext, sparse_bench.model_wrappers, sparse_bench.leaderboards, sparse_bench.tasks)


def _literal_text(node: ast.AST) -> str | None:
    """The message's literal parts, with {} for each interpolated value; None if it is not a literal."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(part.value if isinstance(part, ast.Constant) else "{}" for part in node.values)
    if isinstance(node, ast.BinOp):
        return (_literal_text(node.left) or "{}") + (_literal_text(node.right) or "{}")
    return None


def _error_messages() -> list[tuple[str, int, str]]:
    found = []
    for package in PACKAGES:
        for path in Path(package.__path__[0]).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.Call) or not node.args:
                    continue
                name = getattr(node.func, "id", getattr(node.func, "attr", None))
                text = _literal_text(node.args[0]) if name in ERROR_TYPES else None
                if text is not None and any(char.isalpha() for char in text.replace("{}", "")):
                    found.append((f"{path.parent.name}/{path.name}", node.lineno, text))
    return found


def test_every_literal_error_message_says_what_to_do():
    messages = _error_messages()
    assert len(messages) > 100  # the walk found the package's errors
    missing = [f"{where}:{line}: {text}" for where, line, text in messages if "; " not in text]
    assert not missing, "error messages without '; what to do':\n" + "\n".join(missing)


def test_recipe_and_spec_errors_get_a_what_to_do_part(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("version: 1.1.0\n", encoding="utf-8")
    with pytest.raises(UserError) as recipe_error:
        load_recipe(recipe)
    with pytest.raises(UserError) as spec_error:
        parse_spec({"name": "x", "models": []}, source="grid.yaml", base_dir=tmp_path)
    for error in (recipe_error, spec_error):
        what, separator, to_do = str(error.value).partition("; ")
        assert separator and what and to_do, str(error.value)
