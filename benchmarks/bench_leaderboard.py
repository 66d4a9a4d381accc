"""Wall time of a leaderboard grid (the default demo by default): cold, warm, and resumed, against a budget.

- cold: empty output folder and empty pruned-model cache (every cell prunes and evaluates), in a fresh process
  (imports included), as a user's first `sparse-bench leaderboard run demo` would be;
- warm: empty output folder, pruned-model cache filled by the cold run (every cell evaluates, nothing prunes);
- resumed: the warm run's folder again (every cell is skipped).

Each run is the real CLI in a subprocess. Prints seconds and the ratio to the budget (10 minutes for the demo on
2 CPU cores), with the machine's load average before and after, since a shared machine skews wall times.

    python benchmarks/bench_leaderboard.py                       # demo, budget 600 s
    python benchmarks/bench_leaderboard.py --spec my.yaml --budget 1800 --keep results/bench
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(spec: str, out_dir: Path, cache: Path) -> float:
    command = [sys.executable, "-m", "sparse_bench.harness_ext.cli", "leaderboard", "run", spec, "--out",
               str(out_dir), "--cache", str(cache)]
    start = time.perf_counter()
    result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="demo", help="grid spec file or shipped spec name (default: demo)")
    parser.add_argument("--budget", type=float, default=600.0, help="seconds the cold run may take (default 600)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the outputs here instead of a temp folder")
    args = parser.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="bench_leaderboard_"))
    cache = root / "cache"
    for folder in (root / "cold", root / "warm", cache):
        shutil.rmtree(folder, ignore_errors=True)
    load_before = os.getloadavg()
    times = {"cold": run(args.spec, root / "cold", cache), "warm": run(args.spec, root / "warm", cache),
             "resumed": run(args.spec, root / "warm", cache)}
    load_after = os.getloadavg()
    print(f"spec {args.spec}; CPUs {os.cpu_count()}; load average before {load_before[0]:.1f}, "
          f"after {load_after[0]:.1f} (1 min)")
    for name, seconds in times.items():
        print(f"{name:8s} {seconds:8.1f} s   {seconds / args.budget:5.2f} x budget ({args.budget:.0f} s)")
    print(f"warm / cold {times['warm'] / times['cold']:.2f}; outputs in {root}")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
