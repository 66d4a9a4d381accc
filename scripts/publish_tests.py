"""Write a test-suite run's counts and times into README.md (never typed by hand).

    start=$(date +%s); bash scripts/test.sh 2>&1 | tee /tmp/tests.log; echo $(( $(date +%s) - start )) > /tmp/tests.s
    .venv/bin/python scripts/publish_tests.py /tmp/tests.log "$(cat /tmp/tests.s)"

Reads pytest's closing summary line ("N passed, M skipped, K deselected in S s") from the log and replaces the
text between `<!-- tests:timing:start -->` and `<!-- tests:timing:end -->` in README.md.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from publish_demo import minutes, replace_between

REPO = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"^=*\s*(?P<counts>\d+ \w+(?:, \d+ \w+)*) in (?P<seconds>[\d.]+)s", re.M)


def suite_summary(log: str) -> tuple[dict[str, int], float]:
    """({outcome: count}, pytest seconds) from the last summary line of a pytest log; SystemExit if none or if
    anything failed (a failing run is not published)."""
    matches = list(SUMMARY.finditer(log))
    if not matches:
        raise SystemExit("error: no pytest summary line ('N passed ... in S s') in the log; pass the log of a "
                         "finished `bash scripts/test.sh` run")
    last = matches[-1]
    counts = {outcome: int(count) for count, outcome in re.findall(r"(\d+) (\w+)", last["counts"])}
    if counts.get("failed") or counts.get("errors") or counts.get("error"):
        raise SystemExit(f"error: the run did not pass ({last['counts'].strip()}); publish a passing run")
    return counts, float(last["seconds"])


def timing_block(counts: dict[str, int], pytest_seconds: float, command_seconds: float) -> str:
    ran = counts.get("passed", 0) + counts.get("skipped", 0)
    return (f"Command 2 runs the default test suite (`-m \"not slow\"`): {ran} tests, {counts.get('skipped', 0)} of "
            f"them skipped without a GPU; on a fresh clone, with this project's 2-core machine otherwise quiet, "
            f"pytest took {minutes(pytest_seconds)} and the whole command, fresh venv included, "
            f"{minutes(command_seconds)}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path, help="the output of `bash scripts/test.sh`")
    parser.add_argument("command_seconds", type=float, help="wall seconds of the whole command")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    args = parser.parse_args()
    counts, seconds = suite_summary(args.log.read_text(encoding="utf-8", errors="replace"))
    block = timing_block(counts, seconds, args.command_seconds)
    text = args.readme.read_text(encoding="utf-8")
    args.readme.write_text(replace_between(text, "timing", block, prefix="tests"), encoding="utf-8")
    print(f"{args.readme} updated: {block}")


if __name__ == "__main__":
    main()
