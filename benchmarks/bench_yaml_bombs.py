"""Time to refuse a YAML alias bomb through every command that reads user YAML, each in a fresh process.

Inputs: the nine-lists-of-nine-aliases bomb (~390 million leaf references in 1 KB), a 2-level one (1,000 x
1,000) and a 12-level one (9^12), plus a control recipe with a YAML syntax error on its last line, refused at the
same step. Each (command, input) runs `--repeats` times; the table gives the median wall seconds (process
start-up included), the ratio to the control (1.0 = the bomb costs nothing beyond reading a bad file) and the
in-process load time of each file.

    python benchmarks/bench_yaml_bombs.py                      # recipe validate, prune --recipe, grid spec
    python benchmarks/bench_yaml_bombs.py --lm-eval --out benchmarks/results/yaml_bombs.md   # + plain lm_eval
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fuzzing import bomb_text

from sparse_bench.harness_ext.errors import UserError
from sparse_bench.harness_ext.recipes.yaml_loader import load_yaml

BOMBS = {"bomb 9 x 9": (9, 9), "bomb 2 x 1000": (2, 1000), "bomb 12 x 9": (12, 9)}
RECIPE_HEAD = "modifiers:\n  - !GMPruningModifier {final_sparsity: 0.5, params: __ALL_PRUNABLE__}\n"


def write_inputs(folder: Path) -> dict[str, Path]:
    paths = {"control (syntax error)": folder / "control.yaml"}
    paths["control (syntax error)"].write_text(RECIPE_HEAD + "broken: [unclosed\n")
    for label, (levels, width) in BOMBS.items():
        paths[label] = folder / f"{label.replace(' ', '_')}.yaml"
        paths[label].write_text(RECIPE_HEAD + bomb_text(levels, width))
    return paths


def commands(recipe: Path, folder: Path, lm_eval: bool) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "sparse_bench.harness_ext.cli"]
    spec = folder / f"grid_{recipe.stem}.yaml"
    spec.write_text(f"models: [smollm2-135m]\nmethods: [{{recipe: {recipe.name}}}]\ntasks: [sparsebench_mrpc]\n")
    found = {"recipe validate": [*cli, "recipe", "validate", str(recipe)],
             "prune --recipe": [*cli, "prune", "smollm2-135m", "--recipe", str(recipe), "--out", str(folder / "o")],
             "leaderboard run (spec names it)": [*cli, "leaderboard", "run", str(spec), "--out", str(folder / "g")]}
    if lm_eval:
        found["lm_eval --model_args recipe="] = [
            str(Path(sys.executable).with_name("lm_eval")), "--model", "sparse-hf", "--model_args",
            f"pretrained=smollm2-135m,recipe={recipe}", "--tasks", "sparsebench_mrpc", "--device", "cpu"]
    return found


def run(command: list[str], repeats: int) -> tuple[float, int, str]:
    """(median wall seconds, exit status, last stderr line) of `repeats` fresh runs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        times.append(time.perf_counter() - start)
    last = (done.stderr.strip().splitlines() or [""])[-1]
    return statistics.median(times), done.returncode, last


def load_seconds(path: Path) -> float:
    start = time.perf_counter()
    try:
        load_yaml(path)
    except UserError:
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lm-eval", action="store_true", help="also the plain lm_eval command (~30 s a run)")
    parser.add_argument("--out", type=Path, help="write the table (markdown) here too")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        inputs = write_inputs(folder)
        for label, path in inputs.items():
            for name, command in commands(path, folder, args.lm_eval).items():
                seconds, status, last = run(command, 1 if name.startswith("lm_eval") else args.repeats)
                rows.append({"command": name, "input": label, "bytes": path.stat().st_size, "exit": status,
                             "wall s": seconds, "load_yaml ms": 1000 * load_seconds(path),
                             "one line": last.startswith("error: ") and "Traceback" not in last,
                             "message": last[:90]})
    control = {row["command"]: row["wall s"] for row in rows if row["input"].startswith("control")}
    for row in rows:
        row["vs control"] = row["wall s"] / control[row["command"]]
    table = tabulate(rows, headers="keys", tablefmt="github", floatfmt=".3g")
    print(table)
    if args.out:
        args.out.write_text(f"# {__doc__.splitlines()[0]}\n\n`python benchmarks/bench_yaml_bombs.py "
                            f"{' '.join(sys.argv[1:])}` (median of {args.repeats} fresh processes; lm_eval: 1)\n\n"
                            f"{table}\n")


if __name__ == "__main__":
    main()
