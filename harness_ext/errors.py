"""The one error type for mistakes a user can make and fix.

Raise `UserError("what is wrong; what to do")` with a one-line message. The `sparse-bench` CLI, the
`sparse-bench eval` wrapper and the start-up hook for plain `lm_eval` turn it into that line on stderr and
exit status 2, without a traceback. Anything else is a bug and keeps its traceback.
"""

import sys
from typing import NoReturn

USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """A problem in the user's input (arguments, files, models) with a one-line, actionable message."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def report_and_exit(error: UserError) -> NoReturn:
    """Print `error: MESSAGE` on stderr and exit with status 2."""
    sys.stdout.flush()
    print(f"error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(USER_ERROR_EXIT_CODE)
