"""scripts/publish_tests.py: the README's test-suite numbers come from a run's log."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from publish_tests import suite_summary, timing_block  # noqa: E402 (after the sys.path line)

PASSING = "....s..\n969 passed, 7 skipped, 12 deselected in 522.31s (0:08:42)\n"


def test_counts_and_seconds_come_from_the_last_summary_line():
    counts, seconds = suite_summary("1 passed in 0.10s\n" + PASSING)
    assert counts == {"passed": 969, "skipped": 7, "deselected": 12} and seconds == 522.31
    block = timing_block(counts, seconds, 641.0)
    assert "976 tests, 7 of them skipped" in block and "8 min 42 s" in block and "10 min 41 s" in block


@pytest.mark.parametrize("log, reason", [("no summary here\n", "no pytest summary"),
                                         ("3 failed, 966 passed, 7 skipped in 500.00s\n", "the run did not pass")])
def test_a_log_without_a_passing_summary_is_refused(log, reason):
    with pytest.raises(SystemExit, match=f"error: {reason}"):
        suite_summary(log)
