"""Latency and memory of one loaded model, measured the same way for every cell of a grid.

- `forward_ms`: median wall time of one forward pass over `batch` x `seqlen` random token ids (milliseconds),
  after one warm-up pass, over `repeats` passes.
- `generate_tokens_per_s`: greedy generation of exactly `new_tokens` tokens at batch 1 from a 16-token
  prompt, KV cache on (tokens per second, prompt processing included), median over `repeats` runs (at most 3),
  after a warm-up generation of WARM_UP_TOKENS tokens.
- `peak_memory_bytes`: on CUDA, `torch.cuda.max_memory_allocated` during the measurement (weights +
  activations); on CPU, the process's peak resident set size sampled every 10 ms during the measurement
  (includes the Python runtime and lm-eval, so compare cells of one grid, not across machines).
- `weights_bytes`: bytes of the parameters and buffers as loaded (dtype-dependent; zeros still stored).

Device and thread count are recorded with every measurement: latency means nothing without them.
"""

from __future__ import annotations

import statistics
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import psutil
import torch
from torch import nn

SAMPLE_INTERVAL_S = 0.01
PROMPT_TOKENS = 16
WARM_UP_TOKENS = 2


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def _timed(function, device: torch.device, repeats: int, **warm_up_overrides: Any) -> list[float]:
    """Wall seconds of `repeats` calls of `function()` (after one untimed warm-up call, `function(**overrides)`)."""
    function(**warm_up_overrides)
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        function()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def weights_bytes(model: nn.Module) -> int:
    """Bytes of the parameters and buffers held in memory (tied weights once)."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


@torch.no_grad()
def measure_latency(model: nn.Module, batch: int = 1, seqlen: int = 128, new_tokens: int = 32,
                    repeats: int = 5, seed: int = 0) -> dict[str, Any]:
    """Forward latency, generation speed and peak memory of `model` (see the module docstring for units)."""
    device = next(model.parameters()).device
    vocab = int(model.get_input_embeddings().num_embeddings)
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randint(0, vocab, (batch, seqlen), generator=generator).to(device)
    prompt = torch.randint(0, vocab, (1, PROMPT_TOKENS), generator=generator).to(device)
    with peak_memory(device) as memory:
        forward = _timed(lambda: model(input_ids=inputs), device, repeats)
        generation = None
        if hasattr(model, "generate") and not getattr(model.config, "is_encoder_decoder", False):
            generation = _timed(lambda tokens=new_tokens: model.generate(
                prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=tokens,
                min_new_tokens=tokens, pad_token_id=0), device, min(repeats, 3), tokens=WARM_UP_TOKENS)
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


__all__ = ["measure_latency", "peak_memory", "weights_bytes", "device_info"]
