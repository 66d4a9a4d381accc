"""Read compressed-tensors' sparse layouts (`sparse-bitmask`, `sparse-24-bitmask`), which transformers no longer does.

llm-compressor saved sparse models (with `save_compressed=True`, compressed-tensors <= 0.14.0.1) as:
- config.json: `quantization_config` (older: `compression_config`) = {"quant_method": "compressed-tensors",
  "sparsity_config": {"format": "sparse-bitmask" | "sparse-24-bitmask", "targets", "ignore", ...}, ...};
- for each compressed `X.weight` of shape [rows, cols]: `X.shape` (the dense shape), `X.compressed` (the kept
  values in row-major order; 2-D [rows, cols / 2] for 2:4), `X.bitmask` (uint8 [rows, ceil(cols / 8)], one bit
  per weight, little bit order within each row) and, for sparse-bitmask, `X.row_offsets` (first value of each row).
compressed-tensors 0.15.0 removed these compressors, and transformers 5 loads such a folder with every
compressed weight missing, i.e. randomly initialised. Here they are decoded exactly; quantized variants
(a sparsity config together with quantization groups) are refused rather than guessed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .container import read_safetensors
from .encoding import from_int_view, int_view

SPARSE_FORMATS = ("sparse-bitmask", "sparse-24-bitmask")
_PARTS = ("shape", "compressed", "bitmask", "row_offsets")
# names of the packed arrays compressed-tensors checkpoints hold instead of a layer's `.weight`
COMPRESSED_TENSORS_SUFFIXES = (".bitmask", ".compressed", ".row_offsets", ".weight_packed", ".shape")


def sparsity_format(directory: Path) -> str | None:
    """The compressed-tensors sparse format named in `directory`/config.json, None if it names none."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # from_pretrained reports an unreadable config itself
    return config_sparsity_format(config, str(directory))


def config_sparsity_format(config: dict, source: str) -> str | None:
    """The compressed-tensors sparse format a parsed config.json names; UserError for one we cannot decode."""
    compression = config.get("quantization_config") or config.get("compression_config") or {}
    if not isinstance(compression, dict) or compression.get("quant_method", "compressed-tensors") != "compressed-tensors":
        return None
    sparse_format = (compression.get("sparsity_config") or {}).get("format")
    if sparse_format in (None, "dense"):
        return None
    if sparse_format not in SPARSE_FORMATS:
        raise UserError(f"{source} uses compressed-tensors sparse format {sparse_format!r}, which sparse-bench "
                        f"cannot decode (it reads {', '.join(SPARSE_FORMATS)}); decompress it with compressed-tensors")
    if compression.get("config_groups"):
        raise UserError(f"{source} is sparse and quantized (compressed-tensors {sparse_format} + quantization "
                        "groups); sparse-bench only decodes unquantized sparse checkpoints")
    return sparse_format


def read_sparse_bitmask(directory: Path) -> dict[str, torch.Tensor]:
    """The dense state dict of a compressed-tensors sparse checkpoint in `directory`, decoded exactly."""
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        raise UserError(f"{directory} names a compressed-tensors sparse format but holds no .safetensors files; copy the "
                        "weight files into it or point at the complete checkpoint")
    arrays = read_safetensors(files)
    state: dict[str, torch.Tensor] = {}
    prefixes = {key[: -len(".bitmask")] for key in arrays if key.endswith(".bitmask")}
    for prefix in sorted(prefixes):
        parts = {part: arrays.pop(f"{prefix}.{part}", None) for part in _PARTS}
        state[f"{prefix}.weight"] = _decode(prefix, parts)
    state.update(arrays)
    return state


def _decode(prefix: str, parts: dict[str, torch.Tensor | None]) -> torch.Tensor:
    """One weight from its shape, kept values and row bitmask; UserError if they disagree."""
    if parts["shape"] is None or parts["compressed"] is None:
        raise UserError(f"compressed-tensors weight {prefix!r} lacks its shape or values; the checkpoint is incomplete")
    shape = [int(size) for size in parts["shape"].reshape(-1).tolist()]
    rows, cols = (shape[0], int(np.prod(shape[1:]))) if len(shape) > 1 else (1, shape[0])
    bitmask = parts["bitmask"].numpy().reshape(rows, -1)
    if bitmask.shape[1] != -(-cols // 8):
        raise UserError(f"compressed-tensors weight {prefix!r}: bitmask of {bitmask.shape[1]} bytes per row for "
                        f"{cols} columns; the checkpoint is damaged")
    kept = np.unpackbits(bitmask, axis=1, count=cols, bitorder="little").astype(bool).reshape(-1)
    values = int_view(parts["compressed"])
    if values.size != int(kept.sum()):
        raise UserError(f"compressed-tensors weight {prefix!r}: {values.size} values for {int(kept.sum())} set bits; "
                        "the checkpoint is damaged")
    if parts["row_offsets"] is not None:
        offsets = parts["row_offsets"].numpy().reshape(-1)
        counts = kept.reshape(rows, cols).sum(axis=1)
        if offsets.size != rows or not np.array_equal(offsets, np.cumsum(counts) - counts):
            raise UserError(f"compressed-tensors weight {prefix!r}: row offsets disagree with the bitmask; "
                            "the checkpoint is damaged")
    dense = np.zeros(rows * cols, dtype=values.dtype)
    dense[kept] = values
    return from_int_view(dense, parts["compressed"].dtype, shape)
