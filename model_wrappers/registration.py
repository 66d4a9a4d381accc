"""Register `sparse-hf`, `sparse-encoder` and our task folder with lm-eval, without patching lm-eval's files.

lm-eval 0.4.13 fills its model registry with the built-in models only when the registry is still empty at
the first `get_model` call; registering a plugin before that hides `--model hf`. So we always import
`lm_eval.models` first, then register every `lm_eval.models` entry point as a lazy "module:Class" string
(what newer lm-eval releases do themselves), which is cheap and upgrades to the class on first use.
"""

from __future__ import annotations

import functools
import os
import sys
from importlib.metadata import entry_points

from ..tasks import TASKS_DIR

MODEL_NAME = "sparse-hf"
MODEL_TARGETS = {MODEL_NAME: "sparse_bench.model_wrappers.sparse_hf:SparseHFLM",
                 "sparse-encoder": "sparse_bench.model_wrappers.sparse_encoder:SparseEncoderLM"}


def register_models() -> None:
    """Register every `lm_eval.models` entry point (ours included) after lm-eval's built-in models."""
    import lm_eval.models  # noqa: F401  - registers the built-ins first (see module docstring)
    from lm_eval.api.registry import model_registry

    targets = {**MODEL_TARGETS, **{ep.name: ep.value for ep in entry_points(group="lm_eval.models")}}
    # (ours listed too: a source checkout run without installing has no entry points)
    for name, target in targets.items():
        if name not in model_registry:  # already there: lm-eval's own discovery or an earlier call
            model_registry.register(name, target=target)


def with_resolved_model_name(metadata: dict | None) -> dict | None:
    """lm-eval hands the model args to task loaders as metadata (Billsum reads the tokenizer named there):
    turn a short name such as `pretrained=smollm2-135m` into the checkpoint directory it stands for."""
    from ..harness_ext.models import SHORT_NAMES, find_or_prepare_model

    if not metadata or metadata.get("pretrained") not in SHORT_NAMES:
        return metadata
    return {**metadata, "pretrained": find_or_prepare_model(metadata["pretrained"])}


TASK_MANAGER_MODULE = "lm_eval.tasks.manager"


def add_task_folder() -> None:
    """Make every TaskManager also index our task folder, so `--tasks sparsebench_*` needs no include path.

    Done when lm-eval's task manager module has finished importing (now, if it has), never by importing it
    here: this runs inside lm-eval's own imports.
    """
    from .post_import import call_after_import

    call_after_import(TASK_MANAGER_MODULE, index_our_tasks_too)


def index_our_tasks_too(manager_module) -> None:
    """Wrap `TaskManager.__init__` so our task folder comes first on its include path (once)."""
    task_manager = manager_module.TaskManager
    if getattr(task_manager.__init__, "_sparse_bench", False):
        return
    original_init = task_manager.__init__

    @functools.wraps(original_init)
    def init_with_our_tasks(self, verbosity=None, include_path=None, include_defaults=True, metadata=None):
        paths = [] if include_path is None else (
            list(include_path) if isinstance(include_path, (list, tuple)) else [include_path])
        if not any(str(path) == str(TASKS_DIR) for path in paths):
            paths.insert(0, TASKS_DIR)  # user paths come later and so may override ours
        original_init(self, verbosity=verbosity, include_path=paths, include_defaults=include_defaults,
                      metadata=with_resolved_model_name(metadata))

    init_with_our_tasks._sparse_bench = True
    task_manager.__init__ = init_with_our_tasks


def install_user_error_hook() -> None:
    """Uncaught `UserError` -> one line on stderr and exit status 2, in any program (plain `lm_eval` too)."""
    from ..harness_ext.errors import USER_ERROR_EXIT_CODE, UserError

    previous_hook = sys.excepthook
    if getattr(previous_hook, "_sparse_bench", False):
        return

    def excepthook(kind, error, trace):
        if isinstance(error, UserError):
            print(f"error: {error}", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(USER_ERROR_EXIT_CODE)  # the interpreter would exit 1 after any excepthook
        previous_hook(kind, error, trace)

    excepthook._sparse_bench = True
    sys.excepthook = excepthook


def register_with_lm_eval() -> None:
    """Everything a process that runs lm-eval needs to see our model and tasks, quietly and fast offline."""
    from ..harness_ext.hub import offline_if_hub_unreachable
    from .log_filters import show_repeated_warnings_once

    register_models()
    add_task_folder()
    install_user_error_hook()
    show_repeated_warnings_once()
    if offline_if_hub_unreachable():
        print("sparse-bench: the Hugging Face hub is unreachable; running offline (set HF_HUB_OFFLINE=0 to "
              "try the hub anyway)", file=sys.stderr)
