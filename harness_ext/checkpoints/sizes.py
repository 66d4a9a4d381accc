"""Honest sizes: dense bytes at each dtype, the compressed file's bytes, and the lower bound they are held to.

All byte counts are exact and measured from the weights (never from a declared sparsity):
- `dense_bytes[dtype]`: every stored tensor at that dtype's width (tied tensors once; non-float buffers at
  their own width) -- the payload of a dense safetensors file, without its small JSON header.
- `compressed_bytes`: the size of `model.sparse.safetensors` as `save_checkpoint(..., "compressed")` writes it,
  header included (computed without writing; equal to the file, which the tests check).
- `bound_bytes`: the floor for any values + mask format: non-zero values at the dtype's width plus the mask's
  information content (`encoding.mask_bound_bits`: log2 C(n, nnz), or the N:M count when smaller).
`by_dtype` repeats the three for float32 / float16 / bfloat16 with the same mask (weights that a cast would
flush to zero are not re-counted).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from ..errors import UserError
from .container import WEIGHTS_NAME, dtype_name, predicted_file_bytes, read_compressed, read_safetensors
from .ct_bitmask import read_sparse_bitmask, sparsity_format
from .encoding import MaskStats, choose_encoding, is_encodable, mask_bound_bits, mask_stats, nonzero_mask
from .record import read_record

SIZE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def stored_tensors(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Split a state dict into the tensors to store and {alias: stored name} for tied (shared-memory) ones."""
    tensors, aliases, seen = {}, {}, {}
    for name, tensor in state.items():
        if tensor.device.type == "meta":
            raise UserError(f"tensor {name!r} has no data (meta device, offloaded?); load the model fully first")
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
               tuple(tensor.stride()), tensor.dtype) if tensor.numel() else None
        if key is not None and key in seen:
            aliases[name] = seen[key]
        else:
            tensors[name] = tensor
            if key is not None:
                seen[key] = name
    return tensors, aliases


def _scan(tensors: dict[str, torch.Tensor]) -> dict[str, MaskStats | None]:
    return {name: mask_stats(nonzero_mask(t)) if is_encodable(t) else None for name, t in tensors.items()}


def _figures_at(tensors: dict[str, torch.Tensor], aliases: dict[str, str], stats: dict[str, MaskStats | None],
                dtype: torch.dtype | None) -> dict:
    """dense / compressed / bound bytes with every float tensor at `dtype` (None: as stored)."""
    shaped = {name: torch.empty(t.shape, dtype=dtype if dtype is not None and is_encodable(t) else t.dtype,
                                device="meta") for name, t in tensors.items()}
    encodings = {name: choose_encoding(t, stats[name]) for name, t in shaped.items()}
    dense = sum(t.numel() * t.element_size() for t in shaped.values())
    bound_bits = sum(stats[name].nnz * t.element_size() * 8 + mask_bound_bits(stats[name]) if stats[name]
                     else t.numel() * t.element_size() * 8 for name, t in shaped.items())
    return {"dense_bytes": dense, "compressed_bytes": predicted_file_bytes(shaped, encodings, aliases),
            "bound_bytes": bound_bits / 8, "encodings": encodings}


def sizes_of_state(state: dict[str, torch.Tensor]) -> dict:
    """The size figures of a state dict (see the module docstring for each field)."""
    return measure_state(state)[0]


def measure_state(state: dict[str, torch.Tensor]):
    """(size figures, tensors to store, {alias: stored name}, {stored name: its smallest Encoding})."""
    tensors, aliases = stored_tensors(state)
    stats = _scan(tensors)
    stored = _figures_at(tensors, aliases, stats, None)
    floats = [name for name, s in stats.items() if s is not None]
    numel = sum(stats[name].numel for name in floats)
    nnz = sum(stats[name].nnz for name in floats)
    dtypes = Counter()
    for name in floats:
        dtypes[dtype_name(tensors[name].dtype)] += stats[name].numel
    by_dtype = {}
    for dtype in SIZE_DTYPES:
        figures = _figures_at(tensors, aliases, stats, dtype)
        figures.pop("encodings")
        by_dtype[dtype_name(dtype)] = figures
    encodings = stored.pop("encodings")
    figures = {
        "dtype": dtypes.most_common(1)[0][0] if dtypes else None,
        "float_parameters": numel, "nonzero_parameters": nnz,
        "sparsity": 1.0 - nnz / numel if numel else 0.0,
        "tensors": len(tensors), "tied_tensors": len(aliases),
        "encodings": dict(Counter(e.kind for e in encodings.values())),
        **stored,
        "compressed_vs_bound": stored["compressed_bytes"] / stored["bound_bytes"] if stored["bound_bytes"] else None,
        "compression_ratio": stored["dense_bytes"] / stored["compressed_bytes"] if stored["compressed_bytes"] else None,
        "by_dtype": by_dtype,
    }
    return figures, tensors, aliases, encodings


def _dense_state(directory: Path) -> dict[str, torch.Tensor]:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise UserError(f"{directory} holds no .safetensors weights; sizes need a safetensors checkpoint")
    return read_safetensors(files)


def checkpoint_sizes(path_or_model) -> dict:
    """Size figures of a checkpoint directory (dense, compressed, or compressed-tensors sparse) or of an
    in-memory model / state dict (computed without writing anything).

    For a directory, `files` lists the bytes of each weights file on disk, and for a compressed one
    `compressed_bytes` is checked against the file actually written.
    """
    if isinstance(path_or_model, torch.nn.Module):
        return {"source": "in-memory", **sizes_of_state(path_or_model.state_dict())}
    if isinstance(path_or_model, dict):
        return {"source": "in-memory", **sizes_of_state(path_or_model)}
    directory = Path(path_or_model)
    if not directory.is_dir():
        raise UserError(f"{directory} is not a checkpoint directory; pass the folder that holds config.json")
    record = read_record(directory)
    compressed = record is not None and record["save_format"] == "compressed"
    if compressed:
        state, save_format = read_compressed(directory / WEIGHTS_NAME), "compressed"
    elif (layout := sparsity_format(directory)) is not None:
        state, save_format = read_sparse_bitmask(directory), f"compressed-tensors {layout}"
    else:
        state, save_format = _dense_state(directory), "dense"
    figures = {"source": str(directory), "save_format": save_format, **sizes_of_state(state)}
    figures["files"] = {p.name: p.stat().st_size for p in sorted(directory.glob("*.safetensors"))}
    if compressed and figures["files"][WEIGHTS_NAME] != figures["compressed_bytes"]:
        raise UserError(f"{directory / WEIGHTS_NAME} has {figures['files'][WEIGHTS_NAME]} bytes where its tensors "
                        f"encode to {figures['compressed_bytes']}; it was written by another version, save it again")
    if record is not None:
        figures["prune_record"] = record.get("prune_record")
    return figures


