"""Render an analysis: markdown tables (tabulate), a before/after comparison, and the files of `--out DIR`.

Percentages in the tables are of the weights in each row's group; the JSON (`analysis.json`) keeps exact
counts and fractions.
"""

from __future__ import annotations

import json
from pathlib import Path

from tabulate import tabulate

from ..errors import UserError
from ..io import write_json_atomic, write_text_atomic
from .stats import threshold_key

GROUP_TITLES = {"overall": "all parameters", "block_linear": "linear layers in blocks",
                "outside_blocks": "outside blocks"}


def markdown_summary(analysis: dict, title: str | None = None) -> str:
    """The analysis as markdown: overall, per module type and per layer tables, then tied/skipped notes."""
    model = analysis["model"]
    title = title or model.get("path") or model.get("architecture") or "model"
    lines = [f"# Weight magnitudes: {title}", "",
             f"{model.get('architecture') or 'unknown architecture'}, {analysis['architecture_kind']}; "
             f"dtypes: {_dtype_text(analysis['dtypes'])}; measured in {analysis['seconds']:.1f} s.", "",
             "## Overall", "", _table(analysis, {GROUP_TITLES[key]: analysis[key] for key in GROUP_TITLES}),
             "", "## Per module type", "", _table(analysis, analysis["per_module_type"]),
             "", "## Per layer (transformer block)", "",
             _table(analysis, {row["label"]: row for row in analysis["per_layer"]})]
    lines += ["", *_notes(analysis)]
    return "\n".join(lines).rstrip() + "\n"


def comparison_markdown(reference: dict, analysis: dict, labels: tuple[str, str] = ("before", "after")) -> str:
    """Side by side: for each group, the fraction below each threshold and of exact zeros, and the change."""
    if reference["thresholds"] != analysis["thresholds"]:
        raise UserError(f"cannot compare analyses with thresholds {reference['thresholds']} and "
                        f"{analysis['thresholds']}; analyse both with the same --thresholds")
    groups = {GROUP_TITLES[key]: (reference[key], analysis[key]) for key in ("overall", "block_linear")}
    for name in sorted(set(reference["per_module_type"]) & set(analysis["per_module_type"])):
        groups[name] = (reference["per_module_type"][name], analysis["per_module_type"][name])
    headers = ["group"]
    for metric in ["exact zeros"] + [f"|w|<{threshold_key(t)}" for t in analysis["thresholds"]]:
        headers += [f"{metric} {labels[0]}", f"{metric} {labels[1]}", "change"]
    rows = []
    for name, (before, after) in groups.items():
        row = [name]
        for metric in _fraction_getters(analysis["thresholds"]):
            row += [_percent(metric(before)), _percent(metric(after)), _signed_points(metric(after) - metric(before))]
        rows.append(row)
    return (f"# Before / after: {labels[0]} vs {labels[1]}\n\n"
            + tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True) + "\n")


def write_report(analysis: dict, out_dir: Path, reference: dict | None = None,
                 labels: tuple[str, str] = ("before", "after")) -> list[Path]:
    """Write analysis.json and summary.md (+ reference.json and comparison.md) under `out_dir`, atomically."""
    out_dir = Path(out_dir)
    written = [write_json_atomic(out_dir / "analysis.json", analysis)]
    markdown = markdown_summary(analysis)
    if reference is not None:
        written.append(write_json_atomic(out_dir / "reference.json", reference))
        written.append(write_text_atomic(out_dir / "comparison.md", comparison_markdown(reference, analysis, labels)))
    written.append(write_text_atomic(out_dir / "summary.md", markdown))
    return written


def load_analysis(path: Path) -> dict:
    """An analysis written by `analyze ... --out` or `--json`; UserError if the file is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read analysis {path}: {error}; give the JSON that "
                        "`sparse-bench analyze --json` wrote") from None
    if not isinstance(data, dict) or "schema_version" not in data or "overall" not in data:
        raise UserError(f"{path} is not an analysis JSON; give one written by "
                        "`sparse-bench analyze --json` or --out")
    return data


def _table(analysis: dict, groups: dict[str, dict]) -> str:
    headers = ["group", "params", "nonzero", "exact zeros"]
    headers += [f"|w|<{threshold_key(t)}" for t in analysis["thresholds"]] + ["mean |w|", "max |w|"]
    rows = [[name, f"{group['numel']:,}", f"{group['nonzero']:,}", _percent(group["zero_fraction"]),
             *[_percent(group["below"][threshold_key(t)]["fraction"]) for t in analysis["thresholds"]],
             f"{group['mean_abs']:.4g}", f"{group['max_abs']:.4g}"]
            for name, group in groups.items() if group["numel"]]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _notes(analysis: dict) -> list[str]:
    notes = []
    for tied in analysis["tied"]:
        notes.append(f"- tied: `{tied['name']}` is `{tied['tied_to']}` ({tied['numel']:,} weights, counted once)")
    if not analysis["tied"]:
        notes.append(f"- tied weights: none found ({analysis['tied_detection']})")
    if analysis["skipped"]:
        names = ", ".join(f"`{item['name']}` ({item['reason']})" for item in analysis["skipped"][:5])
        more = f" and {len(analysis['skipped']) - 5} more" if len(analysis["skipped"]) > 5 else ""
        notes.append(f"- not counted: {names}{more}")
    if analysis["missing"]:
        notes.append(f"- MISSING from the checkpoint ({len(analysis['missing'])} parameters, e.g. "
                     f"`{analysis['missing'][0]}`): loading it may initialise them randomly")
    nonfinite = analysis["overall"]["nonfinite"]
    if nonfinite:
        notes.append(f"- {nonfinite:,} weights are NaN or infinite")
    return notes


def _fraction_getters(thresholds: list[float]) -> list:
    getters = [lambda group: group["zero_fraction"]]
    for threshold in thresholds:
        getters.append(lambda group, key=threshold_key(threshold): group["below"][key]["fraction"])
    return getters


def _dtype_text(dtypes: dict[str, int]) -> str:
    return ", ".join(f"{name} ({count:,})" for name, count in dtypes.items())


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.2f} %"


def _signed_points(delta: float) -> str:
    return f"{100 * delta:+.2f} pt"
