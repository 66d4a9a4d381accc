"""Latency and memory of one loaded model, measured the same way for every cell of a grid.

- `forward_ms`: median wall time of one forward pass over `batch` x `seqlen` random token ids (milliseconds),
  after one warm-up pass, over `repeats` passes.
- `generate_tokens_per_s`: greedy generation of exactly `new_tokens` tokens at batch 1 from a 16-token
  prompt, KV cache on (tokens per second, prompt processing included), median over `repeats` runs (at most 3),
  after a warm-up generation of WARM_UP_TOKENS tokens.
- `peak_memory_bytes`: on CUDA, `torch.cuda.max_memory_allocated` during the measurement (weights +
  activations); on CPU, the process's peak resident set size sampled every 10 ms during the measurement
  (includes the Python runtime and lm-eval, so compare cells of one grid, not across machines).
- `weights_bytes`: bytes of the parameters and buffers, plus the sparse storage of `SparseLinear` layers
  (dtype-dependent; a dense layer stores its zeros).

`measure_runtime` applies a runtime (choose.py) and times the same forward and the same generation with dense
kernels and with the runtime's in interleaved pairs (d, r, d, r, ...; pairs.py): each side's time is the median
of its own calls, and the speedup is the median of the per-pair ratios (dense time / runtime time), so machine
drift cancels. Nothing else goes into a speedup.

Device and thread count are recorded with every measurement: latency means nothing without them.
"""

from __future__ import annotations

import statistics
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import psutil
import torch
from torch import nn

from ..pruning.values import BlockStructure
from .choose import RuntimeShapes, apply_runtime
from .pairs import PairTimes, time_pairs
from .sparse_linear import SparseLinear
from .timing import random_token_inputs, timed_calls

