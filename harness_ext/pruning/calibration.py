"""The one layer-sequential calibration loop shared by every data-aware method (Wanda, SparseGPT, OWL).

It walks every transformer block stack of the model in order: the one stack of a decoder-only or an
encoder-only model, or the encoder stack and then the decoder stack of an encoder-decoder model. For each
stack the whole model runs once up to the stack's first block to capture that block's inputs (hidden states
and the extra arguments such as attention masks, rotary embeddings, T5's position bias, and for a decoder
the encoder's hidden states for cross-attention) for all calibration samples. Because that forward runs
through the stacks already walked, the decoder's cross-attention sees the *pruned* encoder's outputs. Then
the blocks run one at a time: block i sees the outputs of blocks < i *after* they were pruned, as in the
SparseGPT and Wanda reference code. For each block the caller may collect input statistics (one forward with
hooks), change the block's weights, and the loop then runs the block again to produce the next block's inputs.

Block discovery, the forward arguments of each family and input capture live in block_inputs.py, with
the assumptions the loop checks about the stacks it walks.

Input statistics are per distinct input, not per layer: layers that receive the same tensor in a forward
(q/k/v after the attention norm, gate/up after the MLP norm, cross-attention k/v on the encoder's states)
share one `InputStatistics`. Statistics are accumulated sample by sample in a fixed order, so they do not
depend on the forward batch size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import UserError
from .block_inputs import BlockInputs, StopForward, block_stacks, capture_block_inputs, model_inputs, run_block

DEFAULT_BATCH_TOKENS = 2048


def default_batch_size(seqlen: int) -> int:
    """Samples per forward: about DEFAULT_BATCH_TOKENS tokens, at least one sample."""
    return max(1, DEFAULT_BATCH_TOKENS // seqlen)


class InputStatistics:
    """Sums over calibration tokens of one layer input x (fp64): x^T x (`hessian`) or x * x (`squares`),
    and x itself (`sums`).

    `hessian` is (in, in), the SparseGPT Hessian up to a constant factor; `squares` (in,) is its diagonal,
    Wanda's squared input-feature norms (only one of the two is accumulated, as asked); `sums` (in,), always
    accumulated, gives the per-feature mean and variance DSnoT needs.

    Both sums are float64: a product of two fp32/fp16/bf16 inputs is exact in float64, and the sum's rounding
    (~1e-16 relative) is far below any score gap that selects a mask, so the order in which tokens are summed
    does not change a mask (the fp32 inputs themselves may still differ in their last bits between thread counts). In fp32 the Hessian's rounding (~1e-5 relative over
    16k tokens), amplified by the inverse, flipped near-tie SparseGPT choices between machines.
    """

    def __init__(self, columns: int, with_hessian: bool, device: torch.device) -> None:
        self.tokens = 0
        self.squares = torch.zeros(columns, dtype=torch.float64, device=device)
        self.sums = torch.zeros(columns, dtype=torch.float64, device=device)
        self.hessian = torch.zeros(columns, columns, dtype=torch.float64, device=device) if with_hessian else None

    def add(self, inputs: torch.Tensor) -> None:
        """Add one batch of inputs shaped (samples, tokens, in), sample by sample in order."""
        inputs = inputs.float()
        for sample in inputs:
            self.sums += sample.double().sum(dim=0)
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

    def feature_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean E[x_j], variance E[x_j^2] - E[x_j]^2) of each input feature over all tokens, (in,) fp64 each."""
        squares = self.hessian.diagonal() if self.hessian is not None else self.squares
        mean = self.sums / max(self.tokens, 1)
        return mean, (squares / max(self.tokens, 1) - mean.square()).clamp_min(0)


def per_sample(inputs: torch.Tensor, samples: int) -> torch.Tensor:
    """A layer input of one forward over `samples` samples as (samples, tokens, in) for InputStatistics.add.

    Inputs are batch-major: (samples, tokens, in), or flattened to (samples * tokens, in) as OPT's MLP does.
    An input shared by the whole batch, (1, tokens, in) while the batch holds more samples (DeBERTa's relative
    position embeddings going through pos_key_proj), counts once per sample, so the sums, added sample by
    sample, do not depend on how the samples are grouped into batches.
    """
    if inputs.dim() >= 3 and inputs.shape[0] == 1 and samples > 1:
        return inputs.reshape(1, -1, inputs.shape[-1]).expand(samples, -1, -1)
    return inputs.reshape(samples, -1, inputs.shape[-1])


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
                stats.add(per_sample(inputs, self.samples))
                self._seen[id(inputs)] = (inputs, stats)
            self._reached.add(name)
            if self.stop_when_complete and len(self._reached) == len(self.layers):
                raise StopForward  # the rest of the block only makes outputs, which will be recomputed
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
    stack: str = ""  # the block stack it belongs to, e.g. "model.encoder.layers"

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
    """Yield one BlockStep per transformer block, stack by stack in order; after each, make the next inputs.

    `tokens` (samples, seqlen) feed every side (see `model_inputs`). Inputs of block i are outputs of blocks
    < i of its stack as they are after the caller's changes; a later stack's inputs come from a forward through
    the already changed earlier stacks. Two buffers of (samples, tokens, hidden) in the model's dtype are
    reused for all blocks of a stack. `stopwatch` accumulates the time of the forwards (capture, statistics
    and block forwards).
    """
    stacks = block_stacks(model)
    inputs_by_name = model_inputs(model, tokens)
    position = 0
    with tqdm(total=sum(len(blocks) for _, blocks in stacks), desc=description, unit="block",
              disable=not progress) as bar:
        for stack, blocks in stacks:
            started = time.perf_counter()
            inputs = capture_block_inputs(model, blocks, inputs_by_name, batch_size)
            stopwatch.add_since(started)
            outputs = torch.empty_like(inputs.hidden)
            for name, block in blocks:
                step = BlockStep(index=position, name=name, stack=stack, block=block, inputs=inputs,
                                 outputs=outputs, stopwatch=stopwatch)
                yield step
                if not step.outputs_ready:
                    started = time.perf_counter()
                    run_block(block, inputs, outputs)
                    stopwatch.add_since(started)
                inputs.hidden, outputs = outputs, inputs.hidden
                inputs.use_later_extras()
                position += 1
                bar.update()


__all__ = ["DEFAULT_BATCH_TOKENS", "default_batch_size", "InputStatistics", "per_sample", "BlockInputs", "Stopwatch", "BlockStep",
           "capture_block_inputs", "run_block", "layer_sequential"]
