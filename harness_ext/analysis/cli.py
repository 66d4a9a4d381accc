"""`sparse-bench analyze MODEL`: how many weights are near zero, overall, per block and per module type."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .magnitude_counts import DEFAULT_THRESHOLDS, analyze, parse_thresholds
from .report import comparison_markdown, load_analysis, markdown_summary, write_report


@click.command("analyze")
@click.argument("model")
@click.option("--thresholds", default=",".join(map(str, DEFAULT_THRESHOLDS)), show_default=True,
              help="Comma-separated |w| cut-offs; the fraction of |w| below each is reported.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write analysis.json, summary.md and PNG plots (histograms, per-block bands) here.")
@click.option("--json", "as_json", is_flag=True, help="Print the analysis as JSON instead of markdown.")
@click.option("--compare", "reference", default=None, metavar="OTHER",
              help="A model (e.g. the dense one before pruning) or an analysis JSON to compare with: "
                   "adds a before/after table and overlay plots.")
@click.option("--progress/--no-progress", default=None,
              help="Show a progress bar over the weights (default: when stderr is a terminal).")
def analyze_command(model: str, thresholds: str, out_dir: Path | None, as_json: bool, reference: str | None,
                    progress: bool | None) -> None:
    """Measure weight magnitudes of MODEL: a checkpoint directory, a .safetensors file, a short name
    (smollm2-135m) or a hub id in the local cache. Reads one tensor slice at a time, so models larger
    than memory work.

    \b
    Examples:
      sparse-bench analyze smollm2-135m
      sparse-bench analyze ./pruned --thresholds 0.001,0.01,0.1 --out analysis/ --compare smollm2-135m
      sparse-bench analyze ./pruned --json | jq '.block_linear.below["0.01"].fraction'
    """
    cutoffs = parse_thresholds(thresholds)
    show_progress = sys.stderr.isatty() if progress is None else progress
    analysis = analyze(model, cutoffs, progress=show_progress)
    reference_analysis, labels = None, _labels(reference, model)
    if reference is not None:
        reference_analysis = (load_analysis(Path(reference)) if reference.endswith(".json")
                              else analyze(reference, cutoffs, progress=show_progress))
    if out_dir is not None:
        from .plots import write_plots  # matplotlib only when plots are asked for

        written = write_report(analysis, out_dir, reference_analysis, labels)
        written += write_plots(analysis, out_dir, reference_analysis, labels)
        click.echo(f"wrote {len(written)} files to {out_dir}: {', '.join(path.name for path in written)}",
                   err=True)
    if as_json:
        printed = analysis if reference_analysis is None else {**analysis, "reference": reference_analysis}
        click.echo(json.dumps(printed, indent=2))
        return
    click.echo(markdown_summary(analysis, title=model))
    if reference_analysis is not None:
        click.echo(comparison_markdown(reference_analysis, analysis, labels))


def _labels(reference: str | None, model: str) -> tuple[str, str]:
    """Short plot/table labels for (reference, model): their base names, or before/after if those clash."""
    if reference is None:
        return "before", "after"
    names = (Path(reference).name or reference, Path(model).name or model)
    return names if names[0] != names[1] else ("before", "after")