SAMPLE_INTERVAL_S = 0.01
PROMPT_TOKENS = 16
WARM_UP_TOKENS = 2


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, Any]]:
    """Yields a dict that holds `peak_memory_bytes` and `peak_memory_kind` once the block has run."""
    record: dict[str, Any] = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield record
        record.update(peak_memory_bytes=int(torch.cuda.max_memory_allocated(device)),
                      peak_memory_kind="cuda max_memory_allocated")
        return
    process, stop, peak = psutil.Process(), threading.Event(), [0]

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            stop.wait(SAMPLE_INTERVAL_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield record
    finally:
        stop.set()
        sampler.join()
    record.update(peak_memory_bytes=peak[0], peak_memory_kind="process peak RSS (sampled)")


def weights_bytes(model: nn.Module) -> int:
    """Bytes of the parameters, buffers and sparse weight storage held in memory (tied weights once)."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    sparse = sum(module.weight_bytes() for module in model.modules() if isinstance(module, SparseLinear))
    return sum(t.numel() * t.element_size() for t in tensors.values()) + sparse


def _workload(model: nn.Module, batch: int, seqlen: int, new_tokens: int,
              seed: int, generate: bool) -> tuple[Callable[[], Any], Callable[..., Any] | None]:
    """(one forward over `batch` x `seqlen` random ids, one greedy generation of `tokens` (default `new_tokens`)
    tokens at batch 1 from a PROMPT_TOKENS prompt, or None where it is not timed: `generate` off, no
    `generate`, or an encoder-decoder, whose forward takes the same ids on both sides)."""
    generator = torch.Generator().manual_seed(seed)
    inputs = random_token_inputs(model, batch, seqlen, generator)
    prompt = random_token_inputs(model, 1, PROMPT_TOKENS, generator)["input_ids"]

    def forward() -> Any:
        return model(**inputs)

    def generation(tokens: int = new_tokens) -> Any:
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=tokens,
                              min_new_tokens=tokens, pad_token_id=0)

    encoder_decoder = "decoder_input_ids" in inputs
    return forward, (generation if generate and hasattr(model, "generate") and not encoder_decoder else None)


@torch.no_grad()
def measure_latency(model: nn.Module, batch: int = 1, seqlen: int = 128, new_tokens: int = 32,
                    repeats: int = 5, seed: int = 0, generate: bool = True) -> dict[str, Any]:
    """Forward latency, generation speed (when `generate`) and peak memory of `model` (see the module docstring
    for units). An encoder-decoder's forward takes the same `batch` x `seqlen` ids on both sides."""
    device = next(model.parameters()).device
    forward_call, generation_call = _workload(model, batch, seqlen, new_tokens, seed, generate)
    with peak_memory(device) as memory:
        forward = timed_calls(forward_call, device, repeats)
        generation = None
        if generation_call is not None:
            generation = timed_calls(generation_call, device, min(repeats, 3),
                                     warm_up=lambda: generation_call(tokens=WARM_UP_TOKENS))
    return {
        "forward_ms": 1000.0 * statistics.median(forward),
        "forward_shape": [batch, seqlen],
        "generate_tokens_per_s": None if generation is None else new_tokens / statistics.median(generation),
        "new_tokens": new_tokens,
        "repeats": repeats,
        "weights_bytes": weights_bytes(model),
        **memory,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        **device_info(device),
    }


def decode_pairs(repeats: int) -> int:
    """Generation pairs `measure_runtime` times for `repeats` forward pairs (a generation is many forwards)."""
    return max(1, (repeats + 1) // 2)


@torch.no_grad()
def measure_runtime(model: nn.Module, runtime: str, batch: int = 1, seqlen: int = 128, new_tokens: int = 32,
                    repeats: int = 9, block: BlockStructure | None = None, seed: int = 0,
                    generate: bool = True) -> dict[str, Any]:
    """`apply_runtime(runtime)` at these shapes (decode: 1 row per generated token at batch 1; prefill: `batch`
    x `seqlen` rows), then the forward timed in `repeats` interleaved dense / runtime pairs and (when
    `generate`) the generation in `decode_pairs(repeats)` pairs (module docstring). Memory and weight bytes come
    from one `measure_latency` pass per side, the runtime's after the dense layers are freed (so its memory is
    its own). Returns both records (`forward_ms`, `generate_tokens_per_s`: the pair medians), the speedups
    (median pair ratio: > 1 is faster; exactly 1.0 for a regime in which every layer runs the dense kernel, the
    same modules as the dense side, so any measured difference is noise: `identical_kernels`), the pair
    timings and the runtime's per-layer report. The model keeps
    the chosen runtime afterwards."""
    dense = measure_latency(model, batch, seqlen, new_tokens, 1, seed, generate)
    shapes = RuntimeShapes(decode_tokens=1, prefill_tokens=batch * seqlen, prefill_batch=batch)
    report = apply_runtime(model, runtime, shapes, block, keep_dense=True)
    forward_call, generation_call = _workload(model, batch, seqlen, new_tokens, seed, generate)
    device = next(model.parameters()).device

    def swap(use_dense: bool) -> None:
        report.use_dense(model, use_dense)

    prefill = time_pairs(forward_call, swap, repeats, device)
    decode = None if generation_call is None else time_pairs(generation_call, swap, decode_pairs(repeats), device)
    report.release_dense()
    chosen = measure_latency(model, batch, seqlen, new_tokens, 1, seed, generate)
    for record, side in ((dense, "dense"), (chosen, "runtime")):
        record.update(_pair_medians(prefill, decode, side, new_tokens), repeats=repeats)
    same = {regime: report.runs_dense(regime) for regime in ("prefill", "decode")}
    return {"runtime": runtime, "dense": dense, "chosen": chosen,
            "prefill_speedup": 1.0 if same["prefill"] else prefill.ratio,
            "decode_speedup": None if decode is None else 1.0 if same["decode"] else decode.ratio,
            "identical_kernels": same,
            "pairs": {"prefill": prefill.to_dict(), "decode": None if decode is None else decode.to_dict()},
            "runtime_report": report.to_dict()}


def _pair_medians(prefill: PairTimes, decode: PairTimes | None, side: str, new_tokens: int) -> dict[str, Any]:
    """`forward_ms` and `generate_tokens_per_s` of one side ("dense" or "runtime") from the pair timings."""
    forward = prefill.to_dict()[f"{side}_ms"]
    if decode is None:
        return {"forward_ms": forward}
    return {"forward_ms": forward, "generate_tokens_per_s": 1000.0 * new_tokens / decode.to_dict()[f"{side}_ms"]}


def device_info(device: torch.device) -> dict[str, Any]:
    """Which hardware ran the numbers: device type and name, torch threads, CPU count."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {"device": str(device), "device_name": name, "torch_threads": torch.get_num_threads(),
            "cpu_count": psutil.cpu_count(logical=True), "torch_version": torch.__version__}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


__all__ = ["PROMPT_TOKENS", "WARM_UP_TOKENS", "measure_latency", "decode_pairs", "measure_runtime", "peak_memory", "weights_bytes",
           "device_info"]
