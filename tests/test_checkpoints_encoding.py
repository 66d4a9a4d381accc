"""Per-tensor encodings: every encoding round-trips bit for bit, its size formula is the bytes it writes, and the
chosen encoding stays within 5 % of the bound (values + mask information) at 50 / 90 / 99 % and N:M."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparse_bench.harness_ext.checkpoints.container import (
    WEIGHTS_NAME,
    predicted_file_bytes,
    read_compressed,
    write_compressed,
)
from sparse_bench.harness_ext.checkpoints.encoding import (
    candidate_encodings,
    choose_encoding,
    decode,
    encode,
    mask_bound_bits,
    mask_stats,
    nonzero_mask,
)
from sparse_bench.harness_ext.errors import UserError

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(-1).view(torch.uint8)


def random_sparse(shape, sparsity: float, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=generator)
    weight[torch.rand(shape, generator=generator) < sparsity] = 0.0
    return weight.to(dtype)


def n_m_sparse(shape, n: int, m: int, dim: int = -1, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    """Keep the n largest of every m consecutive weights along `dim` (0 or -1) of a 2-D tensor."""
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    rows = weight.T if dim == 0 else weight
    groups = rows.contiguous().reshape(-1, m)
    groups.scatter_(1, groups.abs().topk(m - n, dim=1, largest=False).indices, 0.0)
    rows = groups.reshape(rows.shape)
    return (rows.T if dim == 0 else rows).contiguous().to(dtype)


def bound_bytes(tensor: torch.Tensor) -> float:
    stats = mask_stats(nonzero_mask(tensor))
    return (stats.nnz * tensor.element_size() * 8 + mask_bound_bits(stats)) / 8


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9, 0.99, 1.0])
def test_every_encoding_round_trips_and_writes_its_formula(sparsity, dtype):
    weight = random_sparse((64, 96), sparsity, dtype)
    for encoding in candidate_encodings(mask_stats(nonzero_mask(weight)), weight.element_size()):
        parts = encode(weight, encoding)
        assert sum(part.numel() * part.element_size() for part in parts.values()) == encoding.nbytes, encoding
        decoded = decode(parts, encoding.kind, list(weight.shape), dtype, encoding.params, "w")
        assert decoded.dtype == dtype and torch.equal(_bits(decoded), _bits(weight)), encoding


@pytest.mark.parametrize("n, m, dim", [(2, 4, -1), (2, 4, 0), (4, 8, -1), (1, 4, -1), (4, 8, 0)])
def test_n_m_tensors_pick_the_n_m_encoding_and_round_trip(n, m, dim):
    weight = n_m_sparse((64, 128), n, m, dim)
    weight[3, :8] = 0.0  # groups with fewer than n non-zeros store explicit zeros in their spare slots
    encoding = choose_encoding(weight)
    assert (encoding.kind, encoding.params["n"], encoding.params["m"]) == ("nm", n, m)
    assert encoding.params["axis"] == dim
    decoded = decode(encode(weight, encoding), "nm", [64, 128], weight.dtype, encoding.params, "w")
    assert torch.equal(decoded, weight)


def test_negative_zero_nan_and_infinities_survive():
    weight = torch.zeros(1000)
    weight[[3, 500, 998]] = torch.tensor([-0.0, float("nan"), float("-inf")])
    encoding = choose_encoding(weight)
    assert encoding.kind == "rice" and encoding.params["nnz"] == 3  # -0.0 is a non-zero bit pattern
    decoded = decode(encode(weight, encoding), "rice", [1000], torch.float32, encoding.params, "w")
    assert torch.equal(_bits(decoded), _bits(weight))


def test_the_choice_follows_sparsity():
    assert choose_encoding(random_sparse((256, 256), 0.0)).kind == "dense"
    assert choose_encoding(random_sparse((256, 256), 0.5)).kind == "bitmask"
    assert choose_encoding(random_sparse((256, 256), 0.9)).params == {"nnz": pytest.approx(6554, rel=0.05),
                                                                      "k": 3, "zeros": False}
    low = choose_encoding(random_sparse((256, 256), 0.1))
    assert low.kind == "rice" and low.params["zeros"] is True  # indexes the few zeros instead
    assert choose_encoding(torch.arange(10)).kind == "dense"  # integer buffers stay as they are


def test_mask_bound_is_the_binomial_or_the_n_m_count():
    weight = random_sparse((128, 128), 0.9)
    stats = mask_stats(nonzero_mask(weight))
    n, k = stats.numel, stats.nnz
    expected = math.log2(math.comb(n, k))
    assert mask_bound_bits(stats) == pytest.approx(expected, rel=1e-9)
    two_four = mask_stats(nonzero_mask(n_m_sparse((128, 128), 2, 4)))
    assert mask_bound_bits(two_four) == pytest.approx(128 * 128 / 4 * math.log2(6), rel=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["0.5", "0.9", "0.99", "2:4", "4:8"])
def test_file_within_five_percent_of_the_bound(tmp_path, kind, dtype):
    """The whole file (header included) against the bound, on a 1024 x 1024 layer."""
    if ":" in kind:
        n, m = map(int, kind.split(":"))
        weight = n_m_sparse((1024, 1024), n, m, dtype=dtype)
    else:
        weight = random_sparse((1024, 1024), float(kind), dtype)
    tensors = {"layer.weight": weight}
    encodings = {"layer.weight": choose_encoding(weight)}
    written = write_compressed(tmp_path / WEIGHTS_NAME, tensors, encodings, {})
    assert written == predicted_file_bytes(tensors, encodings, {})
    assert written <= 1.05 * bound_bytes(weight), (encodings, written / bound_bytes(weight))
    assert torch.equal(_bits(read_compressed(tmp_path / WEIGHTS_NAME)["layer.weight"]), _bits(weight))


def test_predicted_bytes_match_a_file_of_mixed_dtypes_and_aliases(tmp_path):
    tensors = {"a.weight": random_sparse((32, 64), 0.9), "b.weight": random_sparse((16, 16), 0.5, torch.float16),
               "c.bias": torch.randn(64, dtype=torch.bfloat16), "d.ids": torch.arange(7),
               "e.weight": n_m_sparse((8, 64), 2, 4), "f.flag": torch.tensor([True, False])}
    encodings = {name: choose_encoding(tensor) for name, tensor in tensors.items()}
    aliases = {"lm_head.weight": "a.weight"}
    written = write_compressed(tmp_path / WEIGHTS_NAME, tensors, encodings, aliases)
    assert written == predicted_file_bytes(tensors, encodings, aliases)
    state = read_compressed(tmp_path / WEIGHTS_NAME)
    assert state["lm_head.weight"] is state["a.weight"]
    for name, tensor in tensors.items():
        assert state[name].dtype == tensor.dtype and torch.equal(state[name], tensor)


@pytest.mark.parametrize("part, kind", [("mask", "bitmask"), ("unary", "rice"), ("rest", "rice"),
                                        ("ranks", "nm")])
def test_damaged_streams_are_refused(part, kind):
    weight = {"bitmask": random_sparse((64, 64), 0.5), "rice": random_sparse((64, 64), 0.95),
              "nm": n_m_sparse((64, 64), 2, 4)}[kind]
    encoding = choose_encoding(weight)
    assert encoding.kind == kind
    parts = encode(weight, encoding)
    parts[part] = parts[part][:-1]  # one byte short
    with pytest.raises(UserError, match="corrupt"):
        decode(parts, kind, [64, 64], weight.dtype, encoding.params, "w")


def test_out_of_range_n_m_rank_is_refused():
    weight = n_m_sparse((8, 64), 2, 4)
    encoding = choose_encoding(weight)
    parts = encode(weight, encoding)
    parts["ranks"] = torch.from_numpy(np.full(parts["ranks"].numel(), 255, dtype=np.uint8))
    with pytest.raises(UserError, match="out of range"):
        decode(parts, "nm", [8, 64], weight.dtype, encoding.params, "w")
