"""PNG plots of analyses (matplotlib, Agg backend: no display needed).

- `plot_histograms({label: analysis, ...}, out_dir)`: the |w| distribution on a linear and on a log axis, one
  line per analysis (one line: a single model; two: before/after pruning), thresholds as dashed lines.
- `plot_bands(analysis, path, by="layer" | "module_type")`: stacked bars of the threshold bands
  (exact zero, 0 < |w| < t1, t1 <= |w| < t2, ..., |w| >= t_last) per block or per module type.
- `plot_layer_comparison({label: analysis, ...}, path)`: per block, the fraction below each threshold.
- `write_plots(analysis, out_dir, reference=None)`: all of the above that apply; returns the PNG paths.

Histograms are the fixed log-bin counts of the analysis (see stats.py); the linear-axis histogram re-bins them
(uniformly within a log bin) onto uniform bins up to the 99.5th percentile of |w|, exact zeros in its first bin.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..io import write_figure_atomic  # noqa: E402
from .stats import histogram_counts, histogram_edges, threshold_key  # noqa: E402

LINEAR_BINS = 100
LINEAR_QUANTILE = 0.995


def write_plots(analysis: dict, out_dir: Path, reference: dict | None = None,
                labels: tuple[str, str] = ("before", "after")) -> list[Path]:
    """Write every plot for one analysis (+ overlays against `reference` when given) under `out_dir`."""
    out_dir = Path(out_dir)
    single = {labels[1] if reference is not None else _model_label(analysis): analysis}
    written = plot_histograms(single, out_dir, prefix="histogram")
    if analysis["per_layer"]:
        written.append(plot_bands(analysis, out_dir / "layer_bands.png", by="layer"))
    written.append(plot_bands(analysis, out_dir / "module_type_bands.png", by="module_type"))
    if reference is not None:
        pair = {labels[0]: reference, labels[1]: analysis}
        written += plot_histograms(pair, out_dir, prefix="compare_histogram")
        if analysis["per_layer"] and reference["per_layer"]:
            written.append(plot_layer_comparison(pair, out_dir / "compare_layers.png"))
    return written


def plot_histograms(analyses: dict[str, dict], out_dir: Path, prefix: str = "histogram",
                    group: str = "overall") -> list[Path]:
    """`{prefix}_linear.png` and `{prefix}_log.png` of the |w| distribution of `group` in each analysis."""
    histograms = {label: _histogram(analysis, group) for label, analysis in analyses.items()}
    thresholds = next(iter(analyses.values()))["thresholds"]
    return [_plot_linear(histograms, thresholds, Path(out_dir) / f"{prefix}_linear.png", group),
            _plot_log(histograms, thresholds, Path(out_dir) / f"{prefix}_log.png", group)]


def plot_bands(analysis: dict, path: Path, by: str = "layer") -> Path:
    """Stacked bars of the threshold bands per block (`by="layer"`) or per module type."""
    if by == "layer":
        groups = {row["label"]: row for row in analysis["per_layer"]}
    else:
        groups = {name: row for name, row in analysis["per_module_type"].items() if row["numel"]}
    thresholds = analysis["thresholds"]
    names = band_names(thresholds)
    fractions = np.array([band_fractions(group, thresholds) for group in groups.values()]).T
    figure, axes = plt.subplots(figsize=(max(6.0, 0.35 * len(groups) + 2), 4.5))
    bottom = np.zeros(len(groups))
    colors = plt.get_cmap("viridis")(np.linspace(0.05, 0.95, len(names)))
    for name, values, color in zip(names, fractions, colors):
        axes.bar(list(groups), values, bottom=bottom, label=name, color=color, width=0.8)
        bottom += values
    axes.set_ylim(0, 1)
    axes.set_ylabel("fraction of weights")
    axes.set_xlabel("transformer block" if by == "layer" else "module type")
    axes.set_title(f"{_model_label(analysis)}: |w| bands per {'block' if by == 'layer' else 'module type'}")
    axes.tick_params(axis="x", labelrotation=90 if len(groups) > 12 or by != "layer" else 0)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    return _save(figure, Path(path))


def plot_layer_comparison(analyses: dict[str, dict], path: Path) -> Path:
    """Per block, the fraction of |w| below each threshold, one line style per analysis."""
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for style, (label, analysis) in zip(("-", "--", ":", "-."), analyses.items()):
        labels = [row["label"] for row in analysis["per_layer"]]
        for threshold in analysis["thresholds"]:
            key = threshold_key(threshold)
            axes.plot(labels, [row["below"][key]["fraction"] for row in analysis["per_layer"]], style,
                      marker=".", label=f"{label}: |w| < {key}")
        axes.plot(labels, [row["zero_fraction"] for row in analysis["per_layer"]], style, marker="x",
                  label=f"{label}: exact zeros")
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("transformer block")
    axes.set_ylabel("fraction of weights")
    axes.set_title("per-block fractions, before / after")
    axes.tick_params(axis="x", labelrotation=90 if len(analysis["per_layer"]) > 12 else 0)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    return _save(figure, Path(path))


def band_names(thresholds: list[float]) -> list[str]:
    """Names of the bands the thresholds cut |w| into, exact zeros first."""
    keys = [threshold_key(threshold) for threshold in thresholds]
    names = ["exact zero", f"0 < |w| < {keys[0]}"]
    names += [f"{low} <= |w| < {high}" for low, high in zip(keys, keys[1:])]
    return names + [f"|w| >= {keys[-1]}"]


def band_fractions(group: dict, thresholds: list[float]) -> list[float]:
    """Fractions of a group's weights in each band of `band_names` (they sum to 1 but for NaN/inf)."""
    numel = max(1, group["numel"])
    below = [group["below"][threshold_key(threshold)]["count"] for threshold in thresholds]
    counts = [group["zeros"], below[0] - group["zeros"]]
    counts += [high - low for low, high in zip(below, below[1:])]
    counts.append(group["numel"] - group["nonfinite"] - below[-1])
    return [count / numel for count in counts]


