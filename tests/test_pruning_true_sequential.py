"""True-sequential pruning (one forward per block): exact sparsity, the inputs each layer sees, determinism, errors."""

from __future__ import annotations

import copy
import hashlib

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from sparse_bench.harness_ext.errors import UserError
from sparse_bench.harness_ext.pruning.calibration import (
    BlockInputs,
    BlockStep,
    Stopwatch,
    default_batch_size,
    layer_sequential,
)
from sparse_bench.harness_ext.pruning.calibration_data import calibration_tokens
from sparse_bench.harness_ext.pruning.engine import prune
from sparse_bench.harness_ext.pruning.plan import CalibrationConfig
from sparse_bench.harness_ext.pruning.request import shortcut_plan
from sparse_bench.harness_ext.pruning.targets import find_target_layers, weight_matrix
from sparse_bench.harness_ext.pruning.true_sequential import prune_in_one_forward, shared_input_groups
from sparse_bench.harness_ext.pruning.wanda import wanda_mask

CALIBRATION = CalibrationConfig(data="c4", nsamples=8, seqlen=64, seed=0, true_sequential=True)
REFERENCE = CalibrationConfig(data="c4", nsamples=8, seqlen=64, seed=0)


def _model(dirs, kind="llama"):
    return AutoModelForCausalLM.from_pretrained(dirs[kind], dtype=torch.float32), AutoTokenizer.from_pretrained(dirs[kind])


def _masks(model) -> dict[str, torch.Tensor]:
    return {name: weight_matrix(module) != 0 for name, module in find_target_layers(model).items()}


def _digest(model) -> str:
    digest = hashlib.sha256()
    for name, mask in _masks(model).items():
        digest.update(name.encode())
        digest.update(mask.numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("kind", ["llama", "gpt2", "opt"])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("structure", [None, "2:4"])
def test_sparsity_is_exact_per_layer(tiny_model_dirs, kind, method, structure):
    model, tokenizer = _model(tiny_model_dirs, kind)
    report = prune(model, shortcut_plan(method, None if structure else 0.5, structure), CALIBRATION, tokenizer,
                   progress=False)
    for name, module in find_target_layers(model).items():
        weight = weight_matrix(module)
        if structure:
            assert bool(((weight.reshape(-1, 4) != 0).sum(dim=1) <= 2).all()), name  # tiny OPT has zeros already
        elif method == "wanda":
            assert bool(((weight == 0).sum(dim=1) == weight.shape[1] // 2).all()), name  # per output row
        else:
            assert report.layers[name].zeros == weight.numel() // 2, name
    assert report.calibration["true_sequential"] is True


def _block0_input_norms(model, tokenizer, layer_names: list[str]) -> dict[str, torch.Tensor]:
    """||X_j|| of each layer's input in block 0 when the model (as it is now) runs on the calibration tokens."""
    tokens, _, _ = calibration_tokens(CALIBRATION, tokenizer)
    with torch.no_grad():
        block = next(layer_sequential(model, tokens, default_batch_size(64), Stopwatch(), progress=False))
        stats = block.collect({name: model.get_submodule(name) for name in layer_names}, with_hessian=False)
    return {name: stats[name].column_norms() for name in layer_names}


def test_each_layer_is_pruned_from_the_outputs_of_the_pruned_layers_before_it(tiny_model_dirs):
    """o_proj and down_proj masks == Wanda on inputs made by the *pruned* block (the default: the dense block)."""
    dense, tokenizer = _model(tiny_model_dirs)
    true_sequential, reference = copy.deepcopy(dense), copy.deepcopy(dense)
    prune(true_sequential, shortcut_plan("wanda", 0.5), CALIBRATION, tokenizer, progress=False)
    prune(reference, shortcut_plan("wanda", 0.5), REFERENCE, tokenizer, progress=False)
    names = ["model.layers.0.self_attn.o_proj", "model.layers.0.mlp.down_proj"]
    pruned_block_norms = _block0_input_norms(true_sequential, tokenizer, names)
    dense_block_norms = _block0_input_norms(dense, tokenizer, names)
    for name in names:
        dense_weight = weight_matrix(dense.get_submodule(name))
        got = weight_matrix(true_sequential.get_submodule(name)) != 0
        assert torch.equal(got, wanda_mask(dense_weight, pruned_block_norms[name], 0.5)), name
        assert torch.equal(weight_matrix(reference.get_submodule(name)) != 0,
                           wanda_mask(dense_weight, dense_block_norms[name], 0.5)), name
        assert not torch.equal(got, weight_matrix(reference.get_submodule(name)) != 0), name  # the modes differ
    q_proj = "model.layers.0.self_attn.q_proj"  # the first layer of the block sees the same input in both modes
    assert torch.equal(_masks(true_sequential)[q_proj], _masks(reference)[q_proj])


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_masks_do_not_depend_on_the_batch_size(tiny_model_dirs, method):
    digests = set()
    for batch_size in (1, 3, 8):
        model, tokenizer = _model(tiny_model_dirs)
        prune(model, shortcut_plan(method, 0.5), CALIBRATION, tokenizer, progress=False, batch_size=batch_size)
        digests.add(_digest(model))
    assert len(digests) == 1


def test_layers_reading_one_tensor_are_grouped(tiny_model_dirs):
    model, tokenizer = _model(tiny_model_dirs)
    tokens, _, _ = calibration_tokens(CALIBRATION, tokenizer)
    layers = {name: module for name, module in find_target_layers(model).items()
              if name.startswith("model.layers.0.")}
    with torch.no_grad():
        block = next(layer_sequential(model, tokens, 4, Stopwatch(), progress=False))
        groups = shared_input_groups(block, layers)
    assert groups == [("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.o_proj",),
                      ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",)]


class _Branching(nn.Module):
    """A block whose path depends on the data: positive inputs take `left`, the others `right`."""

    def __init__(self) -> None:
        super().__init__()
        self.left, self.right, self.unused = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.left(hidden) if hidden.sum() > 0 else self.right(hidden)


def _step(block: nn.Module, hidden: torch.Tensor) -> BlockStep:
    inputs = BlockInputs(hidden=hidden, extras=[((), {})] * hidden.shape[0], batch_size=1)
    return BlockStep(index=0, name="block", block=block, inputs=inputs, outputs=torch.empty_like(hidden),
                     stopwatch=Stopwatch())


def test_batches_taking_different_paths_are_an_error():
    block = _Branching()
    step = _step(block, torch.stack([torch.ones(3, 4), -torch.ones(3, 4)]))
    with pytest.raises(UserError, match="different paths through block.*true_sequential=false"):
        prune_in_one_forward(step, {"left": block.left, "right": block.right}, [], False, lambda *_: None)


def test_a_layer_the_forward_never_runs_is_an_error():
    block = _Branching()
    step = _step(block, torch.ones(2, 3, 4))
    pruned = []
    with pytest.raises(UserError, match="never reached unused"):
        prune_in_one_forward(step, {"left": block.left, "unused": block.unused}, [], False,
                             lambda names, stats: pruned.append((names, stats.tokens)))
    assert pruned == [(["left"], 6)]  # the reachable layer was pruned once, from all 2 x 3 tokens
