"""Start-up hook (run by `sparse_bench_lm_eval_hook.pth`, which `pip install .` puts in site-packages).

It costs one entry on `sys.meta_path` per interpreter: nothing is imported until a program imports
`lm_eval.api.registry`; right after that module has run, `register_with_lm_eval()` registers `sparse-hf`
and our task folder. This is how the stock `lm_eval` command of lm-eval 0.4.13, which has no plugin
discovery, sees `--model sparse-hf`.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import warnings

WATCHED_MODULE = "lm_eval.api.registry"


class _RegistryWatcher(importlib.abc.MetaPathFinder):
    """Finds `lm_eval.api.registry` like the normal path finder, then runs our registration after it."""

    def find_spec(self, fullname, path, target=None):
        if fullname != WATCHED_MODULE:
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the lookup below from recursing
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        run_module = spec.loader.exec_module

        def exec_then_register(module):
            run_module(module)
            try:
                from .registration import register_with_lm_eval
            except ImportError as error:  # our package is gone or blocked: lm-eval itself must still work
                warnings.warn(f"sparse-bench's lm-eval hook is inactive ({error}); --model sparse-hf is unavailable",
                              stacklevel=2)
                return
            register_with_lm_eval()

        spec.loader.exec_module = exec_then_register
        return spec


def install() -> None:
    """Put the watcher on `sys.meta_path` (idempotent; a no-op if lm-eval's registry is already imported)."""
    if WATCHED_MODULE in sys.modules:
        from .registration import register_with_lm_eval
        register_with_lm_eval()
        return
    if not any(isinstance(finder, _RegistryWatcher) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegistryWatcher())
