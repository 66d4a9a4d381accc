"""Show each of lm-eval's per-task warnings once per process, not once per task and per call.

lm-eval logs some warnings for every task it builds: with a grid of 7 cells x 3 tasks the same sentence about
`--metadata` appeared 21 times and buried the results. `OncePerMessage` lets the first record of each message
through and drops repeats; the task name that lm-eval puts before the message is not part of what counts as
the same message.
"""

from __future__ import annotations

import logging

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


__all__ = ["OncePerMessage", "show_repeated_warnings_once", "PER_TASK_LOGGERS"]
