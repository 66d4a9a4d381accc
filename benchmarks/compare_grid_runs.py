"""Same inputs, same numbers: compare two runs of one grid spec (e.g. the demo with 2 and with 1 CPU thread).

Renders both output folders' task tables (the leaderboard's rows, as `sparse-bench leaderboard render`) and
compares every value except the columns that measure this machine's speed (the latency columns and `prune s`).
Rows are matched by task and the cell's identity columns. Then the sha256 of each pruned cell's cached checkpoint
weights (`pruned_checkpoint` in its result; the caches may be in different SPARSE_BENCH_HOMEs). Writes a markdown
report and exits 1 if any compared value or digest differs or a cell is missing from one run.

    python benchmarks/compare_grid_runs.py results/demo /tmp/demo-1thread --out benchmarks/results/demo_runs_compared.md
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from tabulate import tabulate

from sparse_bench.harness_ext.io import sha256_file
from sparse_bench.leaderboards.columns import COLUMNS, measured
from sparse_bench.leaderboards.grid_results import load_grid
from sparse_bench.leaderboards.render import task_names, task_rows

MACHINE_COLUMNS = frozenset([*(column.name for column in COLUMNS if column.phase == "latency"), "prune s"])
IDENTITY = tuple(column.name for column in COLUMNS if column.identity)


def rows_by_key(folder: Path) -> tuple[dict[tuple, dict[str, str]], set[int]]:
    """({(task, identity values...): row}, the torch thread counts the cells' latency records name)."""
    grid = load_grid(folder).with_comparisons()
    rows = {}
    for task in task_names(grid):
        for row in task_rows(grid, task)[0]:
            rows[(task, *(row.get(name, "") for name in IDENTITY))] = row
    threads = {measured(result, "latency", "torch_threads") for result in grid.ok()} - {None}
    return rows, threads


def checkpoint_digests(folder: Path) -> dict[str, str]:
    """{cell label: sha256 of its pruned checkpoint's *.safetensors files (in name order)} for the finished pruned
    cells whose checkpoint is still on disk."""
    digests = {}
    for result in load_grid(folder).ok():
        checkpoint = result.get("pruned_checkpoint")
        files = sorted(Path(checkpoint).glob("*.safetensors")) if checkpoint else []
        if files:
            digest = hashlib.sha256()
            for path in files:
                sha256_file(path, digest)
            cell = result.cell
            digests[f"{cell.method} {cell.structure} {cell.sparsity} {cell.dtype}"] = digest.hexdigest()
    return digests


def compare(first: dict, second: dict) -> tuple[list[list[str]], int]:
    """(differences as [task, cell, column, first, second], number of values compared)."""
    differences, compared = [], 0
    for key in sorted(set(first) | set(second)):
        label = " ".join(part for part in key[1:] if part)
        if key not in first or key not in second:
            differences.append([key[0], label, "(the whole row)", "present" if key in first else "missing",
                                "present" if key in second else "missing"])
            continue
        for column in first[key].keys() | second[key].keys():
            if column in MACHINE_COLUMNS or column in IDENTITY:
                continue
            compared += 1
            if first[key].get(column) != second[key].get(column):
                differences.append([key[0], label, column, str(first[key].get(column)), str(second[key].get(column))])
    return differences, compared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--out", type=Path, help="write the markdown report here too")
    args = parser.parse_args()
    (first, first_threads), (second, second_threads) = rows_by_key(args.first), rows_by_key(args.second)
    differences, compared = compare(first, second)
    first_digests, second_digests = checkpoint_digests(args.first), checkpoint_digests(args.second)
    digest_rows = [[cell, first_digests.get(cell, "-")[:16], second_digests.get(cell, "-")[:16],
                    "yes" if first_digests.get(cell) == second_digests.get(cell) else "NO"]
                   for cell in sorted(first_digests.keys() | second_digests.keys())]
    differing_checkpoints = sum(row[3] == "NO" for row in digest_rows)
    lines = [f"# Two runs of one grid: {args.first} (torch threads {sorted(first_threads)}) and {args.second} "
             f"(torch threads {sorted(second_threads)})", "",
             "Written by `python benchmarks/compare_grid_runs.py`. Every value of every task table is compared "
             f"except this machine's speed: {', '.join(sorted(MACHINE_COLUMNS))}.", "",
             f"{len(first)} and {len(second)} (task, cell) rows; {compared} values compared; "
             f"**{len(differences)} differ**.", ""]
    if differences:
        lines += [tabulate(differences, headers=["task", "cell", "column", "first", "second"], tablefmt="github"), ""]
    lines += [f"Pruned checkpoints (sha256 of the weights files, first 16 hex digits): {len(digest_rows)} compared, "
              f"**{differing_checkpoints} differ**.", "",
              tabulate(digest_rows, headers=["cell", "first", "second", "identical"], tablefmt="github"), ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)
    sys.exit(1 if differences or differing_checkpoints else 0)


if __name__ == "__main__":
    main()
