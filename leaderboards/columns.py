"""The columns every leaderboard table shares: one `Column` row each in `COLUMNS`, read from `CellResult`s.

A column names the phase that measures it (its cells read `failed (!)` when that phase failed), whether the
summary table shows it, and, for a number worth plotting against sparsity, its plot panel. Task metrics are not
here: they come from lm-eval (render.task_rows). Adding a column: a measure function (measures.py), then a row
here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .cells import model_name
from .families import skip_reason
from .store import CellResult

FLAG = "(!)"
FAILED = f"failed {FLAG}"  # in place of the numbers of a phase that failed (its reason under "Failed")


def fmt(value: Any, digits: int = 4) -> str:
    """A value as table text: numbers to `digits` significant digits, `-` for none, `skipped: why` for a measure
    the cell's model cannot take (families.skipped)."""
    if skip_reason(value):
        return f"skipped: {skip_reason(value)}"
    if value is None or value == "N/A":
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if not math.isfinite(value):
        return f"{value} {FLAG}"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def with_stderr(value: Any, stderr: Any) -> str:
    text = fmt(value)
    return f"{text} ± {fmt(stderr, 2)}" if isinstance(stderr, (int, float)) else text


def mebibytes(value: Any) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value / 2**20:.1f}"


def measured(result: CellResult, measure: str, key: str) -> Any:
    """`result`'s measure `measure` (e.g. "latency"), its value `key`; None when not measured; the skip record
    when the whole measure was skipped."""
    record = result.get(measure) or {}
    return record if skip_reason(record) else record.get(key)


def _target(result: CellResult) -> str:
    cell = result.cell
    if cell.is_dense:
        return "0"
    return "recipe" if cell.sparsity is None else f"{cell.sparsity:g}"


def _measured_sparsity(result: CellResult) -> str:
    overall = (result.sparsity or {}).get("overall_sparsity")
    return "-" if overall is None else f"{100 * overall:.2f} %"


def _size(key: str) -> Callable[[CellResult], str]:
    def text(result: CellResult) -> str:
        size = result.get("size") or {}
        return mebibytes(size.get(key)) if size.get("status") == "measured" else "not measured"
    return text


def _mib(value: Any) -> float | None:
    return value / 2**20 if isinstance(value, (int, float)) else None


@dataclass(frozen=True)
class Panel:
    """Where a column is drawn against measured sparsity: figure (`cost` or `measures`), y label, log scale."""

    figure: str
    label: str
    log: bool = False


@dataclass(frozen=True)
class Column:
    """One table column: `text(result)` is its cell; `phase` the phase that measures it; `identity` columns
    lead every task table (what the cell is), the others follow the task's metrics; `summary` puts it in the
    summary table; `number` and `panel` draw it in plots.py; `only_if_recorded` leaves it out of a table where
    no cell recorded what it shows (the runtime columns of a grid measured with dense kernels only)."""

    name: str
    text: Callable[[CellResult], str]
    phase: str | None = None
    identity: bool = False
    summary: bool = False
    number: Callable[[CellResult], Any] | None = None
    panel: Panel | None = None
    only_if_recorded: Callable[[CellResult], Any] | None = None  # shown only if some cell has this (not None)

    def shown(self, results: list[CellResult]) -> bool:
        """Whether a table over `results` has this column (always, unless `only_if_recorded`)."""
        if self.only_if_recorded is None:
            return True
        return any(self.only_if_recorded(r) is not None and not skip_reason(self.only_if_recorded(r))
                   for r in results)


def _runtime(result: CellResult) -> Any:
    return result.get("runtime_latency")


def _ppl(result: CellResult) -> Any:
    return measured(result, "perplexity", "perplexity")


def _pseudo_ppl(result: CellResult) -> Any:
    return measured(result, "pseudo_perplexity", "pseudo_perplexity")


def _layer_zeros(result: CellResult) -> str:
    """Zeros per transformer block, lowest-highest (blocks hold norms and biases too: docs/analysis.md)."""
    rows = (result.get("analysis") or {}).get("per_layer") or []
    if not rows:
        return "-"
    fractions = [row["zero_fraction"] for row in rows]
    return f"{100 * min(fractions):.1f}-{100 * max(fractions):.1f} %"


def _finetuned(result: CellResult) -> Any:
    return result.get("finetune")


def _finetuned_held_out(result: CellResult) -> str:
    """The fine-tuning run's own held-out score of the saved model: AUC when the data has one (MRPC), else the
    held-out loss (masked merge for LoRA)."""
    held_out = measured(result, "finetune", "held_out") or {}
    scores = held_out.get("masked_merge") or held_out.get("model") or {}
    if "auc" in scores:
        return f"AUC {fmt(scores['auc'], 3)}"
    return f"loss {fmt(scores['loss'], 4)}" if "loss" in scores else "-"


def _zeros_kept(result: CellResult) -> str:
    zeros = measured(result, "finetune", "zeros")
    return "-" if not zeros else "yes" if zeros["zeros_before"] == zeros["zeros_after"] else f"NO {FLAG}"


