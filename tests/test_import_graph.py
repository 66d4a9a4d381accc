"""The installed package's shape: no import circle (module-level and function-level imports alike), no module
over 400 lines, no function over 60 lines.

Every `.py` file of the installed `sparse_bench` packages is parsed with `ast` (nothing is imported but the
four top-level packages themselves); every `import` / `from ... import` statement anywhere in a module, inside
functions included, is an edge (relative imports resolved). A lazy import hides a circle from Python, not
from this test.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

TOPS = ("harness_ext", "model_wrappers", "tasks", "leaderboards")  # setup.cfg's package_dir
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60
TOO_LONG_ALLOWED: dict[str, str] = {}  # "module[:function]" -> why it cannot be split (none today)


def installed_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the installed `sparse_bench` packages."""
    modules = {}
    for top in TOPS:
        spec = importlib.util.find_spec(f"sparse_bench.{top}")
        assert spec is not None and spec.submodule_search_locations, f"sparse_bench.{top} is not installed"
        root = Path(list(spec.submodule_search_locations)[0])
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(["sparse_bench", top, *parts])] = path
    return modules


def _imported_names(node: ast.AST, package: str) -> list[str]:
    """The modules (and `module.name` candidates) one import statement in `package` names."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = package.split(".")[:len(package.split(".")) - node.level + 1]
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = node.module or ""
    return [module] + [f"{module}.{alias.name}" for alias in node.names]


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package modules it imports (the longest known prefix of each imported name)."""
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for imported in _imported_names(node, package):
                while imported and imported not in modules:
                    imported = imported.rpartition(".")[0]
                if imported and imported != name:
                    edges.add(imported)
        graph[name] = edges
    return graph


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (circle := visit(target)):
                return circle
        state[module] = 2
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (circle := visit(module)):
            return circle
    return None


def test_find_circle_names_the_circle():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_function_level_and_relative_imports_are_edges(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "plan.py").write_text("def f():\n    from .recipes import load\n")
    (package / "recipes.py").write_text("from . import plan\n")
    modules = {"pkg": package / "__init__.py", "pkg.plan": package / "plan.py", "pkg.recipes": package / "recipes.py"}
    graph = import_graph(modules)
    assert graph["pkg.plan"] == {"pkg.recipes"} and graph["pkg.recipes"] == {"pkg", "pkg.plan"}
    assert find_circle(graph) == ["pkg.plan", "pkg.recipes", "pkg.plan"]


def test_the_installed_package_has_no_import_circle():
    modules = installed_modules()
    assert "sparse_bench.harness_ext.pruning.plan" in modules and len(modules) > 100
    circle = find_circle(import_graph(modules))
    assert circle is None, "import circle: " + " -> ".join(name.removeprefix("sparse_bench.") for name in circle)


def test_no_module_over_400_lines_and_no_function_over_60():
    too_long = []
    for name, path in installed_modules().items():
        source = path.read_text(encoding="utf-8")
        short = name.removeprefix("sparse_bench.")
        if len(source.splitlines()) > MAX_MODULE_LINES and short not in TOO_LONG_ALLOWED:
            too_long.append(f"{short}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and f"{short}:{node.name}" not in TOO_LONG_ALLOWED:
                    too_long.append(f"{short}:{node.name}: {lines} lines")
    assert not too_long, f"over {MAX_MODULE_LINES} lines per module / {MAX_FUNCTION_LINES} per function: {too_long}"
