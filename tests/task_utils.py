"""Load a task folder's utils.py the way lm-eval does: by path, as a module of its own."""

from __future__ import annotations

import importlib.util
from types import ModuleType

from sparse_bench.tasks import TASKS_DIR


def load_task_utils(folder: str) -> ModuleType:
    """`tasks/<folder>/utils.py` as a fresh module (not cached, so monkeypatching one test touches no other)."""
    path = TASKS_DIR / folder / "utils.py"
    spec = importlib.util.spec_from_file_location(f"task_utils_{folder}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
