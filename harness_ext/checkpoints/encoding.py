"""Per-tensor sparse encodings: values + a description of where they sit, bit for bit.

A tensor is split into its non-zero values (kept in the tensor's own dtype, row-major order) and a mask.
"Non-zero" means a non-zero *bit pattern*, so -0.0 and NaN payloads survive the round trip exactly.
Four encodings; `choose_encoding` sizes every one that applies and keeps the smallest:

- `dense`:   the tensor as it is.                               bytes = n * width
- `bitmask`: one bit per element (packed, little bit order).    bytes = nnz * width + ceil(n / 8)
- `nm`:      N:M structure along the input dimension: every group of M consecutive weights keeps N slots;
             each group's choice of slots is its rank among the C(M, N) combinations, and the ranks are
             packed D to a 64-bit word (D = the most base-C(M, N) digits that fit in 64 bits). Groups with
             fewer than N non-zeros store explicit zeros in their spare slots.
                                                                bytes = G * N * width + 8 * ceil(G / D)
- `rice`:    index encoding: the gaps between consecutive coded positions, Golomb-Rice coded with the
             parameter k that minimises the size; unary quotients and k-bit remainders in two streams. The
             coded positions are the non-zeros (high sparsity) or, with `zeros`, the zeros (low sparsity).
             With c coded positions:                            bytes = nnz * width + ceil((sum(gap >> k) + c) / 8)
                                                                        + ceil(c * k / 8)

Sizes are exact (the byte count of the arrays `encode` returns), so they can be computed without encoding.
Shapes: `n` elements, `nnz` non-zero elements, `G = n / M` groups, width in bytes.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from ..errors import UserError

NM_GROUP_SIZES = (4, 8)
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@dataclass(frozen=True)
class Encoding:
    """How one tensor is stored: the encoding's name and the parameters its decoder needs."""

    kind: str
    nbytes: int
    params: dict = field(default_factory=dict)


