"""The one layer-sequential calibration loop shared by every data-aware method (Wanda, SparseGPT, OWL).

The model runs up to its first transformer block once to capture that block's inputs (hidden states and
the extra arguments such as rotary position embeddings) for all calibration samples. Then the blocks run
one at a time: block i sees the outputs of blocks < i *after* they were pruned, as in the SparseGPT and
Wanda reference code. For each block the caller may collect input statistics (one forward with hooks),
change the block's weights, and the loop then runs the block again to produce the next block's inputs.

Input statistics are per distinct input, not per layer: layers that receive the same tensor in a forward
(q/k/v after the attention norm, gate/up after the MLP norm) share one `InputStatistics`. Statistics are
accumulated sample by sample in a fixed order, so they do not depend on the forward batch size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import UserError
from .targets import transformer_blocks

DEFAULT_BATCH_TOKENS = 2048


def default_batch_size(seqlen: int) -> int:
    """Samples per forward: about DEFAULT_BATCH_TOKENS tokens, at least one sample."""
    return max(1, DEFAULT_BATCH_TOKENS // seqlen)


class InputStatistics:
    """Sums over calibration tokens of one layer input x (fp64): x^T x (`hessian`) or x * x (`squares`).

    `hessian` is (in, in), the SparseGPT Hessian up to a constant factor; `squares` (in,) is its diagonal,
    Wanda's squared input-feature norms. Only what was asked is accumulated.

    Both sums are float64: a product of two fp32/fp16/bf16 inputs is exact in float64, and the sum's rounding
    (~1e-16 relative) is far below any score gap that selects a mask, so the masks do not depend on the BLAS
    kernel's summation order (thread count, CPU model). In fp32 the Hessian's rounding (~1e-5 relative over
    16k tokens), amplified by the inverse, flipped near-tie SparseGPT choices between machines.
    """

    def __init__(self, columns: int, with_hessian: bool, device: torch.device) -> None:
        self.tokens = 0
        self.squares = torch.zeros(columns, dtype=torch.float64, device=device)
        self.hessian = torch.zeros(columns, columns, dtype=torch.float64, device=device) if with_hessian else None

    def add(self, inputs: torch.Tensor) -> None:
        """Add one batch of inputs shaped (samples, tokens, in), sample by sample in order."""
        inputs = inputs.float()
        if self.hessian is not None:
            for sample in inputs:
                sample = sample.double()
                self.hessian.addmm_(sample.t(), sample)
        else:
            for sample_norms in torch.linalg.vector_norm(inputs, dim=1).double():
                self.squares += sample_norms.square()
        self.tokens += inputs.shape[0] * inputs.shape[1]

    def column_norms(self) -> torch.Tensor:
        """||X_j||_2 over all calibration tokens, shape (in,), fp32."""
        squares = self.hessian.diagonal().double() if self.hessian is not None else self.squares
        return squares.clamp_min(0).sqrt().float()


class _StopForward(Exception):
    """Raised by a hook to end a forward early: the inputs it needed are captured."""


@dataclass
class BlockInputs:
    """Inputs of the current block for all samples: hidden (samples, tokens, hidden) and per-batch extras."""

    hidden: torch.Tensor
    extras: list[tuple[tuple, dict[str, Any]]]
    batch_size: int

    def batches(self) -> Iterator[tuple[slice, tuple, dict[str, Any]]]:
        for index, (args, kwargs) in enumerate(self.extras):
            yield slice(index * self.batch_size, (index + 1) * self.batch_size), args, kwargs


def decoder_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The single block stack of a decoder-only model; UserError for anything the loop cannot walk."""
    blocks = transformer_blocks(model)
    stacks = sorted({name.rsplit(".", 1)[0] for name, _ in blocks})
    if len(stacks) != 1:
        raise UserError(f"layer-sequential calibration needs a decoder-only model with one block stack; "
                        f"{type(model).__name__} has {len(stacks)} ({', '.join(stacks) or 'none'}); "
                        "use method=magnitude, which needs no calibration")
    return blocks


@torch.no_grad()
def capture_block_inputs(model: nn.Module, first_block: nn.Module, tokens: torch.Tensor,
                         batch_size: int) -> BlockInputs:
    """Run the model on `tokens` (samples, seqlen) up to `first_block` and keep what it receives."""
    device = model.get_input_embeddings().weight.device
    captured: list[tuple[tuple, dict[str, Any]]] = []

    def hook(_module, args, kwargs):
        captured.append((args, kwargs))
        raise _StopForward

    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    hidden = None
    extras = []
    try:
        for start in range(0, tokens.shape[0], batch_size):
            try:
                model(input_ids=tokens[start:start + batch_size].to(device), use_cache=False)
            except _StopForward:
                pass
            args, kwargs = captured.pop()
            kwargs = dict(kwargs)
            if "hidden_states" in kwargs:
                states = kwargs.pop("hidden_states")
            else:
                states, args = args[0], args[1:]
            if hidden is None:
                hidden = torch.empty((tokens.shape[0], *states.shape[1:]), dtype=states.dtype, device=device)
            hidden[start:start + batch_size] = states
            extras.append((tuple(args), kwargs))
    finally:
        handle.remove()
    return BlockInputs(hidden=hidden, extras=extras, batch_size=batch_size)


