"""`analyze`: how many weights are near zero, overall, per transformer block, per module type, per tensor.

One pass over the weights, one tensor chunk in memory at a time; each chunk's counts are added to every group
its tensor belongs to (overall, its block, its module type, ...). The result is a plain dict with stable keys
(see docs/analysis.md), ready for JSON, the markdown report and the plots.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict

from tqdm.auto import tqdm

from ..errors import UserError
from .naming import ParamKind, classify, is_block_linear
from .sources import TensorEntry, WeightSource, open_weights
from .stats import MagnitudeStats, histogram_spec

DEFAULT_THRESHOLDS = (0.01, 0.1)
SCHEMA_VERSION = 1
SIDE_ORDER = {"encoder": 0, None: 1, "decoder": 2}


def analyze(model_or_path, thresholds=DEFAULT_THRESHOLDS, progress: bool = False) -> dict:
    """Measure weight magnitudes of a model: an `nn.Module`, a checkpoint directory, a weights file, a short
    name or a cached hub id. `thresholds` are |w| cut-offs (fractions of |w| < t are reported for each).

    Returns the analysis dict (schema in docs/analysis.md): keys `overall`, `block_linear`, `per_module_type`,
    `per_layer`, `outside_blocks`, `per_tensor`, `tied`, `skipped`, `missing`, ... Raises UserError for a
    model that cannot be found or read, or bad thresholds.
    """
    thresholds = parse_thresholds(thresholds)
    started = time.perf_counter()
    with open_weights(model_or_path) as source, _progress_bar(source, progress) as bar:
        tensors = [(entry, classify(entry.name), _measure_tensor(entry, thresholds, bar))
                   for entry in source.entries]
    if not tensors:
        raise UserError(f"no floating-point weights found in {source.origin['path'] or 'the model'}; "
                        "give a checkpoint with float weights")
    analysis = _assemble(source, tensors, thresholds)
    analysis["seconds"] = round(time.perf_counter() - started, 3)
    return analysis


def parse_thresholds(thresholds) -> tuple[float, ...]:
    """Thresholds from a number, a sequence or a comma-separated string ('0.01,0.1'): positive, finite,
    sorted, unique; UserError otherwise."""
    if isinstance(thresholds, str):
        items = thresholds.split(",")
    else:
        items = [thresholds] if isinstance(thresholds, (int, float)) else list(thresholds)
    try:
        values = sorted({float(item) for item in items})
    except (TypeError, ValueError):
        raise UserError(f"thresholds {thresholds!r} are not numbers; give e.g. 0.01,0.1") from None
    if not values or not all(math.isfinite(value) and value > 0 for value in values):
        raise UserError(f"thresholds {thresholds!r} must be positive finite |w| cut-offs; write them e.g. as 0.01,0.1")
    return tuple(values)


def _progress_bar(source: WeightSource, enabled: bool) -> tqdm:
    """A bar over weights (not tensors): embeddings weigh what they weigh."""
    total = sum(entry.numel for entry in source.entries)
    return tqdm(total=total, unit="w", unit_scale=True, desc="analyze", disable=not enabled, leave=False)


def _measure_tensor(entry: TensorEntry, thresholds: tuple[float, ...], bar: tqdm) -> MagnitudeStats:
    stats = MagnitudeStats(thresholds)
    for chunk in entry.chunks():
        stats.add(MagnitudeStats.of_chunk(chunk, thresholds))
        bar.update(chunk.numel())
    if stats.numel != entry.numel:
        raise RuntimeError(f"{entry.name}: read {stats.numel} values, expected {entry.numel}")
    return stats


def _assemble(source: WeightSource, tensors: list[tuple[TensorEntry, ParamKind, MagnitudeStats]],
              thresholds: tuple[float, ...]) -> dict:
    sides = {kind.side for _, kind, _ in tensors if kind.block is not None}
    encoder_decoder = source.origin["is_encoder_decoder"] or {"encoder", "decoder"} <= sides
    overall, block_linear, outside = (MagnitudeStats(thresholds) for _ in range(3))
    module_types: dict[str, MagnitudeStats] = defaultdict(lambda: MagnitudeStats(thresholds))
    leaves: dict[str, set[str]] = defaultdict(set)
    layers: dict[tuple, MagnitudeStats] = defaultdict(lambda: MagnitudeStats(thresholds))
    dtypes: dict[str, int] = defaultdict(int)
    per_tensor = []
    for entry, kind, stats in tensors:
        side = kind.side if encoder_decoder else None
        for group in (overall, module_types[kind.module_type],
                      layers[(side, kind.block)] if kind.block is not None else outside):
            group.add(stats)
        if is_block_linear(kind.module_type) and kind.block is not None:
            block_linear.add(stats)
        leaves[kind.module_type].add(kind.leaf)
        dtypes[entry.dtype] += entry.numel
        per_tensor.append({"name": entry.name, "shape": list(entry.shape), "dtype": entry.dtype,
                           "block": kind.block, "side": side, "module_type": kind.module_type,
                           **stats.to_dict()})
    return {
        "schema_version": SCHEMA_VERSION,
        "model": source.origin,
        "architecture_kind": _architecture_kind(encoder_decoder, sides),
        "thresholds": list(thresholds),
        "dtypes": dict(dtypes),
        "overall": overall.to_dict(with_histogram=True),
        "block_linear": block_linear.to_dict(with_histogram=True),
        "outside_blocks": outside.to_dict(),
        "per_module_type": {name: {**module_types[name].to_dict(with_histogram=True),
                                   "leaves": sorted(leaves[name])} for name in sorted(module_types)},
        "per_layer": [{"label": _layer_label(side, block), "side": side, "block": block, **stats.to_dict()}
                      for (side, block), stats in sorted(layers.items(), key=_layer_order)],
        "per_tensor": per_tensor,
        "tied": source.tied,
        "tied_detection": source.tied_detection,
        "skipped": source.skipped,
        "missing": source.missing,
        "histogram": histogram_spec(),
    }


def _architecture_kind(encoder_decoder: bool, sides: set) -> str:
    if encoder_decoder:
        return "encoder-decoder"
    return "encoder-only" if sides == {"encoder"} else "decoder-only"


def _layer_label(side: str | None, block: int) -> str:
    return f"{side}.{block}" if side else str(block)


def _layer_order(item) -> tuple:
    (side, block), _ = item
    return SIDE_ORDER[side], block
