"""Run a callback right after a module has been imported, without importing it (an import hook).

`call_after_import("lm_eval.api.registry", callback)` runs `callback(module)` now if that module is fully
imported, else as soon as it finishes importing. It never imports the module itself, so it is safe inside
another module's import (no import cycles). Used by the start-up hook and by the registration with lm-eval.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from typing import Callable

_scheduled: set[str] = set()  # modules whose callback waits for them to be imported (or to finish importing)


class _PostImportWatcher(importlib.abc.MetaPathFinder):
    """Finds one module like the normal path finder and runs `callback(module)` once it has executed."""

    def __init__(self, module_name: str, callback: Callable) -> None:
        self.module_name = module_name
        self.callback = callback

    def find_spec(self, fullname, path, target=None):
        if fullname != self.module_name:
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the lookup below from recursing
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            _scheduled.discard(fullname)
            return spec
        run_module = spec.loader.exec_module

        def exec_then_callback(module):
            run_module(module)
            _scheduled.discard(fullname)
            self.callback(module)

        spec.loader.exec_module = exec_then_callback
        return spec


def call_after_import(module_name: str, callback: Callable) -> None:
    """Run `callback(module)` now if `module_name` is fully imported, else right after it finishes importing.

    Never imports the module itself, so it is safe inside another module's import (no import cycles).
    """
    module = sys.modules.get(module_name)
    if module is not None and not getattr(getattr(module, "__spec__", None), "_initializing", False):
        callback(module)
    elif module is None and module_name not in _scheduled:
        _scheduled.add(module_name)
        sys.meta_path.insert(0, _PostImportWatcher(module_name, callback))


__all__ = ["call_after_import"]