@torch.no_grad()
def run_block(block: nn.Module, inputs: BlockInputs, outputs: torch.Tensor | None,
              on_batch=None) -> None:
    """Forward every batch through `block`, writing into `outputs` (same shape as inputs) when given.

    A hook may end a batch early by raising _StopForward; that batch then writes no output.
    """
    for rows, args, kwargs in inputs.batches():
        if on_batch is not None:
            on_batch(min(rows.stop, inputs.hidden.shape[0]) - rows.start)
        try:
            result = block(inputs.hidden[rows], *args, **kwargs)
        except _StopForward:
            continue
        if outputs is not None:
            outputs[rows] = result[0] if isinstance(result, (tuple, list)) else result


class _StatisticsHooks:
    """Forward pre-hooks that feed each layer's input into a shared-per-tensor InputStatistics."""

    def __init__(self, layers: dict[str, nn.Module], with_hessian: bool, stop_when_complete: bool) -> None:
        self.layers = layers
        self.with_hessian = with_hessian
        self.stop_when_complete = stop_when_complete
        self.stats: dict[str, InputStatistics] = {}
        self.samples = 0
        self._seen: dict[int, tuple[torch.Tensor, InputStatistics]] = {}
        self._reached: set[str] = set()
        self._handles = [module.register_forward_pre_hook(self._hook(name)) for name, module in layers.items()]

    def start_batch(self, samples: int) -> None:
        self.samples = samples
        self._seen.clear()
        self._reached.clear()

    def _hook(self, name: str):
        def hook(_module, args):
            inputs = args[0]
            shared = self._seen.get(id(inputs))
            if shared is not None and shared[0] is inputs:
                self.stats.setdefault(name, shared[1])
            else:
                stats = self.stats.get(name)
                if stats is None:
                    stats = InputStatistics(inputs.shape[-1], self.with_hessian, inputs.device)
                    self.stats[name] = stats
                stats.add(inputs.reshape(self.samples, -1, inputs.shape[-1]))
                self._seen[id(inputs)] = (inputs, stats)
            self._reached.add(name)
            if self.stop_when_complete and len(self._reached) == len(self.layers):
                raise _StopForward  # the rest of the block only makes outputs, which will be recomputed
        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._seen.clear()


@dataclass
class Stopwatch:
    """Seconds spent in block forwards (statistics included), summed over a whole loop."""

    seconds: float = 0.0

    def add_since(self, started: float) -> None:
        self.seconds += time.perf_counter() - started


@dataclass
class BlockStep:
    """One block of the layer-sequential loop, handed to the caller between the two forwards."""

    index: int
    name: str
    block: nn.Module
    inputs: BlockInputs
    outputs: torch.Tensor
    stopwatch: Stopwatch
    outputs_ready: bool = False
    modified: bool = False

    def collect(self, layers: dict[str, nn.Module], with_hessian: bool,
                keep_outputs: bool = True) -> dict[str, InputStatistics]:
        """Run the block once with hooks; {layer name: statistics of its input} (shared inputs share one).

        With `keep_outputs` the block's outputs of this forward are kept (final if no weight changes);
        without, each batch stops as soon as every layer has seen its input (the caller will prune).
        """
        hooks = _StatisticsHooks(layers, with_hessian, stop_when_complete=not keep_outputs)
        started = time.perf_counter()
        try:
            run_block(self.block, self.inputs, self.outputs if keep_outputs else None, on_batch=hooks.start_batch)
        finally:
            hooks.remove()
        self.stopwatch.add_since(started)
        self.outputs_ready = keep_outputs and not self.modified
        missing = sorted(set(layers) - set(hooks.stats))
        if missing:
            raise UserError(f"calibration never reached {missing[0]} in {self.name}: the layer is not used by "
                            "the block's forward; ignore it")
        return hooks.stats

    def mark_modified(self) -> None:
        """Tell the loop the block's weights changed, so its outputs must be recomputed."""
        self.modified = True
        self.outputs_ready = False


def layer_sequential(model: nn.Module, tokens: torch.Tensor, batch_size: int, stopwatch: Stopwatch,
                     progress: bool = True, description: str = "calibrating") -> Iterator[BlockStep]:
    """Yield one BlockStep per transformer block, in order; after each, produce the next block's inputs.

    Inputs of block i are outputs of blocks < i as they are after the caller's changes. Two buffers of
    (samples, tokens, hidden) in the model's dtype are reused for all blocks. `stopwatch` accumulates the
    time of the forwards (capture, statistics and block forwards).
    """
    blocks = decoder_blocks(model)
    started = time.perf_counter()
    inputs = capture_block_inputs(model, blocks[0][1], tokens, batch_size)
    stopwatch.add_since(started)
    outputs = torch.empty_like(inputs.hidden)
    for index, (name, block) in enumerate(tqdm(blocks, desc=description, unit="block", disable=not progress)):
        step = BlockStep(index=index, name=name, block=block, inputs=inputs, outputs=outputs, stopwatch=stopwatch)
        yield step
        if not step.outputs_ready:
            started = time.perf_counter()
            run_block(block, inputs, outputs)
            stopwatch.add_since(started)
        inputs.hidden, outputs = outputs, inputs.hidden


__all__ = ["DEFAULT_BATCH_TOKENS", "default_batch_size", "InputStatistics", "BlockInputs", "Stopwatch", "BlockStep",
           "decoder_blocks", "capture_block_inputs", "run_block", "layer_sequential"]
