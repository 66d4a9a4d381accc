"""Write a demo run's numbers into README.md and docs/leaderboard.md (never typed by hand).

    bash scripts/demo.sh                                   # a run: results/demo/ with command1_seconds.json
    .venv/bin/python scripts/publish_demo.py results/demo  # then this

Replaces the text between `<!-- demo:NAME:start -->` and `<!-- demo:NAME:end -->` markers: `summary` (README:
the run's summary table), `limits` (README and docs: the run's data limits, from its spec), `timing` (README and docs: the wall seconds of command 1 and of each cell's phases) and
`full` (docs: the whole rendered leaderboard, its plots copied to docs/img/). Latency and wall times are this
machine's. SparseGPT's statistics and solve are float64 and its factorisations run on one thread, so its masks do
not depend on the thread count (benchmarks/results/determinism.md).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

from tabulate import tabulate

from sparse_bench.leaderboards.render import load_grid, summary_table

REPO = Path(__file__).resolve().parents[1]
PHASES = ("prune", "load", "evaluate", "perplexity", "latency", "size")
VARIES = ("Latency columns (`ms/forward`, `tokens/s`, `peak MiB`) and times (`prune s`, seconds) are this "
          "machine's. The other numbers do not depend on the thread count (benchmarks/results/determinism.md); "
          "another CPU's fp32 kernels can still change last bits of a forward.")


def replace_between(text: str, name: str, block: str, prefix: str = "demo") -> str:
    """`text` with the lines between `<!-- PREFIX:NAME:start -->` and `<!-- PREFIX:NAME:end -->` set to `block`."""
    pattern = re.compile(rf"(<!-- {prefix}:{name}:start -->\n).*?(<!-- {prefix}:{name}:end -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"error: no <!-- {prefix}:{name}:start/end --> markers; add them where the block goes")
    return pattern.sub(lambda match: match.group(1) + block.rstrip("\n") + "\n" + match.group(2), text)


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(round(seconds % 60))} s"


def command_timing(seconds: dict[str, float]) -> str:
    return (f"Command 1 took **{minutes(seconds['total'])}** ({seconds['total']:.0f} s): set-up (venv and install) "
            f"{seconds['setup']:.0f} s, `prepare-model` {seconds['prepare_model']:.0f} s, the grid with its "
            f"rendering {seconds['grid_and_render']:.0f} s. {VARIES}")


def run_limits(spec: dict) -> str:
    """The run's limits, from its spec as grid.json records it: calibration, each task's documents, perplexity."""
    calibration, perplexity = spec["calibration"], spec["perplexity"]
    parts = [f"calibration {calibration['nsamples']} x {calibration['seqlen']} tokens of {calibration['data']}"]
    for task in spec["tasks"]:
        extra = "".join(f", {key} {value}" for key, value in task.get("gen_kwargs", {}).items())
        parts.append(f"`{task['name']}` on its first {task['limit']} documents{extra}")
    parts += [f"task settings {', '.join(f'{key} {value}' for key, value in spec.get('metadata', {}).items())}",
              f"token-level {perplexity['data']} perplexity on the first {perplexity['max_tokens']:,} test tokens"]
    return "This run's limits (from its spec): " + "; ".join(parts) + "."


def phase_table(grid) -> str:
    """Wall seconds of each phase per cell, from the cells' own `timings`."""
    cells = [(cell, grid.results[cell["cell_id"]]) for cell in grid.cells]
    rows = []
    for phase in PHASES:
        rows.append([phase] + [f"{result.timings.get(phase, 0) if result else 0:.0f}" for _, result in cells])
    rows.append(["whole cell"] + [f"{(result.seconds or 0) if result else 0:.0f}" for _, result in cells])
    labels = [cell_label_of(cell) for cell, _ in cells]
    return tabulate(rows, headers=["phase (wall s)", *labels], tablefmt="github", disable_numparse=True)


def cell_label_of(cell: dict) -> str:
    """dense, or `method 50 %` / `method 2:4` (a grid.json cell)."""
    if cell["method"] == "dense":
        return "dense"
    target = f"{cell['sparsity'] * 100:g} %" if cell["structure"] == "unstructured" else cell["structure"]
    return f"{cell['method'] or cell['recipe']} {target}"


def full_leaderboard(folder: Path, docs_img: Path) -> str:
    """The rendered leaderboard.md, headings one level down, plots copied to docs/img/leaderboard_demo_*.png."""
    text = (folder / "leaderboard.md").read_text(encoding="utf-8")
    for plot in sorted((folder / "plots").glob("*.png")):
        target = docs_img / f"leaderboard_demo_{plot.stem}.png"
        shutil.copyfile(plot, target)
        text = text.replace(f"plots/{plot.name}", f"img/{target.name}")
    return re.sub(r"^(#+) ", lambda match: "#" + match.group(1) + " ", text, flags=re.M)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, nargs="?", default=REPO / "results" / "demo")
    args = parser.parse_args()
    grid = load_grid(args.folder)
    seconds = json.loads((args.folder / "command1_seconds.json").read_text())
    readme = REPO / "README.md"
    text = replace_between(readme.read_text(encoding="utf-8"), "summary", summary_table(grid))
    text = replace_between(text, "limits", run_limits(grid.spec))
    readme.write_text(replace_between(text, "timing", command_timing(seconds)), encoding="utf-8")
    docs = REPO / "docs" / "leaderboard.md"
    text = replace_between(docs.read_text(encoding="utf-8"), "timing",
                           command_timing(seconds) + "\n\n" + phase_table(grid))
    text = replace_between(text, "limits", run_limits(grid.spec))
    docs.write_text(replace_between(text, "full", full_leaderboard(args.folder, REPO / "docs" / "img")),
                    encoding="utf-8")
    print(f"README.md and docs/leaderboard.md updated from {args.folder}")


if __name__ == "__main__":
    main()