COLUMNS: tuple[Column, ...] = (
    Column("model", lambda r: model_name(r.cell.model), identity=True),
    Column("family", lambda r: r.model_family or "-", identity=True, summary=True,
           only_if_recorded=lambda r: r.model_family),
    Column("method", lambda r: r.cell.method, identity=True, summary=True),
    Column("structure", lambda r: "-" if r.cell.is_dense else r.cell.structure, identity=True, summary=True),
    Column("target", _target, identity=True, summary=True),
    Column("measured", _measured_sparsity, identity=True, summary=True),
    Column("nonzero (M)", lambda r: fmt(r.sparsity.get("nonzero_params", 0) / 1e6) if r.sparsity else "-",
           identity=True),
    Column("dtype", lambda r: r.cell.dtype, identity=True, summary=True),
    Column("ppl (token)", lambda r: fmt(_ppl(r)), "perplexity", summary=True, number=_ppl,
           panel=Panel("cost", "token perplexity (log)", log=True)),
    Column("KL vs dense", lambda r: fmt(measured(r, "agreement", "kl"), 3), "perplexity", summary=True,
           number=lambda r: measured(r, "agreement", "kl"),
           panel=Panel("measures", "KL(dense || cell), nats/token")),
    Column("top-1 agree", lambda r: fmt(measured(r, "agreement", "top1_agreement"), 3), "perplexity",
           summary=True, number=lambda r: measured(r, "agreement", "top1_agreement"),
           panel=Panel("measures", "top-1 agreement with dense")),
    Column("pseudo-ppl", lambda r: fmt(_pseudo_ppl(r)), "pseudo_perplexity", summary=True, number=_pseudo_ppl,
           panel=Panel("cost", "masked-LM pseudo-perplexity (log)", log=True),
           only_if_recorded=lambda r: r.get("pseudo_perplexity")),
    Column("dense MiB", _size("dense_bytes"), "size"),
    Column("compressed MiB", _size("compressed_bytes"), "size", summary=True,
           number=lambda r: _mib(measured(r, "size", "compressed_bytes")),
           panel=Panel("cost", "compressed checkpoint (MiB)")),
    Column("ms/forward", lambda r: fmt(measured(r, "latency", "forward_ms")), "latency", summary=True,
           number=lambda r: measured(r, "latency", "forward_ms"), panel=Panel("cost", "ms per forward")),
    Column("tokens/s", lambda r: fmt(measured(r, "latency", "generate_tokens_per_s"), 3), "latency"),
    Column("peak MiB", lambda r: mebibytes(measured(r, "latency", "peak_memory_bytes")), "latency"),
    Column("runtime", lambda r: fmt(measured(r, "runtime_latency", "runtime")), "latency", only_if_recorded=_runtime),
    Column("ms/forward runtime", lambda r: fmt(measured(r, "runtime_latency", "forward_ms")), "latency",
           only_if_recorded=_runtime),
    Column("tokens/s runtime", lambda r: fmt(measured(r, "runtime_latency", "generate_tokens_per_s"), 3), "latency",
           only_if_recorded=_runtime),
    Column("prefill speedup", lambda r: fmt(measured(r, "runtime_latency", "prefill_speedup"), 3), "latency",
           number=lambda r: measured(r, "runtime_latency", "prefill_speedup"), only_if_recorded=_runtime),
    Column("decode speedup", lambda r: fmt(measured(r, "runtime_latency", "decode_speedup"), 3), "latency",
           number=lambda r: measured(r, "runtime_latency", "decode_speedup"), only_if_recorded=_runtime),
    Column("peak MiB runtime", lambda r: mebibytes(measured(r, "runtime_latency", "peak_memory_bytes")), "latency",
           only_if_recorded=_runtime),
    Column("prune s", lambda r: "-" if not r.prune else fmt(r.prune.get("prune_seconds")), summary=True),
    Column("block zeros", lambda r: fmt(((r.get("analysis") or {}).get("block_linear") or {}).get("zero_fraction")),
           "analysis", only_if_recorded=lambda r: r.get("analysis")),
    Column("layer zeros (min-max)", _layer_zeros, "analysis", summary=True, only_if_recorded=lambda r: r.get("analysis")),
    Column("FT held-out", _finetuned_held_out, "finetune", summary=True, only_if_recorded=_finetuned),
    Column("FT train s", lambda r: fmt(measured(r, "finetune", "train_seconds"), 3), "finetune", only_if_recorded=_finetuned),
    Column("FT zeros kept", _zeros_kept, "finetune", only_if_recorded=_finetuned),
)

MEASURED_PHASES = tuple(dict.fromkeys(column.phase for column in COLUMNS if column.phase))


def shown_columns(results: list[CellResult]) -> tuple[Column, ...]:
    """The columns of `COLUMNS` that tables over `results` show."""
    return tuple(column for column in COLUMNS if column.shown(results))


def cell_columns(result: CellResult, columns: tuple[Column, ...] = COLUMNS) -> dict[str, str]:
    """`columns` for one cell; `failed (!)` where the phase that measures a column failed."""
    return {column.name: FAILED if column.phase and not result.phase_ok(column.phase) else column.text(result)
            for column in columns}


__all__ = ["FLAG", "FAILED", "Column", "Panel", "COLUMNS", "MEASURED_PHASES", "cell_columns", "shown_columns", "fmt",
           "with_stderr", "mebibytes", "measured"]
