"""Start-up hook (run by `sparse_bench_lm_eval_hook.pth`, which `pip install .` puts in site-packages).

It costs one entry on `sys.meta_path` per interpreter: nothing is imported until a program imports
`lm_eval.api.registry`; right after that module has run, `register_with_lm_eval()` registers `sparse-hf`
and our task folder. This is how the stock `lm_eval` command of lm-eval 0.4.13, which has no plugin
discovery, sees `--model sparse-hf`. Set SPARSE_BENCH_DISABLE_HOOK=1 to switch it off for a process.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import warnings
from typing import Callable

REGISTRY_MODULE = "lm_eval.api.registry"
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


def _register(registry_module) -> None:
    try:
        from .registration import register_with_lm_eval
    except ImportError as error:  # our package is gone or blocked: lm-eval itself must still work
        warnings.warn(f"sparse-bench's lm-eval hook is inactive ({error}); --model sparse-hf is unavailable",
                      stacklevel=2)
        return
    register_with_lm_eval()


def install() -> None:
    """Register with lm-eval as soon as its registry module exists (idempotent)."""
    if os.environ.get("SPARSE_BENCH_DISABLE_HOOK") == "1":
        return
    from .registration import TASK_MANAGER_MODULE, index_our_tasks_too

    call_after_import(TASK_MANAGER_MODULE, index_our_tasks_too)  # before anything of lm-eval is imported
    call_after_import(REGISTRY_MODULE, _register)
