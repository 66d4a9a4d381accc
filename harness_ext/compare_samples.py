"""`sparse-bench compare-samples A.jsonl B.jsonl`: two runs' per-sample outputs side by side, with their scores.

The inputs are lm-eval's per-sample files (`samples_<task>_<date>.jsonl`, written by `--log_samples`), e.g. a dense
and a pruned run of `sparsebench_billsum`. Samples are paired by `doc_id`; the pairs must be the same documents
(lm-eval's `doc_hash`). Scores are the per-sample metrics the task logged (ROUGE for Billsum), never recomputed.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import click

from .errors import UserError
from .io import write_text_atomic
from .samples import output_text, read_samples, same_task, scalar_metrics, shared_doc_ids
from .samples_report import annotate_categories, category_table, flips_if_scored, render_report

# the sparsebench per-sample metrics where less is better
LOWER_IS_BETTER = {"bits_per_byte", "empty", "gold_nll", "repeated_4gram"}


def pair_samples(samples_a: dict[int, dict], samples_b: dict[int, dict], metric: str | None,
                 sort: str) -> tuple[list[dict[str, Any]], str | None]:
    """Rows {doc_id, reference, a, b} for the documents both runs scored, and the metric used to sort them."""
    shared = shared_doc_ids(samples_a, samples_b)
    rows = [{"doc_id": doc_id, "reference": str(samples_a[doc_id].get("target", "")),
             "a": {"output": output_text(samples_a[doc_id]), "metrics": scalar_metrics(samples_a[doc_id])},
             "b": {"output": output_text(samples_b[doc_id]), "metrics": scalar_metrics(samples_b[doc_id])}}
            for doc_id in shared]
    common = [name for name in rows[0]["a"]["metrics"] if name in rows[0]["b"]["metrics"]]
    if metric is not None and metric not in common:
        raise UserError(f"no per-sample metric {metric!r} in both files; they have: {', '.join(common) or 'none'}")
    metric = metric or (common[0] if common else None)
    if sort == "drop" and metric in LOWER_IS_BETTER:  # the largest rise is the worst loss
        rows.sort(key=lambda row: row["a"]["metrics"][metric] - row["b"]["metrics"][metric])
    elif sort == "drop" and metric is not None:
        rows.sort(key=lambda row: row["b"]["metrics"][metric] - row["a"]["metrics"][metric])
    return rows, metric


def mean_metrics(rows: list[dict[str, Any]], side: str) -> dict[str, float]:
    names = rows[0][side]["metrics"]
    return {name: sum(row[side]["metrics"][name] for row in rows) / len(rows) for name in names}


def _block(label: str, text: str | None, width: int, max_chars: int) -> str:
    if text is None:
        return f"{label}: (no text: a likelihood task)"
    shown = text if len(text) <= max_chars else text[:max_chars] + " [...]"
    return textwrap.fill(shown or "(empty)", width=width, initial_indent=f"{label}: ", subsequent_indent="    ")


def render_text(rows: list[dict[str, Any]], metric: str | None, names: tuple[str, str], width: int,
                max_chars: int) -> str:
    parts = []
    for row in rows:
        score_a, score_b = (row[side]["metrics"].get(metric) for side in ("a", "b")) if metric else (None, None)
        header = f"== doc {row['doc_id']}"
        if score_a is not None and score_b is not None:
            header += f"  {metric}: A {score_a:.3f}  B {score_b:.3f}  (B - A {score_b - score_a:+.3f})"
        parts += [header, _block("reference", row["reference"], width, max_chars),
                  _block(f"A {names[0]}", row["a"]["output"], width, max_chars),
                  _block(f"B {names[1]}", row["b"]["output"], width, max_chars), ""]
    return "\n".join(parts)


def summary_table(all_rows: list[dict[str, Any]], names: tuple[str, str]) -> str:
    from tabulate import tabulate

    means_a, means_b = mean_metrics(all_rows, "a"), mean_metrics(all_rows, "b")
    def worse(name: str, row: dict) -> bool:
        a, b = row["a"]["metrics"][name], row["b"]["metrics"][name]
        return b > a if name in LOWER_IS_BETTER else b < a

    table = [[name, means_a[name], means_b[name], means_b[name] - means_a[name],
              sum(worse(name, row) for row in all_rows)] for name in means_a if name in means_b]
    return (f"unweighted mean over the {len(all_rows)} documents both runs scored (A = {names[0]}, "
            f"B = {names[1]}):\n"
            + tabulate(table, headers=["metric", "A", "B", "B - A", "docs B worse"], floatfmt=".4f"))


def token_counter(name: str | None):
    """A function text -> number of tokens for the tokenizer `name` (a path, hub id or short name), or None."""
    if name is None:
        return None
    from transformers import AutoTokenizer

    from .models import find_or_prepare_model

    try:
        tokenizer = AutoTokenizer.from_pretrained(find_or_prepare_model(name))
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load the tokenizer {name!r} ({str(error).splitlines()[0]}); pass the evaluated "
                        "model's directory or hub id to --tokenizer") from None
    return lambda text: len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def compare(file_a: Path, file_b: Path, metric: str | None = None, sort: str = "drop",
            filter_name: str | None = None, tokenizer: str | None = None) -> dict[str, Any]:
    """Everything compare-samples shows: {"metric", "pairs" (rows with error categories), "mean", "categories"
    (counts per side, None for likelihood tasks), "flips" (None unless samples are scored by acc)}."""
    same_task(file_a, file_b)
    samples = (read_samples(file_a, filter_name), read_samples(file_b, filter_name))
    rows, metric = pair_samples(*samples, metric, sort)
    paired = tuple({row["doc_id"]: side[row["doc_id"]] for row in rows} for side in samples)
    return {"a": str(file_a), "b": str(file_b), "metric": metric,
            "mean": {"a": mean_metrics(rows, "a"), "b": mean_metrics(rows, "b")},
            "categories": annotate_categories(rows, paired, token_counter(tokenizer)),
            "flips": flips_if_scored(paired, (str(file_a), str(file_b))), "pairs": rows}


def render_analysis(result: dict[str, Any], names: tuple[str, str]) -> str:
    """Text tables of the error categories and the answer flips (empty for neither)."""
    from tabulate import tabulate

    parts = []
    if result["categories"] is not None:
        table = category_table(result["categories"], names, len(result["pairs"]))
        parts.append("error categories (samples in each; '-': not checked):\n"
                     + tabulate(table, headers=["category", "A", "B", "meaning"]))
    flips = result["flips"]
    if flips is not None:
        parts.append(f"answer flips A -> B by {flips['metric']} over {flips['documents']} documents: "
                     f"{flips['right_to_wrong']} right -> wrong, {flips['wrong_to_right']} wrong -> right "
                     f"(flip rate {flips['flip_rate']:.3f})")
    return "\n\n".join(parts)


@click.command("compare-samples")
@click.argument("file_a", type=click.Path(path_type=Path))
@click.argument("file_b", type=click.Path(path_type=Path))
@click.option("--metric", help="Per-sample metric to show and sort by (default: the task's first, rouge1 for "
                               "Billsum).")
@click.option("--sort", type=click.Choice(["drop", "doc"]), default="drop", show_default=True,
              help="drop: largest B - A loss first; doc: document order.")
@click.option("--limit", type=click.IntRange(min=0), default=10, show_default=True,
              help="Pairs to print (the summary covers all).")
@click.option("--filter", "filter_name", help="lm-eval filter to read (default: each file's first).")
@click.option("--width", type=click.IntRange(min=40), default=100, show_default=True, help="Text width.")
@click.option("--max-chars", type=click.IntRange(min=20), default=600, show_default=True,
              help="Characters of each text to print.")
@click.option("--tokenizer", help="The evaluated models' tokenizer (path, hub id or smollm2-135m): enables the "
                                  "max_tokens error category.")
@click.option("--report", "report_path", type=click.Path(path_type=Path),
              help="Also write a markdown error-analysis report (categories, flips, the --limit largest "
                   "regressions side by side) to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print every pair, the means, categories and flips as JSON.")
def compare_samples_command(file_a: Path, file_b: Path, metric: str | None, sort: str, limit: int,
                            filter_name: str | None, width: int, max_chars: int, tokenizer: str | None,
                            report_path: Path | None, as_json: bool) -> None:
    """Put two runs' per-sample outputs (lm-eval --log_samples files) side by side with their scores, error
    categories (generation tasks) and answer flips (tasks scored by acc).

    \b
    Example:
      sparse-bench eval --model hf --model_args pretrained=DENSE --tasks sparsebench_billsum --limit 16 \\
        --output_path dense/ --log_samples
      (same with --model sparse-hf ... method=magnitude,sparsity=0.5 --output_path pruned/)
      sparse-bench compare-samples dense/*/samples_sparsebench_billsum_*.jsonl \\
        pruned/*/samples_sparsebench_billsum_*.jsonl --limit 5 --report report.md
    """
    result = compare(file_a, file_b, metric, sort, filter_name, tokenizer)
    rows, metric, names = result["pairs"], result["metric"], (file_a.name, file_b.name)
    if report_path is not None:
        write_text_atomic(report_path, render_report(rows, metric, names, result["categories"], result["flips"],
                                                     (result["mean"]["a"], result["mean"]["b"]), limit, max_chars,
                                                     title=f"{file_a.name} vs {file_b.name}"))
    if as_json:
        click.echo(json.dumps(result, indent=2, ensure_ascii=False))
        return
    click.echo(render_text(rows[:limit], metric, names, width, max_chars))
    click.echo(summary_table(rows, names))
    analysis = render_analysis(result, names)
    if analysis:
        click.echo("\n" + analysis)
