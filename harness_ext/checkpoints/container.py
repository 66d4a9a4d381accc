"""The compressed weights file: one safetensors file holding every tensor's encoded arrays.

Layout of `model.sparse.safetensors`:
- one entry per stored array, named `{tensor}:{part}` (part = values, mask, ranks, unary, rest);
- `__metadata__["sparse_bench.format"] = "compressed-v1"` and `__metadata__["sparse_bench.tensors"]`, a JSON
  object {tensor: {"encoding", "shape", "dtype", "params"}} plus `"sparse_bench.aliases"` {tied name: stored name}.
The file name is not `model.safetensors` on purpose: stock transformers refuses the directory ("no file named
model.safetensors") instead of loading it with random weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import UserError
from .encoding import NM_GROUP_SIZES, Encoding, decode, encode

WEIGHTS_NAME = "model.sparse.safetensors"
FORMAT_TAG = "compressed-v1"
_SAFETENSORS_DTYPES = {torch.float64: "F64", torch.int64: "I64", torch.uint64: "U64", torch.float32: "F32",
                       torch.int32: "I32", torch.uint32: "U32", torch.bfloat16: "BF16", torch.float16: "F16",
                       torch.int16: "I16", torch.uint16: "U16", torch.float8_e4m3fn: "F8_E4M3",
                       torch.float8_e5m2: "F8_E5M2", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}
# safetensors lays arrays out by dtype (this order, from its Rust `Dtype` enum, descending), then by name.
# The parameters each encoding's header entry holds, with their exact types (bool is not an int here).
_PARAM_TYPES = {"dense": {}, "bitmask": {"nnz": int}, "rice": {"nnz": int, "k": int, "zeros": bool},
                "nm": {"n": int, "m": int, "axis": int}}
_LAYOUT_RANK = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32", "F32",
                "F64", "I64", "U64"]


def dtype_name(dtype: torch.dtype) -> str:
    """torch's spelling without the prefix: float16, bfloat16, ..."""
    return str(dtype).removeprefix("torch.")


def _metadata(entries: dict[str, tuple[Encoding, torch.Size, torch.dtype]],
              aliases: dict[str, str]) -> dict[str, str]:
    tensors = {name: {"encoding": enc.kind, "shape": list(shape), "dtype": dtype_name(dtype), "params": enc.params}
               for name, (enc, shape, dtype) in entries.items()}
    return {"sparse_bench.format": FORMAT_TAG, "sparse_bench.tensors": json.dumps(tensors, sort_keys=True),
            "sparse_bench.aliases": json.dumps(aliases, sort_keys=True)}


def write_compressed(path: Path, tensors: dict[str, torch.Tensor], encodings: dict[str, Encoding],
                     aliases: dict[str, str]) -> int:
    """Encode `tensors` (stored names only; `aliases` maps tied names to them) into `path`; returns its bytes."""
    arrays: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        for part, array in encode(tensor, encodings[name]).items():
            arrays[f"{name}:{part}"] = array
    entries = {name: (encodings[name], tensor.shape, tensor.dtype) for name, tensor in tensors.items()}
    save_file(arrays, str(path), metadata=_metadata(entries, aliases))
    return path.stat().st_size


