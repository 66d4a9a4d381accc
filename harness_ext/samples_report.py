"""Error analysis of two runs' paired samples: error categories per sample and side, answer flips, and a
markdown report with the largest regressions side by side (`sparse-bench compare-samples --report`).

Rows are `compare_samples.pair_samples` rows ({doc_id, reference, a, b}, worst loss first); this module adds
`categories` (a list of `error_categories.CATEGORIES`) to each side of generation rows.
"""

from __future__ import annotations

from typing import Any

from .error_categories import CATEGORIES, MEANING, TokenCounter, categorize_sample, count_categories, labels
from .flips import DEFAULT_CORRECTNESS_METRIC, count_flips


def annotate_categories(rows: list[dict[str, Any]], samples: tuple[dict[int, dict], dict[int, dict]],
                        count_tokens: TokenCounter | None = None) -> dict[str, dict[str, int | None]] | None:
    """Add `categories` to both sides of every row; returns {"a": counts, "b": counts} (see
    `count_categories`), or None for likelihood tasks (no generated text)."""
    if not rows or rows[0]["a"]["output"] is None:
        return None
    counts = {}
    for side, side_samples in zip(("a", "b"), samples):
        found = [categorize_sample(side_samples[row["doc_id"]], count_tokens) for row in rows]
        for row, flags in zip(rows, found):
            row[side]["categories"] = labels(flags)
        counts[side] = count_categories(found)
    return counts


def flips_if_scored(samples: tuple[dict[int, dict], dict[int, dict]],
                    names: tuple[str, str]) -> dict[str, Any] | None:
    """Answer flips when every sample is scored right/wrong by `acc` (multiple-choice and yes/no tasks), else None."""
    if not all(DEFAULT_CORRECTNESS_METRIC in sample.get("metrics", []) for side in samples for sample in side.values()):
        return None
    return count_flips(*samples, DEFAULT_CORRECTNESS_METRIC, names)


def category_table(counts: dict[str, dict[str, int | None]], names: tuple[str, str], documents: int) -> list[list]:
    """Rows [category, A count, B count, meaning]; `-` where a category could not be checked."""
    def shown(value: int | None) -> str:
        return "-" if value is None else f"{value} / {documents}"

    return [[category, shown(counts["a"][category]), shown(counts["b"][category]), MEANING.get(category, "")]
            for category in (*CATEGORIES, "ok")]


def _cell(text: str | None, max_chars: int) -> str:
    """Text for a markdown table cell: cut, `|` escaped, newlines as <br>."""
    if text is None:
        return "(no text: a likelihood task)"
    shown = text if len(text) <= max_chars else text[:max_chars] + " [...]"
    return (shown or "(empty)").replace("|", "\\|").replace("\n", "<br>")


def _markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(str(value) for value in row) + " |" for row in rows])


def render_report(rows: list[dict[str, Any]], metric: str | None, names: tuple[str, str],
                  counts: dict | None, flips: dict | None, means: tuple[dict, dict], limit: int,
                  max_chars: int, title: str = "") -> str:
    """The markdown error-analysis report: means, error categories, flips, then the `limit` largest regressions
    (rows are sorted worst first) with reference, A and B side by side."""
    parts = [f"# {title or 'Error analysis'}", "",
             f"A = `{names[0]}`, B = `{names[1]}`; {len(rows)} documents both runs scored.", "",
             "## Means", "",
             _markdown_table(["metric", "A", "B", "B - A"],
                             [[name, f"{means[0][name]:.4f}", f"{means[1][name]:.4f}",
                               f"{means[1][name] - means[0][name]:+.4f}"] for name in means[0] if name in means[1]])]
    if counts is not None:
        parts += ["", "## Error categories", "",
                  "Samples per category (a sample can be in several; `-`: not checked, its input is missing).", "",
                  _markdown_table(["category", "A", "B", "meaning"], category_table(counts, names, len(rows)))]
    if flips is not None:
        parts += ["", "## Answer flips", "", (f"Right/wrong by `{flips['metric']}`, A -> B over "
                  f"{flips['documents']} documents: **{flips['right_to_wrong']} right -> wrong**, "
                  f"**{flips['wrong_to_right']} wrong -> right** (flip rate {flips['flip_rate']:.3f}); "
                  f"both right {flips['both_right']}, both wrong {flips['both_wrong']}.")]
    if metric is not None and limit and rows[0]["a"]["output"] is not None:
        parts += ["", f"## Largest regressions by {metric}", ""]
        for row in rows[:limit]:
            score_a, score_b = row["a"]["metrics"].get(metric), row["b"]["metrics"].get(metric)
            parts += [(f"### doc {row['doc_id']}: {metric} A {score_a:.3f}, B {score_b:.3f} "
                       f"({score_b - score_a:+.3f})"), "",
                      _markdown_table(["reference", "A", "B"],
                                      [[_cell(row["reference"], max_chars), _cell(row["a"]["output"], max_chars),
                                        _cell(row["b"]["output"], max_chars)],
                                       ["", _tags(row["a"]), _tags(row["b"])]]), ""]
    return "\n".join(parts).rstrip() + "\n"


def _tags(side: dict[str, Any]) -> str:
    return "categories: " + (", ".join(f"`{name}`" for name in side.get("categories", [])) or "none")


__all__ = ["annotate_categories", "category_table", "flips_if_scored", "render_report"]
