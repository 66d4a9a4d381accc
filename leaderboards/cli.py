"""`sparse-bench leaderboard run|status|render|cells`: run a grid spec resumably (here or as a Slurm job array),
see where its cells stand, and render its leaderboards."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..harness_ext.errors import UserError
from .cells import expand_cells, parse_shard, shard_cells
from .spec_parser import load_spec

SPECS_DIR = Path(__file__).resolve().parent / "specs"


def resolve_spec(spec: str) -> Path:
    """A spec path, or the name of a shipped spec (`demo`, `mrpc_global_magnitude`, ...)."""
    path = Path(spec)
    if not path.exists() and (SPECS_DIR / f"{spec}.yaml").is_file():
        return SPECS_DIR / f"{spec}.yaml"
    return path


@click.group("leaderboard", context_settings={"help_option_names": ["-h", "--help"]})
def leaderboard_group() -> None:
    """Run a model x method x sparsity x dtype grid through lm-eval and render leaderboards.

    \b
    Example (the default demo on SmolLM2-135M, ~10 min on 2 CPU cores):
      sparse-bench leaderboard run demo --out results/demo
      sparse-bench leaderboard render results/demo
    Shipped specs: demo, mrpc_global_magnitude, billsum_methods, dtype_sweep (see docs/leaderboard.md).
    """


@leaderboard_group.command("run")
@click.argument("spec")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: grid.json, cells/*.json (one per cell), later leaderboard.md and plots/.")
@click.option("--shard", default="0/1", show_default=True,
              help="i/N: run only shard i (0-based) of N, e.g. `--shard $SLURM_ARRAY_TASK_ID/4`.")
@click.option("--cache", "cache_root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Pruned-model cache (default: $SPARSE_BENCH_HOME/pruned, i.e. ~/.cache/sparse_bench/pruned).")
@click.option("--retry-failed/--skip-failed", default=True, show_default=True,
              help="Run cells that failed in an earlier run again, or leave them failed.")
@click.option("--render/--no-render", "render_after", default=True, show_default=True,
              help="Render leaderboard.md and plots after the run.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch CPU threads (default: torch's choice, one per core). On a machine shared with other "
                   "jobs, fewer threads than cores can be much faster; the leaderboard header records it.")
@click.option("--executor", type=click.Choice(["local", "slurm"]), default="local", show_default=True,
              help="local: run the cells in this process. slurm: submit one Slurm array task per group of cells "
                   "sharing a pruned model (through submitit); --out must be on a filesystem the nodes share.")
@click.option("--partition", default=None, help="[slurm] Partition to submit to (default: the cluster's default).")
@click.option("--gpus-per-task", type=click.IntRange(min=0), default=None, help="[slurm] GPUs per array task [0].")
@click.option("--cpus-per-task", type=click.IntRange(min=1), default=None,
              help="[slurm] CPU cores per array task, also its torch threads [1].")
@click.option("--mem", "mem_gb", type=click.FloatRange(min=0, min_open=True), default=None,
              help="[slurm] Memory per array task in GB [8].")
@click.option("--time", "time_min", type=click.IntRange(min=1), default=None,
              help="[slurm] Time limit per array task in minutes [60].")
@click.option("--array-parallelism", type=click.IntRange(min=1), default=None,
              help="[slurm] At most this many array tasks run at once [16].")
@click.option("--wait/--no-wait", default=False, show_default=True,
              help="[slurm] Wait until every submitted task ended, then render (default: submit and return).")
def run_command(spec: str, out_dir: Path, shard: str, cache_root: Path | None, retry_failed: bool,
                render_after: bool, threads: int | None, executor: str, wait: bool, **slurm: object) -> None:
    """Run every cell of the grid SPEC (a YAML file or a shipped spec name) into --out.

    Finished cells are skipped, so re-running resumes; each phase of a cell (prune, load, evaluate,
    perplexity, latency, size) is recorded with its result or its failure reason, the grid goes on, and a
    re-run retries only the phases that failed. Exit status 1 if a cell or a phase failed. With --executor
    slurm, only the cells that are neither done nor queued or running are submitted; `leaderboard status OUT`
    shows where they stand.

    \b
    Example:
      sparse-bench leaderboard run demo --out results/demo
      sparse-bench leaderboard run my_grid.yaml --out results/grid --shard 0/4   # one of 4 machines
      sparse-bench leaderboard run my_grid.yaml --out /shared/grid --executor slurm --partition gpu \\
          --gpus-per-task 1 --cpus-per-task 8 --mem 64 --time 120
    """
    grid = load_spec(resolve_spec(spec))  # a bad spec fails before the runner's heavy imports (torch: ~3 s)
    if executor == "slurm":
        _run_on_slurm(grid, out_dir, shard, cache_root, retry_failed, render_after, threads, wait, slurm)
        return
    given = [option_name(name) for name, value in slurm.items() if value is not None]
    if given or wait:
        raise UserError(f"{(given or ['--wait'])[0]} applies to --executor slurm only; add --executor slurm or "
                        "leave it out")
    from .runner import run_grid

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    summary = run_grid(grid, out_dir, parse_shard(shard), cache_root, retry_failed)
    if render_after:
        _render_summary(out_dir)
    click.echo(f"{len(summary.ok)} cells ran, {len(summary.done)} were already done, {len(summary.partial)} "
               f"kept their results but a phase failed, {len(summary.failed)} failed")
    if summary.failed or summary.partial:
        raise SystemExit(1)


def _render_summary(out_dir: Path) -> None:
    """Render OUT_DIR (markdown and plots), print the summary table and the leaderboard's path."""
    from .grid_results import load_grid
    from .render import summary_table

    _render(out_dir, "md", plots=True, echo=False)
    click.echo("\n" + summary_table(load_grid(out_dir)) + "\n")
    click.echo(f"full leaderboard (every task's metrics, plots, timings): {out_dir / 'leaderboard.md'}")


