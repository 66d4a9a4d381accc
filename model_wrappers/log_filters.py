"""Show each of lm-eval's per-task warnings once per process, not once per task and per call.

lm-eval logs some warnings for every task it builds: with a grid of 7 cells x 3 tasks the same sentence about
`--metadata` appeared 21 times and buried the results. `OncePerMessage` lets the first record of each message
through and drops repeats; the task name that lm-eval puts before the message is not part of what counts as
the same message.

lm-eval also records the working directory's git commit in every result by running `git describe`, which
prints `fatal: not a git repository` on stderr for every evaluation run outside a repository (3 lines per
demo cell). `git_lookup_once` runs lm-eval's own lookup once per process with that stderr discarded.
"""

from __future__ import annotations

import functools
import logging
import os

# loggers whose warnings repeat per task; their errors are never filtered
PER_TASK_LOGGERS = ("lm_eval.api.task", "lm_eval.evaluator", "lm_eval.evaluator_utils", "lm_eval.tasks")


class OncePerMessage(logging.Filter):
    """Drop WARNING/INFO records whose message (after any `task_name: ` prefix) was already shown."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        message = record.getMessage()
        head, separator, rest = message.partition(": ")
        key = rest if separator and " " not in head else message
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def show_repeated_warnings_once() -> None:
    """Install one OncePerMessage filter on each per-task lm-eval logger (idempotent)."""
    for name in PER_TASK_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, OncePerMessage) for existing in logger.filters):
            logger.addFilter(OncePerMessage())


def git_lookup_once() -> None:
    """Make lm-eval's per-evaluation git-commit lookup run once per process, without its stderr (idempotent)."""
    import lm_eval.evaluator as evaluator

    lookup = evaluator.get_git_commit_hash
    if hasattr(lookup, "cache_info"):
        return

    @functools.cache
    def quiet_lookup() -> str | None:
        saved = os.dup(2)  # `git` inherits file descriptor 2 from this process, not sys.stderr
        try:
            with open(os.devnull, "w") as devnull:
                os.dup2(devnull.fileno(), 2)
                return lookup()
        finally:
            os.dup2(saved, 2)
            os.close(saved)

    evaluator.get_git_commit_hash = quiet_lookup


__all__ = ["OncePerMessage", "show_repeated_warnings_once", "git_lookup_once", "PER_TASK_LOGGERS"]
