"""The leaderboard's dense reference for KL / top-1 agreement: built by the dense float32 cell from its own
forward, or, when a cell runs first without one, from the dense model loaded for it; cached and reused."""

from __future__ import annotations

import pytest

from sparse_bench.leaderboards.agreement import cell_agreement, reference_description, reference_file
from sparse_bench.leaderboards.cache import model_fingerprint
from sparse_bench.leaderboards.cells import expand_cells
from sparse_bench.leaderboards.spec_parser import parse_spec


def grid_spec(model: str, top_k: int):
    return parse_spec({"name": "t", "models": [model], "methods": ["magnitude"], "sparsities": [0.5],
                       "dtypes": ["float16", "float32"], "tasks": ["x"],
                       "perplexity": {"seqlen": 64, "max_tokens": 256, "agreement_top_k": top_k}}, source="t.yaml")


@pytest.fixture
def grid(tiny_llama):
    spec = grid_spec(str(tiny_llama), 4)
    return spec, expand_cells(spec), str(tiny_llama), model_fingerprint(str(tiny_llama))


def test_a_cell_without_a_dense_float32_cell_before_it_builds_the_reference(grid, tmp_path):
    spec, cells, path, fingerprint = grid
    dense_fp16 = next(c for c in cells if c.is_dense and c.dtype == "float16")
    first = cell_agreement(dense_fp16, spec, path, fingerprint, tmp_path)
    built = reference_file(tmp_path, reference_description(spec, fingerprint))
    assert first.meter.reference is not None and built.is_file()  # built before the cell's own forward
    assert first.meter.reference.top_k == 4 and first.meter.reference.token_ids.shape == (4, 64)
    dense_fp32 = next(c for c in cells if c.is_dense and c.dtype == "float32")
    again = cell_agreement(dense_fp32, spec, path, fingerprint, tmp_path)
    assert again.meter.reference is not None  # cached: loaded, not rebuilt
    assert len(list((tmp_path / "dense-references").iterdir())) == 1


def test_the_dense_float32_cell_builds_it_from_its_own_forward_and_off_means_none(grid, tmp_path):
    spec, cells, path, fingerprint = grid
    dense_fp32 = next(c for c in cells if c.is_dense and c.dtype == "float32")
    own = cell_agreement(dense_fp32, spec, path, fingerprint, tmp_path)
    assert own.meter.reference is None and not (tmp_path / "dense-references").exists()
    assert cell_agreement(dense_fp32, grid_spec(path, 0), path, fingerprint, tmp_path) is None
