"""`runtime=dense|sparse|auto|KERNEL`: which kernel runs each pruned linear layer, chosen by measurement.

- `dense`: nothing changes (today's behaviour: dense kernels multiply the zeros).
- `auto`: every pruned layer is timed at the cell's real shapes -- `decode_tokens` rows (generation at that
  batch) and `prefill_tokens` rows (a prompt or a scoring batch) -- with the dense kernel and each sparse kernel
  that can serve it (kernels.py); per shape the fastest is kept, a sparse kernel only when it beats dense by
  AUTO_MARGIN (timing noise must not make a layer slower). Layers where dense wins at both shapes stay
  `nn.Linear`; the others become `SparseLinear`. Then the whole model is checked end to end at the same shapes
  (`check_end_to_end`): per regime, chosen kernels vs all-dense in interleaved pairs (pairs.py); a regime whose
  median pair ratio (dense time / runtime time) is below E2E_MARGIN goes back to dense in every layer, so that
  per-layer wins that do not add up (call overheads, cache effects, noise) never make the model slower. Layers
  left with no sparse kernel hold their dense `nn.Linear` again. The check and what it reverted are in the report.
- `sparse`: the fastest sparse kernel per layer and shape, even where dense is faster (to show what they cost);
  no end-to-end check, nothing reverted.
- a kernel name (`csr`, `bsr`, `scipy-csr`, `semi-structured`): that kernel on every pruned layer; a layer it
  cannot serve (e.g. 2:4 on a CPU or on a layer that is not 2:4) is a UserError; no end-to-end check either.

A pruned layer is an `nn.Linear` inside the transformer blocks (lm_head excluded) whose weight is at least
MIN_PRUNED_SPARSITY zeros. Times are medians of `repeats` calls after one warm-up, in milliseconds.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..pruning.targets import DEFAULT_IGNORE, find_target_layers
from ..pruning.values import BlockStructure
from .kernels import KERNELS, SPARSE_KERNELS, unavailable
from .pairs import time_pairs
from .sparse_linear import REGIMES, SparseLinear
from .timing import random_token_inputs, timed_calls

MODES = ("dense", "sparse", "auto")
MIN_PRUNED_SPARSITY = 0.05
AUTO_MARGIN = 1.05  # auto keeps a sparse kernel only where dense takes >= 5 % longer
E2E_MARGIN = 1.02  # auto keeps a regime's sparse kernels only where the whole model is >= 2 % faster with them
E2E_PAIRS = 7  # interleaved dense / runtime forward pairs per regime in the end-to-end check


def parse_runtime(value: Any) -> str:
    """`runtime` as given in model_args / CLI / grid spec -> a mode or kernel name; UserError otherwise."""
    text = str(value).strip().lower()
    if text not in MODES + SPARSE_KERNELS:
        raise UserError(f"unknown runtime {value!r}; use one of: {', '.join(MODES + SPARSE_KERNELS)}")
    return text


@dataclass(frozen=True)
class RuntimeShapes:
    """Rows of the inputs each layer is timed with: one generation step (`decode_tokens` sequences, one token
    each) and one prompt / scoring batch (`prefill_tokens` rows = `prefill_batch` sequences of equal length)."""

    decode_tokens: int = 1
    prefill_tokens: int = 128
    prefill_batch: int = 1

    def tokens(self, regime: str) -> int:
        return self.decode_tokens if regime == "decode" else self.prefill_tokens


PREFILL_SEQLEN = 128  # tokens per sequence sparse-hf times prefill at (the latency columns' default seqlen)


def runtime_shapes(batch_size: Any) -> RuntimeShapes:
    """The shapes sparse-hf times layers at: decode = `batch_size` rows, prefill = `batch_size` x PREFILL_SEQLEN
    (lm-eval's `batch_size=auto` counts as 1)."""
    batch = batch_size if isinstance(batch_size, int) and batch_size > 0 else 1
    return RuntimeShapes(decode_tokens=batch, prefill_tokens=batch * PREFILL_SEQLEN, prefill_batch=batch)


@dataclass
class LayerChoice:
    """One pruned layer: its shape and sparsity, the kernel per regime the per-layer timing picked (`choice`; the
    end-to-end check may have reverted it since: `module.choice` is what runs), the timings (ms) and why kernels
    were out."""

    name: str
    shape: tuple[int, int]
    sparsity: float
    choice: dict[str, str]
    timings_ms: dict[str, dict[str, float]]
    unavailable: dict[str, str]
    dense_bytes: int
    module: nn.Module | None = None  # the SparseLinear put in its place, None where it stayed dense
    original: nn.Linear | None = None  # the dense layer, kept only while a caller compares the two

    def to_dict(self) -> dict[str, Any]:
        fallback = getattr(self.module, "fallback_reason", None)
        return {"layer": self.name, "shape": list(self.shape), "sparsity": round(self.sparsity, 6),
                "decode": self.module.choice["decode"] if self.module else "dense",
                "prefill": self.module.choice["prefill"] if self.module else "dense", "layer_choice": self.choice,
                "timings_ms": self.timings_ms, "unavailable": self.unavailable,
                "bytes": self.stored_bytes(), "dense_bytes": self.dense_bytes, "fallback": fallback}

    def stored_bytes(self) -> int:
        return self.module.weight_bytes() if self.module is not None else self.dense_bytes


@dataclass
class RuntimeReport:
    """What `apply_runtime` did; `to_dict()` is what lands in the results JSON (fallbacks read at that time)."""

    mode: str
    shapes: RuntimeShapes
    layers: list[LayerChoice] = field(default_factory=list)
    seconds: float = 0.0
    end_to_end: dict[str, dict[str, Any]] = field(default_factory=dict)  # regime -> check_end_to_end's record

    def use_dense(self, model: nn.Module, dense: bool) -> None:
        """Put the kept dense layers back (`dense`) or the sparse ones in (needs `apply_runtime(keep_dense=True)`)."""
        for layer in self.layers:
            if layer.module is not None:
                _replace_module(model, layer.name, layer.original if dense else layer.module)

    def runs_dense(self, regime: str) -> bool:
        """True if every layer runs the dense kernel in `regime` ("decode" or "prefill"): the model then runs the
        same modules there as without a runtime."""
        return all(layer.module is None or layer.module.choice[regime] == "dense" for layer in self.layers)

    def release_dense(self) -> None:
        """Drop the kept dense layers: from now on only the sparse storage holds the pruned weights."""
        for layer in self.layers:
            layer.original = None

    def to_dict(self) -> dict[str, Any]:
        rows = [layer.to_dict() for layer in self.layers]
        dense_bytes = sum(row["dense_bytes"] for row in rows)
        stored = sum(row["bytes"] for row in rows)
        counts: dict[str, int] = {}
        for row in rows:
            for regime in REGIMES:
                counts[f"{regime}:{row[regime]}"] = counts.get(f"{regime}:{row[regime]}", 0) + 1
        return {"mode": self.mode, "decode_tokens": self.shapes.decode_tokens,
                "prefill_tokens": self.shapes.prefill_tokens, "pruned_layers": len(rows),
                "sparse_layers": sum(layer.module is not None for layer in self.layers), "kernel_counts": counts,
                "pruned_linear_dense_bytes": dense_bytes, "pruned_linear_stored_bytes": stored,
                "pruned_linear_memory_ratio": stored / dense_bytes if dense_bytes else None,
                "choose_seconds": round(self.seconds, 3), "torch_threads": torch.get_num_threads(),
                "end_to_end": self.end_to_end,
                "fallbacks": [f"{row['layer']}: {row['fallback']}" for row in rows if row["fallback"]],
                "layers": rows}


def pruned_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The block `nn.Linear` layers (lm_head excluded) holding at least MIN_PRUNED_SPARSITY zeros."""
    found = {}
    for name, module in find_target_layers(model, (), DEFAULT_IGNORE).items():
        if isinstance(module, nn.Linear) and float((module.weight == 0).float().mean()) >= MIN_PRUNED_SPARSITY:
            found[name] = module
    return found


@torch.no_grad()
def time_kernel(name: str, storage: Any, x: torch.Tensor, repeats: int) -> float:
    """Median milliseconds of `repeats` calls of kernel `name` on input `x`, after one warm-up call."""
    matmul = KERNELS[name].matmul
    return 1000.0 * statistics.median(timed_calls(lambda: matmul(storage, x), x.device, repeats))


def _time_candidates(weight: torch.Tensor, names: tuple[str, ...], shapes: RuntimeShapes,
                     block: BlockStructure | None, repeats: int) -> tuple[dict, dict]:
    """(timings_ms {kernel: {regime: ms}}, unavailable {kernel: reason}) for the kernels `names`."""
    timings, out = {}, {}
    for name in names:
        reason = unavailable(name, weight, block)
        if reason is None:
            try:
                storage = KERNELS[name].pack(weight, block)
                timings[name] = {regime: round(time_kernel(name, storage, _probe_input(weight, shapes.tokens(regime)),
                                                           repeats), 4) for regime in REGIMES}
            except (RuntimeError, ValueError, TypeError, NotImplementedError) as error:
                reason = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
        if reason is not None:
            out[name] = reason
    return timings, out


def _probe_input(weight: torch.Tensor, tokens: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(tokens)
    return torch.randn(tokens, weight.shape[1], generator=generator).to(device=weight.device, dtype=weight.dtype)


def _pick(mode: str, regime: str, timings: dict[str, dict[str, float]]) -> str:
    """The kernel `mode` keeps for one regime, from the measured timings (dense always measured)."""
    sparse = {name: row[regime] for name, row in timings.items() if name != "dense"}
    if mode in SPARSE_KERNELS:
        return mode
    fastest = min(sparse, key=sparse.__getitem__)
    if mode == "sparse" or sparse[fastest] * AUTO_MARGIN < timings["dense"][regime]:
        return fastest
    return "dense"


def choose_layer(name: str, linear: nn.Linear, mode: str, shapes: RuntimeShapes, block: BlockStructure | None,
                 repeats: int) -> LayerChoice:
    """Time the candidate kernels on one pruned layer and pick one per regime; UserError where `mode` names a
    kernel (or asks for any sparse one) that cannot serve this layer."""
    weight = linear.weight.detach()
    names = ("dense",) + ((mode,) if mode in SPARSE_KERNELS else SPARSE_KERNELS)
    timings, reasons = _time_candidates(weight, names, shapes, block, repeats)
    if "dense" not in timings:
        raise UserError(f"runtime: the dense kernel failed on {name}: {reasons['dense']}; check that the model "
                        "runs at all (e.g. with runtime=dense)")
    if mode in SPARSE_KERNELS and mode in reasons:
        raise UserError(f"runtime={mode} cannot run {name}: {reasons[mode]}; use runtime=auto, which picks per layer")
    if len(timings) == 1:
        if mode == "sparse":
            raise UserError(f"runtime=sparse: no sparse kernel can run {name} ("
                            + "; ".join(f"{k}: {v}" for k, v in reasons.items()) + "); use runtime=auto")
        choice = {regime: "dense" for regime in REGIMES}
    else:
        choice = {regime: _pick(mode, regime, timings) for regime in REGIMES}
    sparsity = float((weight == 0).float().mean())
    return LayerChoice(name, tuple(weight.shape), sparsity, choice, timings, reasons,
                       weight.numel() * weight.element_size())


def _replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _regime_inputs(model: nn.Module, shapes: RuntimeShapes, regime: str) -> dict[str, torch.Tensor]:
    """Random token ids (seed 0) at one regime's shape: decode `decode_tokens` x 1, prefill `prefill_batch` x
    (`prefill_tokens` / `prefill_batch`)."""
    batch, length = ((shapes.decode_tokens, 1) if regime == "decode"
                     else (shapes.prefill_batch, max(1, shapes.prefill_tokens // shapes.prefill_batch)))
    return random_token_inputs(model, batch, length, torch.Generator().manual_seed(0))


def _revert_regime(model: nn.Module, report: RuntimeReport, regime: str, block: BlockStructure | None) -> int:
    """Run `regime` with the dense kernel in every layer (needs the kept dense layers); a layer left with no
    sparse kernel gets its `nn.Linear` back. Returns how many layers changed."""
    changed = 0
    for layer in report.layers:
        if layer.module is None or layer.module.choice[regime] == "dense":
            continue
        choice = {**layer.module.choice, regime: "dense"}
        sparse_left = any(kernel != "dense" for kernel in choice.values())
        layer.module = SparseLinear(layer.original, choice, report.shapes.decode_tokens, block) if sparse_left else None
        _replace_module(model, layer.name, layer.module or layer.original)
        changed += 1
    return changed


@torch.no_grad()
def check_end_to_end(model: nn.Module, report: RuntimeReport, block: BlockStructure | None,
                     pairs: int = E2E_PAIRS) -> None:
    """Per regime with any sparse kernel chosen: forward the whole model at the regime's shape with the chosen
    kernels and all-dense, `pairs` interleaved pairs (pairs.py); below E2E_MARGIN the regime reverts to dense in
    every layer. Records {dense_ms, runtime_ms, ratio, pairs, margin, kept, reverted_layers, reason} in
    `report.end_to_end[regime]`. Needs the report's kept dense layers (`original`)."""
    device = next(model.parameters()).device
    for regime in REGIMES:
        if report.runs_dense(regime):
            continue
        inputs = _regime_inputs(model, report.shapes, regime)
        times = time_pairs(lambda: model(**inputs), lambda dense: report.use_dense(model, dense), pairs, device)
        kept = times.ratio >= E2E_MARGIN
        record = {**times.to_dict(), "margin": E2E_MARGIN, "kept": kept, "reverted_layers": 0, "reason": None}
        if not kept:
            record["reverted_layers"] = _revert_regime(model, report, regime, block)
            record["reason"] = (f"the chosen kernels made the whole model {times.ratio:.3f}x dense at {regime} "
                                f"(median of {pairs} interleaved pairs), below the {E2E_MARGIN}x margin: dense kept")
        report.end_to_end[regime] = record


@torch.no_grad()
def apply_runtime(model: nn.Module, mode: str, shapes: RuntimeShapes | None = None,
                  block: BlockStructure | None = None, repeats: int = 3, keep_dense: bool = False) -> RuntimeReport:
    """Choose a kernel per pruned layer (see the module docstring), swap in `SparseLinear` where a sparse
    kernel was chosen and, for `auto`, check the whole model end to end (`check_end_to_end`); `block` is the
    layers' block structure (for the `bsr` kernel). The dense layers stay in memory until the check is done
    (peak: dense + sparse storage); `keep_dense` keeps them in the report afterwards too (for side-by-side
    timing; `release_dense()` frees them)."""
    mode, shapes = parse_runtime(mode), shapes or RuntimeShapes()
    report = RuntimeReport(mode, shapes)
    if mode == "dense":
        return report
    start = time.perf_counter()
    layers = pruned_linears(model)
    if not layers and mode != "auto":
        raise UserError(f"runtime={mode}: the model has no pruned layers (no block linear layer is at least "
                        f"{MIN_PRUNED_SPARSITY:.0%} zeros); prune it (method=..., sparsity=...) or use runtime=dense")
    for name, linear in layers.items():
        layer = choose_layer(name, linear, mode, shapes, block, repeats)
        if any(kernel != "dense" for kernel in layer.choice.values()):
            layer.module, layer.original = SparseLinear(linear, layer.choice, shapes.decode_tokens, block), linear
            _replace_module(model, name, layer.module)
        report.layers.append(layer)
    if mode == "auto":
        check_end_to_end(model, report, block)
    if not keep_dense:
        report.release_dense()
    report.seconds = time.perf_counter() - start
    return report


__all__ = ["MODES", "MIN_PRUNED_SPARSITY", "AUTO_MARGIN", "E2E_MARGIN", "E2E_PAIRS", "parse_runtime", "RuntimeShapes",
           "PREFILL_SEQLEN", "runtime_shapes", "LayerChoice", "RuntimeReport", "pruned_linears", "time_kernel", "choose_layer", "check_end_to_end",
           "apply_runtime"]
