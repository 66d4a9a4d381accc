"""`sparse-bench size DIR [--json]`: dense, compressed and lower-bound bytes of a checkpoint."""

from __future__ import annotations

import json

import click

_MIB = 1 << 20


def _mib(nbytes: float) -> str:
    return f"{nbytes / _MIB:,.2f} MiB"


def format_sizes(figures: dict) -> str:
    """A human-readable table of `checkpoint_sizes` figures."""
    from tabulate import tabulate

    head = (f"{figures['source']} ({figures.get('save_format', 'in-memory')}, stored as {figures['dtype']}): "
            f"{figures['nonzero_parameters']:,} of {figures['float_parameters']:,} weights non-zero "
            f"(sparsity {figures['sparsity']:.2%}); encodings {figures['encodings']}")
    rows = []
    for dtype, row in figures["by_dtype"].items():
        rows.append([dtype, _mib(row["dense_bytes"]), _mib(row["compressed_bytes"]), _mib(row["bound_bytes"]),
                     f"{row['dense_bytes'] / row['compressed_bytes']:.2f}x",
                     f"{row['compressed_bytes'] / row['bound_bytes'] - 1:+.2%}" if row["bound_bytes"] else "-"])
    table = tabulate(rows, headers=["dtype", "dense", "compressed", "bound", "dense/compressed",
                                    "compressed vs bound"], tablefmt="github", disable_numparse=True)
    files = ", ".join(f"{name} {_mib(size)}" for name, size in figures.get("files", {}).items())
    return "\n".join([head, table] + ([f"files on disk: {files}"] if files else []))


@click.command("size")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def size_command(directory: str, as_json: bool) -> None:
    """Dense bytes at float32/float16/bfloat16, compressed bytes, the lower bound and the ratios of DIRECTORY.

    The bound is non-zero values at the dtype's width plus the mask's information content; the same figures
    the leaderboard's size columns use. Works on dense and compressed sparse-bench checkpoints and on any
    Hugging Face safetensors directory.

    \b
    Example:
      sparse-bench size runs/smollm2-wanda-50 --json
    """
    from . import checkpoint_sizes

    figures = checkpoint_sizes(directory)
    click.echo(json.dumps(figures, indent=2, default=str) if as_json else format_sizes(figures))