def linear_histogram(counts: np.ndarray, underflow: int, zeros: int, upper: float,
                     bins: int = LINEAR_BINS) -> tuple:
    """(edges, counts) on `bins` uniform |w| bins over [0, upper], re-binned from the HISTOGRAM_BINS log-bin
    `counts` (see `histogram_counts`) with their `underflow` and the exact `zeros`."""
    edges = histogram_edges()
    cumulative = zeros + underflow + np.concatenate([[0], np.cumsum(counts)])
    linear_edges = np.linspace(0.0, upper, bins + 1)
    at_edges = np.interp(linear_edges, np.concatenate([[0.0], edges]), np.concatenate([[zeros], cumulative]))
    at_edges[0] = 0.0  # exact zeros fall in the first bin
    return linear_edges, np.diff(at_edges)


def _histogram(analysis: dict, group: str) -> dict:
    source = analysis[group] if group in analysis else analysis["per_module_type"][group]
    return {"counts": histogram_counts(source["histogram"]), "underflow": source["histogram"]["underflow"],
            "zeros": source["zeros"], "numel": source["numel"]}


def _quantile_edge(histogram: dict, quantile: float) -> float:
    """The smallest log-bin edge with at least `quantile` of the weights below it."""
    cumulative = histogram["zeros"] + histogram["underflow"] + np.cumsum(histogram["counts"])
    index = int(np.searchsorted(cumulative, quantile * histogram["numel"]))
    return float(histogram_edges()[min(index + 1, len(cumulative))])


def _plot_linear(histograms: dict[str, dict], thresholds: list[float], path: Path, group: str) -> Path:
    upper = max(_quantile_edge(histogram, LINEAR_QUANTILE) for histogram in histograms.values())
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for label, histogram in histograms.items():
        edges, counts = linear_histogram(histogram["counts"], histogram["underflow"], histogram["zeros"], upper)
        axes.stairs(counts / max(1, histogram["numel"]), edges, label=_legend(label, histogram))
    _threshold_lines(axes, [threshold for threshold in thresholds if threshold <= upper])
    axes.set_xlim(0, upper)
    axes.set_xlabel(f"|w| (linear; {100 * LINEAR_QUANTILE:g}th percentile shown; zeros in the first bin)")
    axes.set_ylabel("fraction of weights per bin")
    axes.set_title(f"|w| distribution ({group})", pad=16)
    axes.legend(fontsize="small")
    return _save(figure, path)


def _plot_log(histograms: dict[str, dict], thresholds: list[float], path: Path, group: str) -> Path:
    edges = histogram_edges()
    occupied = np.flatnonzero(sum(histogram["counts"] for histogram in histograms.values()))
    low, high = (occupied[0], occupied[-1] + 1) if occupied.size else (0, len(edges) - 1)
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for label, histogram in histograms.items():
        fractions = histogram["counts"][low:high] / max(1, histogram["numel"])
        axes.stairs(fractions, edges[low:high + 1], label=_legend(label, histogram))
    _threshold_lines(axes, thresholds)
    axes.set_xscale("log")
    axes.set_xlabel("|w| (log scale; exact zeros are not on this axis, see legend)")
    axes.set_ylabel("fraction of weights per bin")
    axes.set_title(f"|w| distribution ({group})", pad=16)
    axes.legend(fontsize="small")
    return _save(figure, path)


def _threshold_lines(axes, thresholds: list[float]) -> None:
    for threshold in thresholds:
        axes.axvline(threshold, color="grey", linestyle="--", linewidth=0.8)
        axes.annotate(f"{threshold:g}", (threshold, 1.0), xycoords=("data", "axes fraction"),
                      va="bottom", ha="center", fontsize="small", color="grey")


def _legend(label: str, histogram: dict) -> str:
    return f"{label} (exact zeros {100 * histogram['zeros'] / max(1, histogram['numel']):.2f} %)"


def _model_label(analysis: dict) -> str:
    model = analysis["model"]
    return Path(model["path"]).name if model.get("path") else (model.get("architecture") or "model")


def _save(figure, path: Path) -> Path:
    return write_figure_atomic(figure, path, dpi=120)
