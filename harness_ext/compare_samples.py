"""`sparse-bench compare-samples A.jsonl B.jsonl`: two runs' per-sample outputs side by side, with their scores.

The inputs are lm-eval's per-sample files (`samples_<task>_<date>.jsonl`, written by `--log_samples`), e.g. a dense
and a pruned run of `sparsebench_billsum`. Samples are paired by `doc_id`; the pairs must be the same documents
(lm-eval's `doc_hash`). Scores are the per-sample metrics the task logged (ROUGE for Billsum), never recomputed.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from pathlib import Path
from typing import Any

import click

from .errors import UserError
from .io import read_jsonl_records

LOWER_IS_BETTER = {"bits_per_byte", "empty", "gold_nll"}  # the sparsebench per-sample metrics where less is better
# lm-eval writes samples_<task>_<date>.jsonl, the leaderboards samples_<task>.jsonl
SAMPLES_FILE_NAME = re.compile(r"^samples_(?P<task>.+?)(_\d{4}-\d{2}-\d{2}T[0-9.:-]+)?\.jsonl$")


def task_of(path: Path) -> str | None:
    """The task a samples file belongs to, from its name (None for a name lm-eval did not give)."""
    match = SAMPLES_FILE_NAME.match(Path(path).name)
    return match["task"] if match else None


def same_task(file_a: Path, file_b: Path) -> None:
    """UserError if the two files' names say they hold different tasks."""
    task_a, task_b = task_of(file_a), task_of(file_b)
    if task_a and task_b and task_a != task_b:
        raise UserError(f"{Path(file_a).name} holds task {task_a} and {Path(file_b).name} task {task_b}; compare "
                        "two runs of the same task")


def read_samples(path: Path, filter_name: str | None = None) -> dict[int, dict[str, Any]]:
    """{doc_id: sample} from an lm-eval samples file, for one filter (the file's first one by default)."""
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass the samples_<task>_<date>.jsonl files that lm-eval writes "
                        "with --log_samples")
    samples: dict[int, dict[str, Any]] = {}
    for line_number, sample in read_jsonl_records(path, hint="is this an lm-eval samples file?"):
        if "doc_id" not in sample:
            raise UserError(f"{path}, line {line_number}: no doc_id; is this an lm-eval samples file?")
        filter_name = filter_name or sample.get("filter")
        if sample.get("filter") == filter_name:
            samples[int(sample["doc_id"])] = sample
    if not samples:
        raise UserError(f"{path} holds no samples" + (f" for filter {filter_name!r}" if filter_name else ""))
    return samples


def output_text(sample: dict[str, Any]) -> str | None:
    """The generated text of a generation sample (stripped), None for likelihood tasks."""
    responses = sample.get("filtered_resps") or []
    first = responses[0] if responses else None
    return first.strip() if isinstance(first, str) else None


def scalar_metrics(sample: dict[str, Any]) -> dict[str, float]:
    """The sample's per-sample metrics that are numbers: plain ones, and `bits_per_byte` from lm-eval's
    (log-likelihood in nats, bytes) pair; other aggregation inputs (pairs for F1, AUC) are left out."""
    metrics = {}
    for name in sample.get("metrics", []):
        value = sample.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics[name] = float(value)
        elif name == "bits_per_byte" and isinstance(value, list) and len(value) == 2 and value[1]:
            metrics[name] = -value[0] / value[1] / math.log(2)
    return metrics


def shared_doc_ids(samples_a: dict[int, dict], samples_b: dict[int, dict]) -> list[int]:
    """The doc_ids both runs scored, in order; UserError unless they are the same documents (`doc_hash`)."""
    shared = sorted(set(samples_a) & set(samples_b))
    if not shared:
        raise UserError("the two files share no doc_id; compare two runs of the same task")
    for doc_id in shared:
        if samples_a[doc_id].get("doc_hash") != samples_b[doc_id].get("doc_hash"):
            raise UserError(f"doc_id {doc_id} is a different document in the two files (another task, data "
                            "or limit?); compare two runs of the same task on the same data")
    return shared


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
@click.option("--json", "as_json", is_flag=True, help="Print every pair and the means as JSON.")
def compare_samples_command(file_a: Path, file_b: Path, metric: str | None, sort: str, limit: int,
                            filter_name: str | None, width: int, max_chars: int, as_json: bool) -> None:
    """Put two runs' per-sample outputs (lm-eval --log_samples files) side by side with their scores.

    \b
    Example:
      sparse-bench eval --model hf --model_args pretrained=DENSE --tasks sparsebench_billsum --limit 16 \\
        --output_path dense/ --log_samples
      (same with --model sparse-hf ... method=magnitude,sparsity=0.5 --output_path pruned/)
      sparse-bench compare-samples dense/*/samples_sparsebench_billsum_*.jsonl \\
        pruned/*/samples_sparsebench_billsum_*.jsonl --limit 5
    """
    rows, metric = pair_samples(read_samples(file_a, filter_name), read_samples(file_b, filter_name), metric, sort)
    names = (file_a.name, file_b.name)
    if as_json:
        click.echo(json.dumps({"a": str(file_a), "b": str(file_b), "metric": metric,
                               "mean": {"a": mean_metrics(rows, "a"), "b": mean_metrics(rows, "b")},
                               "pairs": rows}, indent=2, ensure_ascii=False))
        return
    click.echo(render_text(rows[:limit], metric, names, width, max_chars))
    click.echo(summary_table(rows, names))
