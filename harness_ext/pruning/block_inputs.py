"""Block discovery and input capture for the layer-sequential calibration loop (calibration.py).

`block_stacks` finds the block stacks the loop walks (one for decoder-only and encoder-only models, encoder
then decoder for encoder-decoder models); `model_inputs` turns calibration tokens into the forward arguments
of any family; `capture_block_inputs` runs the model up to a stack's first block and keeps what that block
receives for every calibration batch; `run_block` forwards a block over all of them.

What the loop assumes, and `capture_block_inputs` checks on the first calibration batch: the stack passes each
block's output unchanged to the next block (a model that transforms hidden states between blocks, like
DeBERTa-v2 with `conv_kernel_size > 0`, is refused), and every block after the first receives the same extra
arguments (the first may differ: T5's first block computes the relative position bias the others receive).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import UserError
from .targets import transformer_blocks


class StopForward(Exception):
    """Raised by a hook to end a forward early: the inputs it needed are captured."""


@dataclass
class BlockInputs:
    """Inputs of the current block for all samples: hidden (samples, tokens, hidden) and per-batch extras.

    `extras[b]` is the (args, kwargs) the stack gave its first block for batch b; `later_extras`, when the
    blocks after the first receive other arguments (T5's shared position bias), what they receive.
    """

    hidden: torch.Tensor
    extras: list[tuple[tuple, dict[str, Any]]]
    batch_size: int
    later_extras: list[tuple[tuple, dict[str, Any]]] | None = None

    def batches(self) -> Iterator[tuple[slice, tuple, dict[str, Any]]]:
        for index, (args, kwargs) in enumerate(self.extras):
            yield slice(index * self.batch_size, (index + 1) * self.batch_size), args, kwargs

    def use_later_extras(self) -> None:
        """From the second block of the stack on: the arguments the stack gives every later block."""
        if self.later_extras is not None:
            self.extras, self.later_extras = self.later_extras, None


def block_stacks(model: nn.Module) -> list[tuple[str, list[tuple[str, nn.Module]]]]:
    """[(stack name, [(block name, block), ...])] in execution order; UserError for what the loop cannot walk.

    One stack for decoder-only and encoder-only models; encoder then decoder for encoder-decoder models.
    """
    stacks: dict[str, list[tuple[str, nn.Module]]] = {}
    for name, block in transformer_blocks(model):
        stacks.setdefault(name.rsplit(".", 1)[0], []).append((name, block))
    expected = 2 if getattr(getattr(model, "config", None), "is_encoder_decoder", False) else 1
    if len(stacks) != expected:
        raise UserError(f"layer-sequential calibration expects {expected} block stack(s) in "
                        f"{type(model).__name__} but found {len(stacks)} ({', '.join(stacks) or 'none'}); "
                        "use method=magnitude, which needs no calibration")
    return list(stacks.items())


def model_inputs(model: nn.Module, tokens: torch.Tensor) -> dict[str, Any]:
    """Keyword arguments of the model's forward for calibration tokens (samples, seqlen), for every family.

    input_ids with an all-ones attention mask (and zero token types where the model takes them); an
    encoder-decoder model reads the same tokens on both sides, the decoder's shifted right behind the
    config's `decoder_start_token_id`, as the models do with labels in training.
    """
    parameters = inspect.signature(model.forward).parameters
    inputs: dict[str, Any] = {"input_ids": tokens, "attention_mask": torch.ones_like(tokens)}
    if "token_type_ids" in parameters:
        inputs["token_type_ids"] = torch.zeros_like(tokens)
    if getattr(model.config, "is_encoder_decoder", False):
        start = getattr(model.config, "decoder_start_token_id", None)
        if start is None:
            raise UserError(f"{type(model).__name__}'s config has no decoder_start_token_id, so calibration "
                            "cannot make decoder inputs; set it in config.json")
        inputs["decoder_input_ids"] = torch.cat([torch.full_like(tokens[:, :1], start), tokens[:, :-1]], dim=1)
    if "use_cache" in parameters:
        inputs["use_cache"] = False
    return inputs


def _split_hidden(args: tuple, kwargs: dict[str, Any]) -> tuple[torch.Tensor, tuple, dict[str, Any]]:
    """(hidden states, other args, other kwargs) of one block call."""
    kwargs = dict(kwargs)
    if "hidden_states" in kwargs:
        return kwargs.pop("hidden_states"), tuple(args), kwargs
    return args[0], tuple(args[1:]), kwargs


def _block_output(result: Any) -> torch.Tensor:
    return result[0] if isinstance(result, (tuple, list)) else result


def _same(first: Any, second: Any) -> bool:
    """Structural equality of block arguments: tensors by value, containers item by item."""
    if isinstance(first, torch.Tensor) or isinstance(second, torch.Tensor):
        return (isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor) and first.shape == second.shape
                and first.dtype == second.dtype and torch.equal(first, second))
    if isinstance(first, (tuple, list)):
        return (type(first) is type(second) and len(first) == len(second)
                and all(_same(a, b) for a, b in zip(first, second)))
    if isinstance(first, dict):
        return isinstance(second, dict) and first.keys() == second.keys() and all(
            _same(first[key], second[key]) for key in first)
    return first is second or (type(first) is type(second) and first == second)


def _share_equal(value: Any, reference: Any) -> Any:
    """`value` with each tensor equal to the one at the same place in `reference` replaced by that one.

    Batches of one calibration set mostly receive equal extras (rotary tables, T5's position bias): they are
    then held once, not once per batch.
    """
    if isinstance(value, torch.Tensor):
        return reference if _same(value, reference) else value
    if isinstance(value, (tuple, list)) and isinstance(reference, type(value)) and len(value) == len(reference):
        return type(value)(_share_equal(item, other) for item, other in zip(value, reference))
    if isinstance(value, dict) and isinstance(reference, dict):
        return {key: _share_equal(item, reference.get(key)) for key, item in value.items()}
    return value


def _run_to_blocks(model: nn.Module, batch: dict[str, Any],
                   blocks: list[tuple[str, nn.Module]]) -> list[tuple[torch.Tensor, tuple, dict[str, Any]]]:
    """Forward one batch until the last of `blocks` is called; what each of `blocks` received."""
    received: dict[int, tuple[torch.Tensor, tuple, dict[str, Any]]] = {}

    def hook_for(index: int):
        def hook(_module, args, kwargs):
            received[index] = _split_hidden(args, kwargs)
            if index == len(blocks) - 1:
                raise StopForward
        return hook

    handles = [block.register_forward_pre_hook(hook_for(index), with_kwargs=True)
               for index, (_, block) in enumerate(blocks)]
    try:
        model(**batch)
    except StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for index, (name, _) in enumerate(blocks) if index not in received]
    if missing:
        raise UserError(f"the calibration forward of {type(model).__name__} never reached {missing[0]}; "
                        "use method=magnitude, which needs no calibration")
    return [received[index] for index in range(len(blocks))]


def _later_blocks_differ(blocks: list[tuple[str, nn.Module]],
                         received: list[tuple[torch.Tensor, tuple, dict[str, Any]]]) -> bool:
    """Check the loop's assumptions on the first blocks of one batch; True if block 1's extras differ from 0's.

    Each block's output must be the next block's input, and blocks 1 and 2 must receive equal extras.
    """
    for (name, block), (states, args, kwargs), (next_name, _), (next_states, _, _) in zip(
            blocks, received, blocks[1:], received[1:]):
        output = _block_output(block(states, *args, **kwargs))
        if output.shape != next_states.shape or not torch.allclose(output.float(), next_states.float(),
                                                                   rtol=1e-3, atol=1e-4):
            raise UserError(f"the model changes the hidden states between {name} and {next_name} (e.g. "
                            "DeBERTa-v2's conv layer), which layer-sequential calibration cannot follow; use "
                            "method=magnitude")
    extras = [(args, kwargs) for _, args, kwargs in received]
    if len(extras) == 3 and not _same(extras[1], extras[2]):
        raise UserError(f"the blocks after {blocks[0][0]} receive different arguments from one another, which "
                        "layer-sequential calibration cannot follow; use method=magnitude")
    return len(extras) > 1 and not _same(extras[0], extras[1])


@torch.no_grad()
def capture_block_inputs(model: nn.Module, blocks: list[tuple[str, nn.Module]], inputs: dict[str, Any],
                         batch_size: int, allocate=torch.empty) -> BlockInputs:
    """Run the model on calibration `inputs` (see `model_inputs`) up to `blocks[0]`; keep what it receives.

    `allocate(shape, dtype, device)` makes the hidden-state buffer (all samples).

    The first batch runs on to the third block to check the loop's assumptions; when the later blocks receive
    other extras than the first (T5), every batch runs on to the second block to capture them too.
    """
    device = model.get_input_embeddings().weight.device
    samples = inputs["input_ids"].shape[0]

    def batch(start: int) -> dict[str, Any]:
        return {key: value[start:start + batch_size].to(device) if isinstance(value, torch.Tensor) else value
                for key, value in inputs.items()}

    probe = _run_to_blocks(model, batch(0), blocks[:3])
    later_differ = _later_blocks_differ(blocks[:3], probe)
    watched = blocks[:2] if later_differ else blocks[:1]
    hidden, extras, later = None, [], []
    for start in range(0, samples, batch_size):
        received = probe if start == 0 else _run_to_blocks(model, batch(start), watched)
        states, args, kwargs = received[0]
        if hidden is None:
            hidden = allocate((samples, *states.shape[1:]), dtype=states.dtype, device=device)
        hidden[start:start + batch_size] = states
        extras.append(_share_equal((args, kwargs), extras[0] if extras else None))
        if later_differ:
            later.append(_share_equal(received[1][1:], later[0] if later else None))
    return BlockInputs(hidden=hidden, extras=extras, batch_size=batch_size, later_extras=later or None)


@torch.no_grad()
def run_block(block: nn.Module, inputs: BlockInputs, outputs: torch.Tensor | None,
              on_batch=None) -> None:
    """Forward every batch through `block`, writing into `outputs` (same shape as inputs) when given.

    A hook may end a batch early by raising StopForward; that batch then writes no output.
    """
    for rows, args, kwargs in inputs.batches():
        if on_batch is not None:
            on_batch(min(rows.stop, inputs.hidden.shape[0]) - rows.start)
        try:
            result = block(inputs.hidden[rows], *args, **kwargs)
        except StopForward:
            continue
        if outputs is not None:
            outputs[rows] = _block_output(result)


__all__ = ["BlockInputs", "block_stacks", "model_inputs", "capture_block_inputs", "run_block"]
