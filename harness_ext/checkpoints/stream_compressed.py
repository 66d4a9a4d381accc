"""The compressed weights file built from dense shards one shard at a time (`--stream --save-format compressed`).

`write_compressed` (container.py) encodes a whole state dict at once. Here each dense shard is read, its tensors
encoded (the smallest encoding each, as `choose_encoding` picks for the in-memory save) into a temporary
safetensors file; then `model.sparse.safetensors` is assembled with the arrays in safetensors' own layout
order (dtype, then name), copied from the temporary files one array at a time, under the same header
metadata. Every tensor is then decoded from the final file and compared bit for bit with its dense shard
before the dense shards are deleted. Memory: one shard.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.torch import save_file

from .container import _LAYOUT_RANK, _SAFETENSORS_DTYPES, WEIGHTS_NAME, _metadata
from .encoding import choose_encoding, decode, encode, int_view
from .tensor_files import TensorFiles, copy_tensors


def compress_shards(staging: Path, shards: list[Path], aliases: dict[str, str]) -> Path:
    """Encode the tensors of the dense `shards` into `staging/model.sparse.safetensors`; returns its path."""
    entries, parts = {}, TensorFiles({})
    for index, shard in enumerate(shards):
        dense = TensorFiles(dict.fromkeys(TensorFiles.header(shard), shard))
        arrays = {}
        for name in dense.where:
            tensor = dense.read(name)
            encoding = choose_encoding(tensor)
            entries[name] = (encoding, tensor.shape, tensor.dtype)
            arrays.update({f"{name}:{part}": array for part, array in encode(tensor, encoding).items()})
        encoded = staging / f"encoded-{index:05d}.safetensors"
        save_file(arrays, str(encoded))
        parts.where.update(dict.fromkeys(arrays, encoded))
    path = staging / WEIGHTS_NAME
    copy_tensors(path, parts, list(parts.where), _metadata(entries, aliases),  # safetensors' layout order
                 order=lambda name: (-_LAYOUT_RANK.index(_tag(parts, name)), name))
    _verify(path, shards, entries)
    for encoded in set(parts.where.values()):
        encoded.unlink()
    return path


def _tag(parts: TensorFiles, name: str) -> str:
    return _SAFETENSORS_DTYPES[parts.shape_dtype(name)[1]]


def _verify(path: Path, shards: list[Path], entries: dict) -> None:
    """Decode every tensor from the assembled file and compare it with its dense shard, bit for bit."""
    final = TensorFiles(dict.fromkeys(TensorFiles.header(path), path))
    by_tensor: dict[str, list[str]] = {}
    for array in final.where:
        by_tensor.setdefault(array.rpartition(":")[0], []).append(array)
    for shard in shards:
        dense = TensorFiles(dict.fromkeys(TensorFiles.header(shard), shard))
        for name in dense.where:
            encoding, shape, dtype = entries[name]
            decoded = decode({array.rpartition(":")[2]: final.read(array) for array in by_tensor[name]},
                             encoding.kind, list(shape), dtype, encoding.params, name)
            if not np.array_equal(int_view(decoded), int_view(dense.read(name))):
                raise RuntimeError(f"the compressed file changed tensor {name!r}")


__all__ = ["compress_shards"]
