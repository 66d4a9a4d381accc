"""Start-up hook (run by `sparse_bench_lm_eval_hook.pth`, which `pip install .` puts in site-packages).

It costs one entry on `sys.meta_path` per interpreter: nothing is imported until a program imports
`lm_eval.api.registry`; right after that module has run, `register_with_lm_eval()` registers `sparse-hf`
and our task folder. This is how the stock `lm_eval` command of lm-eval 0.4.13, which has no plugin
discovery, sees `--model sparse-hf`. Set SPARSE_BENCH_DISABLE_HOOK=1 to switch it off for a process.
"""

from __future__ import annotations

import os
import warnings

REGISTRY_MODULE = "lm_eval.api.registry"


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
    from .post_import import call_after_import
    from .registration import TASK_MANAGER_MODULE, index_our_tasks_too

    call_after_import(TASK_MANAGER_MODULE, index_our_tasks_too)  # before anything of lm-eval is imported
    call_after_import(REGISTRY_MODULE, _register)
