"""Block-structured sparsity (structure=block:RxC): whole tiles pruned, exact counts, every entry point."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sparse_bench.harness_ext.errors import UserError
from sparse_bench.harness_ext.pruning.engine import prune
from sparse_bench.harness_ext.pruning.magnitude import magnitude_mask
from sparse_bench.harness_ext.pruning.masks import block_sums
from sparse_bench.harness_ext.pruning.plan import CalibrationConfig
from sparse_bench.harness_ext.pruning.request import shortcut_plan
from sparse_bench.harness_ext.pruning.sparsegpt import sparsegpt_prune
from sparse_bench.harness_ext.pruning.targets import find_target_layers, weight_matrix
from sparse_bench.harness_ext.pruning.values import BlockStructure, parse_structure
from sparse_bench.harness_ext.pruning.wanda import wanda_mask


def _tiles_whole(keep: torch.Tensor, structure: BlockStructure) -> bool:
    """Every R x C tile entirely kept or entirely pruned."""
    kept = block_sums(keep.float(), structure)
    return bool(((kept == 0) | (kept == structure.size)).all())


@pytest.mark.parametrize("text, expected", [
    ("block:1x4", BlockStructure(1, 4)), ("BLOCK:4x1", BlockStructure(4, 1)), ("block:1x1", None),
    ("2:4", None), ("unstructured", None),
])
def test_parse_block_structure(text, expected):
    parsed = parse_structure(text)
    assert parsed == expected or (text == "2:4" and str(parsed) == "2:4")


@pytest.mark.parametrize("text", ["block:0x4", "block:1x", "block:ax4", "block:1x4x2"])
def test_malformed_block_is_a_user_error(text):
    with pytest.raises(UserError, match="block:RxC"):
        parse_structure(text)


def test_magnitude_block_mask_prunes_lowest_tile_sums_exactly():
    weight = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
    structure = BlockStructure(2, 4)
    keep = magnitude_mask(weight, 0.75, structure)
    assert _tiles_whole(keep, structure)
    assert int((~keep).sum()) == round(0.75 * 64) * structure.size  # 64 tiles, 48 pruned
    sums = block_sums(weight.abs(), structure)
    tile_kept = block_sums(keep.float(), structure) > 0
    assert sums[tile_kept].min() >= sums[~tile_kept].max()  # kept tiles outscore every pruned one


def test_wanda_block_mask_prunes_per_row_of_tiles():
    weight = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    norms = torch.rand(16, generator=torch.Generator().manual_seed(2)) + 0.1
    keep = wanda_mask(weight, norms, 0.5, BlockStructure(1, 4))
    assert _tiles_whole(keep, BlockStructure(1, 4))
    assert (keep.sum(dim=1) == 8).all()  # each row keeps 2 of its 4 tiles


def test_sparsegpt_block_mask_is_tiled_and_exact():
    generator = torch.Generator().manual_seed(3)
    weight, inputs = torch.randn(8, 32, generator=generator), torch.randn(200, 32, generator=generator)
    pruned, _ = sparsegpt_prune(weight, inputs.t() @ inputs, [(8, 0.5)], BlockStructure(2, 4), 8, 0.01)
    assert _tiles_whole(pruned != 0, BlockStructure(2, 4))
    assert int((pruned == 0).sum()) == 128


def test_block_structure_prunes_a_tiny_model_through_the_engine(tiny_llama, tiny_calibration_file):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    report = prune(model, shortcut_plan("wanda", 0.5, "block:1x4"),
                   CalibrationConfig(str(tiny_calibration_file), nsamples=4, seqlen=32), tokenizer, progress=False)
    for name, layer in find_target_layers(model).items():
        assert _tiles_whole(weight_matrix(layer) != 0, BlockStructure(1, 4)), name
    assert abs(report.overall_sparsity - 0.5) < 1e-6
    assert report.plan["steps"][0]["structure"] == "block:1x4"


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "admm", "sparsity": 0.5}, "cannot choose block masks"),
    ({"method": "magnitude", "sparsity": None}, "needs a target"),
    ({"method": "wanda", "sparsity": 0.5, "scope": "global"}, "scope=global"),
])
def test_block_structure_bad_combinations(kwargs, message):
    with pytest.raises(UserError, match=message):
        shortcut_plan(kwargs.pop("method"), kwargs.pop("sparsity"), "block:1x4", **kwargs)


def test_block_that_does_not_tile_a_layer_is_refused_before_pruning(tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    before = {name: weight_matrix(layer).clone() for name, layer in find_target_layers(model).items()}
    with pytest.raises(UserError, match="block:1x3 tiles do not divide"):
        prune(model, shortcut_plan("magnitude", 0.5, "block:1x3"), CalibrationConfig())
    assert all(torch.equal(before[name], weight_matrix(layer)) for name, layer in find_target_layers(model).items())


def test_block_structure_in_a_grid_spec_makes_a_cell_per_sparsity():
    from sparse_bench.leaderboards.cells import expand_cells, pruned_model_groups
    from sparse_bench.leaderboards.spec_parser import parse_spec

    spec = parse_spec({"models": ["m"], "methods": ["wanda"], "sparsities": [0.5, 0.8],
                       "structures": ["unstructured", "block:1x4"], "tasks": ["t"]})
    cells = [cell for cell in expand_cells(spec) if cell.block]
    assert [(cell.structure_label, cell.sparsity) for cell in cells] == [("block:1x4", 0.5), ("block:1x4", 0.8)]
    assert str(cells[0].plan().steps[0].structure) == "block:1x4" and cells[0].plan().steps[0].sparsity == 0.5
    assert len(pruned_model_groups(expand_cells(spec))) == 5  # dense, 2 unstructured, 2 block: none shared
    with pytest.raises(UserError, match="sparsities.*block:1x4"):
        parse_spec({"models": ["m"], "methods": ["wanda"], "structures": ["block:1x4"], "tasks": ["t"]})