def predicted_file_bytes(tensors: dict[str, torch.Tensor], encodings: dict[str, Encoding],
                         aliases: dict[str, str]) -> int:
    """The exact size `write_compressed` would give, computed without encoding (header included)."""
    layout = []  # (dtype tag, array name, shape, bytes)
    for name, tensor in tensors.items():
        for part, (dtype, shape, nbytes) in _part_shapes(tensor, encodings[name]).items():
            layout.append((_SAFETENSORS_DTYPES[dtype], f"{name}:{part}", shape, nbytes))
    layout.sort(key=lambda item: (-_LAYOUT_RANK.index(item[0]), item[1]))
    header: dict = {"__metadata__": _metadata({n: (encodings[n], t.shape, t.dtype) for n, t in tensors.items()},
                                              aliases)}
    offset = 0
    for tag, array_name, shape, nbytes in layout:
        header[array_name] = {"dtype": tag, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header_bytes = len(json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode())
    return 8 + -(-header_bytes // 8) * 8 + offset


def _part_shapes(tensor: torch.Tensor, encoding: Encoding) -> dict[str, tuple[torch.dtype, list[int], int]]:
    """{part: (dtype, shape, bytes)} of the arrays `encode` returns, from the encoding's exact size."""
    width = tensor.element_size()
    if encoding.kind == "dense":
        return {"values": (tensor.dtype, list(tensor.shape), tensor.numel() * width)}
    if encoding.kind == "nm":
        groups = tensor.numel() // encoding.params["m"]
        values = groups * encoding.params["n"]
        return {"values": (tensor.dtype, [values], values * width),
                "ranks": (torch.uint8, [encoding.nbytes - values * width], encoding.nbytes - values * width)}
    nnz = encoding.params["nnz"]
    if encoding.kind == "bitmask":
        mask = -(-tensor.numel() // 8)
        return {"values": (tensor.dtype, [nnz], nnz * width), "mask": (torch.uint8, [mask], mask)}
    coded = tensor.numel() - nnz if encoding.params["zeros"] else nnz
    rest = -(-(coded * encoding.params["k"]) // 8)
    unary = encoding.nbytes - nnz * width - rest
    return {"values": (tensor.dtype, [nnz], nnz * width), "unary": (torch.uint8, [unary], unary),
            "rest": (torch.uint8, [rest], rest)}


def _layout_problem(layout: object, aliases: object) -> str | None:
    """What is wrong with the header's tensor table and alias map (as `_metadata` writes them), or None."""
    if not isinstance(layout, dict) or not isinstance(aliases, dict):
        return "the tensor table or the alias map is not a mapping"
    if not all(isinstance(target, str) and target in layout for target in aliases.values()):
        return "an alias names no stored tensor"
    dtypes = {dtype_name(dtype) for dtype in _SAFETENSORS_DTYPES}
    for name, spec in layout.items():
        if not isinstance(spec, dict) or spec.get("encoding") not in _PARAM_TYPES or spec.get("dtype") not in dtypes:
            return f"tensor {name!r}: unknown encoding or dtype"
        shape, params = spec.get("shape"), spec.get("params")
        if not isinstance(shape, list) or not all(type(size) is int and size >= 0 for size in shape):
            return f"tensor {name!r}: shape {shape!r}"
        if not isinstance(params, dict) or {k: type(v) for k, v in params.items()} != _PARAM_TYPES[spec["encoding"]]:
            return f"tensor {name!r}: parameters {params!r}"
        if spec["encoding"] == "nm" and not (params["m"] in NM_GROUP_SIZES and 0 < params["n"] < params["m"]
                                             and params["axis"] in (-1, 0)):
            return f"tensor {name!r}: N:M parameters {params!r}"
        if params.get("nnz", 0) < 0 or not 0 <= params.get("k", 0) < 64:
            return f"tensor {name!r}: parameters {params!r}"
    return None


def read_safetensors(files: list[Path]) -> dict[str, torch.Tensor]:
    """Every tensor of the given .safetensors files, by name; UserError naming a truncated or damaged file."""
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    tensors[key] = handle.get_tensor(key)
        except (SafetensorError, OSError) as error:
            raise UserError(f"cannot read {path}: {error}; the file is truncated or damaged") from error
    return tensors


def read_compressed(path: Path) -> dict[str, torch.Tensor]:
    """Decode every tensor in `path` (aliases included); UserError on a truncated or altered file."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("sparse_bench.format") != FORMAT_TAG:
                raise UserError(f"{path} is not a sparse-bench {FORMAT_TAG} weights file "
                                f"(format tag {metadata.get('sparse_bench.format')!r}); re-save it with `sparse-bench prune ... "
                                "--save-format compressed`")
            layout = json.loads(metadata["sparse_bench.tensors"])
            aliases = json.loads(metadata["sparse_bench.aliases"])
            parts: dict[str, dict[str, torch.Tensor]] = {}
            for key in handle.keys():
                name, _, part = key.rpartition(":")
                parts.setdefault(name, {})[part] = handle.get_tensor(key)
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as error:
        raise UserError(f"cannot read compressed weights {path}: {str(error).splitlines()[0] if str(error) else type(error).__name__}; "
                        "the file is truncated or damaged, save the checkpoint again") from error
    problem = _layout_problem(layout, aliases)
    if problem:
        raise UserError(f"compressed weights {path} have a damaged header ({problem}); save the checkpoint again")
    if set(parts) != set(layout):
        raise UserError(f"compressed weights {path} list {len(layout)} tensors but hold arrays for {len(parts)}; "
                        "the file is damaged, save the checkpoint again")
    state = {name: decode(parts[name], spec["encoding"], spec["shape"], getattr(torch, spec["dtype"]),
                          spec["params"], name)
             for name, spec in layout.items()}
    for alias, target in aliases.items():
        state[alias] = state[target]
    return state
