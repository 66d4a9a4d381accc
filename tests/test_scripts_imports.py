"""The benchmark and helper scripts import only what the package has (they run rarely, so a rename would
otherwise go unnoticed until a benchmark run fails)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*(REPO / "benchmarks").glob("*.py"), *(REPO / "scripts").glob("*.py")])


def package_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every `from sparse_bench... import name` in the file, lazy imports included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [(node.module, alias.name) for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sparse_bench")
            for alias in node.names]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_script_imports_exist(script):
    missing = []
    for module_name, name in package_imports(script):
        module = importlib.import_module(module_name)
        if not hasattr(module, name):
            try:
                importlib.import_module(f"{module_name}.{name}")
            except ImportError:
                missing.append(f"{module_name}.{name}")
    assert not missing, f"{script.name} imports names the package does not have: {missing}"
