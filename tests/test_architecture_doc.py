"""docs/ARCHITECTURE.md's module map matches the tree: every module of the package has a row (its own, a
sibling row naming it, or its folder's row) and every module a row names exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("harness_ext", "model_wrappers", "leaderboards")


def map_rows() -> list[list[str]]:
    """The backticked names of each module-map row's first cell: a path first, then sibling file names."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    table = text.split("## Module map", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    return [re.findall(r"`([^`]+)`", cell) for cell in rows]


def mapped_paths() -> tuple[set[str], set[str]]:
    """(files named by the map, folders the map covers whole)."""
    files, folders = set(), set()
    for names in map_rows():
        first = names[0]
        if first.endswith("/"):
            folders.add(first.rstrip("/"))
            continue
        folder = first.rsplit("/", 1)[0]
        files.add(first)
        files.update(f"{folder}/{name}" for name in names[1:] if name.endswith(".py"))
    return files, folders


def package_modules() -> set[str]:
    return {str(path.relative_to(REPO)) for package in PACKAGES for path in (REPO / package).rglob("*.py")
            if path.name != "__init__.py" and "__pycache__" not in path.parts and "templates" not in path.parts}


def test_every_module_has_a_row():
    files, folders = mapped_paths()
    unmapped = sorted(module for module in package_modules()
                      if module not in files and not any(module.startswith(folder + "/") for folder in folders))
    assert not unmapped, f"modules missing from docs/ARCHITECTURE.md's module map: {unmapped}"


def test_every_row_names_a_real_module():
    files, folders = mapped_paths()
    absent = sorted(path for path in files | folders if not any(REPO.glob(path)))
    assert not absent, f"docs/ARCHITECTURE.md names modules that do not exist: {absent}"