def int_view(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's bit patterns as a flat numpy integer array of the same width (shares memory when it can)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(_INT_VIEW[flat.element_size()]).numpy()


def from_int_view(bits: np.ndarray, dtype: torch.dtype, shape) -> torch.Tensor:
    """Inverse of `int_view`: a torch tensor of `dtype` and `shape` over the bit patterns `bits`."""
    return torch.from_numpy(np.ascontiguousarray(bits)).view(dtype).reshape(shape)


def nonzero_mask(tensor: torch.Tensor) -> np.ndarray:
    """Boolean numpy array, same shape: True where the element's bit pattern is not all zeros."""
    return (int_view(tensor) != 0).reshape(tuple(tensor.shape))


def is_encodable(tensor: torch.Tensor) -> bool:
    """Only floating-point tensors with at least one element are sparse-encoded; others stay dense."""
    return tensor.is_floating_point() and tensor.numel() > 0 and tensor.element_size() in _INT_VIEW


# ---------------------------------------------------------------------------------------------- sizes

def rice_parameter(gaps: np.ndarray) -> tuple[int, int]:
    """(k, bits): the Golomb-Rice parameter minimising the coded size of `gaps`, and that size in bits.

    The size f(k) = sum(gap >> k) + count * (1 + k) is convex in k, so a walk from log2(mean gap) finds the
    minimum in two or three evaluations.
    """
    if gaps.size == 0:
        return 0, 0

    def bits(k: int) -> int:
        return int((gaps >> k).sum()) + gaps.size * (1 + k)

    start = max(0, int(math.log2(float(gaps.mean()) + 1.0)))
    best = (start, bits(start))
    for step in (-1, 1):
        k = start + step
        while 0 <= k < 63 and (cost := bits(k)) < best[1]:
            best, k = (k, cost), k + step
    return best


def _rice_mask_bytes(count: int, k: int, bits: int) -> int:
    """Bytes of the two Rice streams: unary quotients (bits - count * k) and remainders (count * k)."""
    return -(-(bits - count * k) // 8) + -(-(count * k) // 8)


def _gaps(flat_mask: np.ndarray) -> np.ndarray:
    positions = np.flatnonzero(flat_mask)
    return np.diff(positions, prepend=-1) - 1


@lru_cache(maxsize=None)
def _nm_tables(n: int, m: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Lookup tables for N:M: (rank of every m-bit pattern once its spare slots are filled from the lowest
    position up, -1 if it has more than n bits; the n-bit pattern of every rank; rank digits per 64-bit word)."""
    combos = list(itertools.combinations(range(m), n))
    rank_of = {sum(1 << i for i in combo): rank for rank, combo in enumerate(combos)}
    pattern_rank = np.full(1 << m, -1, dtype=np.int64)
    for pattern in range(1 << m):
        filled = pattern
        for bit in range(m):
            if bin(filled).count("1") >= n:
                break
            filled |= 1 << bit
        if bin(filled).count("1") == n:
            pattern_rank[pattern] = rank_of[filled]
    rank_pattern = np.array(sorted(rank_of, key=rank_of.get), dtype=np.uint8)
    base, digits = len(combos), 1
    while base ** (digits + 1) <= 2 ** 64:
        digits += 1
    return pattern_rank, rank_pattern, digits


def _nm_groups(mask: np.ndarray, m: int, axis: int) -> np.ndarray | None:
    """The mask as (G, m) groups of consecutive elements along `axis` (0 or -1), or None if it does not split."""
    if axis == 0:
        if mask.ndim != 2:
            return None
        mask = mask.T
    if mask.ndim < 1 or mask.shape[-1] % m:
        return None
    return np.ascontiguousarray(mask).reshape(-1, m)


def _group_patterns(groups: np.ndarray) -> np.ndarray:
    """Each group's mask (G, m booleans, m = 4 or 8) as an m-bit number, bit i = position i (uint8)."""
    packed = np.packbits(groups.reshape(-1), bitorder="little")
    if groups.shape[1] == 8:
        return packed
    patterns = np.empty(groups.shape[0], dtype=np.uint8)  # m = 4: two groups per byte
    patterns[0::2] = packed & 0x0F
    patterns[1::2] = packed[: groups.shape[0] // 2] >> 4
    return patterns


def _pattern_mask(patterns: np.ndarray, m: int) -> np.ndarray:
    """Inverse of `_group_patterns`: (G, m) booleans."""
    return np.unpackbits(patterns[:, None], axis=1, count=m, bitorder="little").astype(bool)


@dataclass(frozen=True)
class MaskStats:
    """What the sizes of every encoding depend on, computed once per mask (independent of the dtype).

    `rice` maps "coding the zeros?" to (k, mask bytes); `nm` lists (n, m, axis, groups) for each N:M layout
    the mask satisfies (n = the most non-zeros in any group of m).
    """

    shape: tuple[int, ...]
    numel: int
    nnz: int
    rice: dict[bool, tuple[int, int]]
    nm: tuple[tuple[int, int, int, int], ...]


def mask_stats(mask: np.ndarray) -> MaskStats:
    """Scan a boolean mask once: counts, the best Rice parameters, the N:M layouts it fits."""
    flat = mask.reshape(-1)
    nnz = int(np.count_nonzero(flat))
    rice = {}
    for code_zeros, count in ((False, nnz), (True, flat.size - nnz)):
        if 20 * count < 9 * flat.size:  # from 45 % coded up, the unary + remainder bits match the bitmask's
            gaps = _gaps(~flat if code_zeros else flat)
            k, bits = rice_parameter(gaps)
            rice[code_zeros] = (k, _rice_mask_bytes(count, k, bits))
    layouts = []
    for m in NM_GROUP_SIZES:
        for axis in ((-1, 0) if mask.ndim == 2 else (-1,)):
            counts = _nm_group_counts(mask, m, axis)
            if counts is not None:
                keep = int(counts.max())
                if 1 <= keep < m:
                    layouts.append((keep, m, axis, counts.size))
    return MaskStats(tuple(mask.shape), flat.size, nnz, rice, tuple(layouts))


def _nm_group_counts(mask: np.ndarray, m: int, axis: int) -> np.ndarray | None:
    """Non-zeros in each group of m consecutive elements along `axis` (bytes of a group summed as one word)."""
    groups = _nm_groups(mask, m, axis)
    if groups is None:
        return None
    word, ones = (np.uint32, 0x01010101) if m == 4 else (np.uint64, 0x0101010101010101)
    shift = 8 * (m - 1)
    return (groups.view(np.uint8).view(word).reshape(-1) * word(ones)) >> word(shift)


def candidate_encodings(stats: MaskStats, width: int) -> list[Encoding]:
    """Every encoding that can store a tensor with these mask statistics and element width, with exact sizes."""
    n, nnz = stats.numel, stats.nnz
    found = [Encoding("dense", n * width), Encoding("bitmask", nnz * width + -(-n // 8), {"nnz": nnz})]
    for code_zeros, (k, mask_bytes) in stats.rice.items():  # only the sides worth coding
        found.append(Encoding("rice", nnz * width + mask_bytes, {"nnz": nnz, "k": k, "zeros": code_zeros}))
    for keep, m, axis, groups in stats.nm:
        digits = _nm_tables(keep, m)[2]
        found.append(Encoding("nm", groups * keep * width + 8 * -(-groups // digits), {"n": keep, "m": m, "axis": axis}))
    return found


def choose_encoding(tensor: torch.Tensor, stats: MaskStats | None = None) -> Encoding:
    """The smallest encoding for `tensor` (dense for non-float tensors). `tensor` may be on the meta device
    when `stats` are given: only its shape and dtype are used then."""
    if not is_encodable(tensor):
        return Encoding("dense", tensor.numel() * tensor.element_size())
    stats = stats or mask_stats(nonzero_mask(tensor))
    return min(candidate_encodings(stats, tensor.element_size()), key=lambda e: e.nbytes)


def mask_bound_bits(stats: MaskStats) -> float:
    """The mask's information content in bits: log2 C(n, nnz), or the N:M count (G * log2 C(M, N)) if smaller.

    The first is the number of bits needed to single out this mask among all masks with as many non-zeros;
    the second among all masks that keep at most N of every M consecutive elements (the tightest N:M found).
    """
    n, nnz = stats.numel, stats.nnz
    best = (math.lgamma(n + 1) - math.lgamma(nnz + 1) - math.lgamma(n - nnz + 1)) / math.log(2)
    for keep, m, _, groups in stats.nm:
        best = min(best, groups * math.log2(math.comb(m, keep)))
    return max(best, 0.0)


# ------------------------------------------------------------------------------------ encode / decode

def encode(tensor: torch.Tensor, encoding: Encoding) -> dict[str, torch.Tensor]:
    """The arrays that store `tensor` under `encoding`: {"values": ..., "mask"/"ranks"/"unary"/"rest": uint8}."""
    tensor = tensor.detach().cpu().contiguous()
    if encoding.kind == "dense":
        return {"values": tensor}
    bits = int_view(tensor)
    if encoding.kind == "nm":
        return _nm_encode(tensor, bits, **encoding.params)
    positions = np.flatnonzero(bits)
    values = {"values": from_int_view(bits.take(positions), tensor.dtype, -1)}
    if encoding.kind == "bitmask":
        return {**values, "mask": _u8(np.packbits(bits != 0, bitorder="little"))}
    if encoding.kind == "rice":
        coded = np.flatnonzero(bits == 0) if encoding.params["zeros"] else positions
        return {**values, **_rice_encode(np.diff(coded, prepend=-1) - 1, encoding.params["k"])}
    raise ValueError(f"unknown encoding {encoding.kind!r}")


def decode(parts: dict[str, torch.Tensor], kind: str, shape: list[int], dtype: torch.dtype, params: dict,
           name: str) -> torch.Tensor:
    """Rebuild the tensor `name` from its stored arrays; UserError if they do not fit together."""
    values = parts["values"]
    if values.dtype != dtype:
        raise _corrupt(name, f"values are {values.dtype}, expected {dtype}")
    n = math.prod(shape)
    if kind == "dense":
        if values.numel() != n:
            raise _corrupt(name, f"{values.numel()} values for shape {shape}")
        return values.reshape(shape)
    if kind == "nm":
        return _nm_decode(values, parts["ranks"], shape, name, **params)
    if kind == "bitmask":
        if parts["mask"].numel() != -(-n // 8):
            raise _corrupt(name, "bitmask has the wrong length")
        positions = np.flatnonzero(np.unpackbits(parts["mask"].numpy(), count=n, bitorder="little"))
    elif kind == "rice":
        count = n - params["nnz"] if params["zeros"] else params["nnz"]
        positions = _rice_decode(parts["unary"].numpy(), parts["rest"].numpy(), count, params["k"], name)
        if positions.size and positions[-1] >= n:
            raise _corrupt(name, "an index lies past the end of the tensor")
        if params["zeros"]:
            kept = np.ones(n, dtype=bool)
            kept[positions] = False
            positions = np.flatnonzero(kept)
    else:
        raise _corrupt(name, f"unknown encoding {kind!r}")
    if positions.size != values.numel():
        raise _corrupt(name, f"{values.numel()} values for {positions.size} mask positions")
    bits = int_view(values)
    flat = np.zeros(n, dtype=bits.dtype)
    flat[positions] = bits
    return from_int_view(flat, dtype, shape)


def _corrupt(name: str, why: str) -> UserError:
    return UserError(f"compressed tensor {name!r} is corrupt ({why}); the checkpoint was truncated or altered, "
                     "save it again")


def _u8(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.uint8))


def _rice_encode(gaps: np.ndarray, k: int) -> dict[str, torch.Tensor]:
    """Two bit streams: each gap's quotient `gap >> k` in unary (that many zeros, then a one); its k low bits."""
    quotients = gaps >> k
    unary = np.zeros(int(quotients.sum()) + gaps.size, dtype=bool)
    unary[np.cumsum(quotients + 1) - 1] = True
    return {"unary": _u8(np.packbits(unary, bitorder="little")), "rest": _u8(_pack_low_bits(gaps, k))}


def _pack_low_bits(numbers: np.ndarray, k: int) -> np.ndarray:
    """The k low bits of each number, least significant first, concatenated and packed into bytes."""
    width = next(w for w in (1, 2, 4, 8) if 8 * w >= k)
    as_bytes = numbers.astype(f"<u{width}").view(np.uint8).reshape(-1, width)
    low_bits = np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :k]
    return np.packbits(low_bits.reshape(-1), bitorder="little")


def _unpack_low_bits(packed: np.ndarray, count: int, k: int) -> np.ndarray:
    """Inverse of `_pack_low_bits`: `count` numbers of k bits each, as int64."""
    width = next(w for w in (1, 2, 4, 8) if 8 * w >= k)
    low_bits = np.zeros((count, 8 * width), dtype=np.uint8)
    low_bits[:, :k] = np.unpackbits(packed, count=count * k, bitorder="little").reshape(count, k)
    return np.packbits(low_bits, axis=1, bitorder="little").view(f"<u{width}").reshape(-1).astype(np.int64)


def _rice_decode(unary: np.ndarray, rest: np.ndarray, nnz: int, k: int, name: str) -> np.ndarray:
    ends = np.flatnonzero(np.unpackbits(unary, bitorder="little"))
    if ends.size != nnz or rest.size != -(-(nnz * k) // 8):
        raise _corrupt(name, "index streams do not match the count of non-zeros")
    gaps = ((np.diff(ends, prepend=-1) - 1) << k) | _unpack_low_bits(rest, nnz, k)
    return np.cumsum(gaps + 1) - 1


def _nm_encode(tensor: torch.Tensor, bits: np.ndarray, n: int, m: int, axis: int) -> dict[str, torch.Tensor]:
    pattern_rank, rank_pattern, digits = _nm_tables(n, m)
    grouped = bits.reshape(tuple(tensor.shape))
    grouped = np.ascontiguousarray(grouped.T if axis == 0 else grouped).reshape(-1)
    ranks = pattern_rank[_group_patterns((grouped != 0).reshape(-1, m))]
    slots = np.flatnonzero(_pattern_mask(rank_pattern[ranks], m))  # kept and spare slots, in order
    padded = np.zeros(-(-ranks.size // digits) * digits, dtype=np.uint64)
    padded[:ranks.size] = ranks
    words = np.zeros(padded.size // digits, dtype=np.uint64)
    for column in reversed(range(digits)):  # Horner: word = sum(rank_j * C**j)
        words = words * np.uint64(rank_pattern.size) + padded[column::digits]
    return {"values": from_int_view(grouped.take(slots), tensor.dtype, -1),
            "ranks": _u8(words.astype("<u8").view(np.uint8))}


def _nm_decode(values: torch.Tensor, ranks_bytes: torch.Tensor, shape: list[int], name: str, n: int, m: int,
               axis: int) -> torch.Tensor:
    _, rank_pattern, digits = _nm_tables(n, m)
    groups = math.prod(shape) // m
    if ranks_bytes.numel() != 8 * -(-groups // digits) or values.numel() != groups * n:
        raise _corrupt(name, "N:M streams have the wrong length")
    words = ranks_bytes.numpy().view("<u8").astype(np.uint64)
    ranks = np.empty((words.size, digits), dtype=np.int64)
    for column in range(digits):
        ranks[:, column] = (words % np.uint64(rank_pattern.size)).astype(np.int64)
        words = words // np.uint64(rank_pattern.size)
    ranks = ranks.reshape(-1)
    if words.any() or ranks[groups:].any():  # digits beyond those written
        raise _corrupt(name, "an N:M group rank is out of range")
    bits = int_view(values)
    dense = np.zeros(groups * m, dtype=bits.dtype)
    dense[np.flatnonzero(_pattern_mask(rank_pattern[ranks[:groups]], m))] = bits
    if axis == 0:
        dense = dense.reshape(list(reversed(shape))).T
    return from_int_view(dense, values.dtype, shape)
