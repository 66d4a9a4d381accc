"""What tests/test_fuzz_*.py share: the hypothesis budgets and the input mutations; hostile YAML.

Budgets (hypothesis profiles): `default` (the default suite: a few dozen cases per test, derandomized so a run
is repeatable) and `ci` (a longer, randomized run), chosen by $SPARSE_BENCH_FUZZ (.ci/run sets `ci`). Every
case has a deadline (DEADLINE): a parser that hangs, or that is slow on some input, fails the test. No
example database is written (nothing appears in the checkout).
"""

from __future__ import annotations

import itertools
import os
from datetime import timedelta

from click.testing import Result
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

PROFILE_ENV = "SPARSE_BENCH_FUZZ"
DEADLINE = timedelta(seconds=5)  # per case; a case takes 10-60 ms, more on a loaded 2-core machine
EXAMPLES = {"default": 40, "ci": 1000}  # per test

for _name, _count in EXAMPLES.items():
    settings.register_profile(_name, max_examples=_count, deadline=DEADLINE, database=None,
                              derandomize=_name == "default",
                              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.load_profile(os.environ.get(PROFILE_ENV, "default"))

# Fragments that mean something to YAML or to our parsers, spliced into otherwise valid files.
YAML_FRAGMENTS = ["&a ", "*a", "<<: *a", "!", "!Unknown ", "!!python/object/apply:os.system ['true']", ": ", "- ",
                  "[", "]", "{", "}", "'", '"', "\n", "  ", "\t", "eval(", ")", "2:4", "1e400", ".nan", "-.inf",
                  "~", "null", "---\n", "%YAML 1.2\n", "? ", "#", "|", ">", "\ufeff", "\x00", "re:(", "**"]


@st.composite
def mutated(draw, seeds: list[bytes], fragments: list[str] = YAML_FRAGMENTS) -> bytes:
    """One of `seeds` after 1-6 random edits: flip a bit, delete or duplicate a span, insert a fragment, cut."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["flip", "delete", "duplicate", "insert", "truncate"]))
        if edit == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif edit == "duplicate":
            data[at:at] = data[at:at + draw(st.integers(1, 64))]
        elif edit == "insert":
            data[at:at] = draw(st.sampled_from(fragments)).encode()
        elif edit == "truncate":
            del data[at:]
    return bytes(data)


def bomb_text(levels: int, width: int) -> str:
    """A YAML alias bomb: `l0: &l0 [x, x, ...]`, `l1: &l1 [*l0, *l0, ...]`, ...: `levels` lists of `width`
    items, expanding to width ** levels leaves (9 x 9: ~390 million from 1 KB)."""
    names = [f"l{i}" for i in range(levels)]
    lines = [f"{names[0]}: &{names[0]} [{', '.join(['x'] * width)}]"]
    lines += [f"{name}: &{name} [{', '.join(['*' + previous] * width)}]" for previous, name in itertools.pairwise(names)]
    return "\n".join(lines) + "\n"


def assert_clean_exit(result: Result) -> None:
    """A CLI run that ended with status 0, or 2 with one `error: ...` line on stderr: never a traceback."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code in (0, 2), (result.exit_code, result.output)
    if result.exit_code == 2:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