def option_name(parameter: str) -> str:
    """The command-line spelling (`--mem`) of the current command's parameter `parameter` (`mem_gb`)."""
    command = click.get_current_context().command
    return next(p.opts[0] for p in command.params if p.name == parameter)


def _run_on_slurm(grid, out_dir: Path, shard: str, cache_root: Path | None, retry_failed: bool,
                  render_after: bool, threads: int | None, wait: bool, slurm: dict) -> None:
    from .executor import run_on_slurm
    from .slurm import SlurmOptions
    from .status import FAILED, PARTIAL, counts

    if shard != "0/1":
        raise UserError("--shard applies to --executor local; with --executor slurm every group of cells is "
                        "its own array task")
    if threads is not None:
        raise UserError("--threads applies to --executor local; Slurm tasks use --cpus-per-task threads")
    options = SlurmOptions(**{name: value for name, value in slurm.items() if value is not None})
    run = run_on_slurm(grid, out_dir, options, cache_root and cache_root.resolve(), retry_failed, wait, click.echo)
    if not wait:
        click.echo(f"follow it with: sparse-bench leaderboard status {out_dir}")
        return
    if render_after:
        _render_summary(out_dir)
    click.echo(", ".join(f"{n} {state}" for state, n in counts(run.states).items() if n))
    if any(s.state in (FAILED, PARTIAL) for s in run.states):
        raise SystemExit(1)


@leaderboard_group.command("status")
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the states as JSON.")
def status_command(out_dir: Path, as_json: bool) -> None:
    """Where each cell of OUT_DIR stands: done, queued, running, partial (a phase failed), failed (with the
    reason) or not run, with the Slurm job id of cells submitted by `run --executor slurm`.

    \b
    Example:
      sparse-bench leaderboard status results/grid
    """
    from dataclasses import asdict

    from tabulate import tabulate

    from .grid_results import load_grid
    from .status import cell_states, counts

    states = cell_states(out_dir, [cell["cell_id"] for cell in load_grid(out_dir).cells])
    if as_json:
        click.echo(json.dumps([asdict(s) for s in states], indent=2))
        return
    rows = [{"cell": s.cell_id, "state": s.state, "slurm job": s.job or "-", "reason": s.reason or ""}
            for s in states]
    click.echo(tabulate(rows, headers="keys", tablefmt="simple"))
    click.echo(", ".join(f"{n} {state}" for state, n in counts(states).items() if n))


@leaderboard_group.command("render")
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--format", "fmt_name", type=click.Choice(["md", "csv", "json"]), default="md", show_default=True)
@click.option("--plots/--no-plots", default=True, show_default=True, help="Write OUT_DIR/plots/*.png too.")
def render_command(out_dir: Path, fmt_name: str, plots: bool) -> None:
    """Print the leaderboards of OUT_DIR (every shard's cells/*.json) and write OUT_DIR/leaderboard.FORMAT.

    \b
    Example:
      sparse-bench leaderboard render results/demo
      sparse-bench leaderboard render results/demo --format csv > demo.csv
    """
    _render(out_dir, fmt_name, plots, echo=True)


def _render(out_dir: Path, fmt_name: str, plots: bool, echo: bool) -> None:
    from .grid_results import load_grid
    from .render import render

    plot_paths = None
    if plots:
        from .plots import make_plots

        plot_paths = make_plots(load_grid(out_dir))
    text, _ = render(out_dir, fmt_name, plot_paths)
    if echo:
        click.echo(text, nl=False)


@leaderboard_group.command("cells")
@click.argument("spec")
@click.option("--shard", default="0/1", show_default=True, help="i/N: list only shard i of N.")
@click.option("--json", "as_json", is_flag=True, help="Print the cells as JSON.")
def cells_command(spec: str, shard: str, as_json: bool) -> None:
    """List the cells of SPEC (validating it) without running anything.

    \b
    Example:
      sparse-bench leaderboard cells demo
      sparse-bench leaderboard cells my_grid.yaml --shard 1/4 --json
    """
    cells = shard_cells(expand_cells(load_spec(resolve_spec(spec))), *parse_shard(shard))
    if as_json:
        click.echo(json.dumps([{"cell_id": c.cell_id, **c.describe()} for c in cells], indent=2))
        return
    for cell in cells:
        click.echo(f"{cell.cell_id}\t{cell.label}")
