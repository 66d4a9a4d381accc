"""Wall-clock timing of calls on CPU or GPU, and the random token inputs models are timed on.

Every timed call in the runtime package goes through `call_seconds`: on a GPU the queued kernels are waited for
before the clock starts and before it stops; on a CPU the call is synchronous.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch import nn


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (timing must not stop before the kernels finish); nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def call_seconds(call: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds of one `call()` on `device`."""
    synchronize(device)
    start = time.perf_counter()
    call()
    synchronize(device)
    return time.perf_counter() - start


def timed_calls(call: Callable[[], Any], device: torch.device, repeats: int,
                warm_up: Callable[[], Any] | None = None) -> list[float]:
    """Wall seconds of `repeats` calls of `call()`, after one untimed warm-up call (`warm_up()`, default `call()`)."""
    (warm_up or call)()
    return [call_seconds(call, device) for _ in range(repeats)]


def random_token_inputs(model: nn.Module, batch: int, length: int,
                        generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Keyword inputs for `model(**inputs)`: `batch` x `length` token ids drawn uniformly from the vocabulary with
    `generator`, on the model's device; an encoder-decoder gets the same ids on both sides."""
    vocab = int(model.get_input_embeddings().num_embeddings)
    ids = torch.randint(0, vocab, (batch, length), generator=generator).to(next(model.parameters()).device)
    return {"input_ids": ids, **({"decoder_input_ids": ids} if getattr(model.config, "is_encoder_decoder", False)
                                 else {})}


__all__ = ["synchronize", "call_seconds", "timed_calls", "random_token_inputs"]
