"""Read single tensors of a safetensors checkpoint without mapping whole files into the process.

`safetensors.safe_open` memory-maps each file; every page a read touches then counts as this process's
resident memory until the file is closed, so reading a 6 GB checkpoint block by block through it would show
a 6 GB resident set. `TensorFiles` parses the (documented, 8-byte length + JSON) safetensors header itself
and reads one tensor at a time with `readinto` into a fresh tensor: the page cache holds the bytes, this
process only the tensor. `read_rows` reads chosen rows of a 2-D tensor (the embedding rows calibration
looks up). `mapped` gives a private, copy-on-write mapping for a tensor that may never be read (an untied
output head during calibration): resident only where touched, but the kernel maps the cached pages around
each touched one too (fault-around, 64 KiB), so a sparse read through it is not sparse in memory.

`checkpoint_files(directory)` finds the weights of a Hugging Face directory (one `model.safetensors` or an
index and its shards) and refuses pickle `.bin` weights and missing shards.
"""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path

import torch

from ..errors import UserError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
_COPY_CHUNK = 1 << 24
CONVERT_HINT = ("convert it once where it fits in memory: python -c \"from transformers import AutoModelForCausalLM "
                "as M; M.from_pretrained('DIR').save_pretrained('NEW_DIR')\" (saves safetensors)")


def _truncated(path: Path, name: str) -> UserError:
    return UserError(f"{path} ends inside tensor {name!r}; the file is truncated: copy it again")


def checkpoint_files(directory: Path) -> dict[str, Path]:
    """{tensor name: safetensors file} of a checkpoint directory; UserError for pickle weights or missing shards."""
    directory = Path(directory)
    index = directory / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UserError(f"{index} is not a safetensors index ({error}); restore it from the model's source") \
                from None
        missing = sorted({name for name in weight_map.values() if not (directory / name).is_file()})
        if missing:
            raise UserError(f"{directory} is missing {len(missing)} shard(s) listed in {INDEX_NAME}: "
                            f"{', '.join(missing[:3])}; copy or download the whole checkpoint")
        return {tensor: directory / name for tensor, name in weight_map.items()}
    if (directory / SINGLE_NAME).is_file():
        return dict.fromkeys(TensorFiles.header(directory / SINGLE_NAME), directory / SINGLE_NAME)
    if any(directory.glob("*.bin")) or any(directory.glob("*.pt")) or any(directory.glob("*.pth")):
        raise UserError(f"{directory} holds pickle (.bin) weights, which cannot be read one block at a time; "
                        + CONVERT_HINT)
    raise UserError(f"{directory} holds no {SINGLE_NAME} or {INDEX_NAME}; give a Hugging Face checkpoint directory "
                    "with safetensors weights")


class TensorFiles:
    """Tensors of one or more safetensors files, read one at a time; `where` maps tensor names to files."""

    def __init__(self, where: dict[str, Path]) -> None:
        self.where = dict(where)
        self._headers: dict[Path, dict] = {}
        self._maps: dict[Path, mmap.mmap] = {}

    @staticmethod
    def header(path: Path) -> dict[str, dict]:
        """The safetensors header of `path` without `__metadata__`: {name: {dtype, shape, data_offsets}}."""
        try:
            with open(path, "rb") as handle:
                (length,) = struct.unpack("<Q", handle.read(8))
                header = json.loads(handle.read(length))
        except (OSError, ValueError, struct.error) as error:
            raise UserError(f"cannot read the safetensors header of {path} ({error}); the file is truncated "
                            "or damaged: copy it again") from None
        header.pop("__metadata__", None)
        for entry in header.values():
            entry["start"] = 8 + length + entry["data_offsets"][0]
        return header

    def entry(self, name: str) -> tuple[Path, dict]:
        path = self.where[name]
        if path not in self._headers:
            self._headers[path] = self.header(path)
        try:
            return path, self._headers[path][name]
        except KeyError:
            raise UserError(f"{path} has no tensor {name!r} although the index lists it there; restore the "
                            "checkpoint") from None

    def shape_dtype(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        _, entry = self.entry(name)
        return tuple(entry["shape"]), DTYPES[entry["dtype"]]

    def nbytes(self, name: str) -> int:
        _, entry = self.entry(name)
        start, end = entry["data_offsets"]
        return end - start

    def read(self, name: str) -> torch.Tensor:
        """A new tensor holding `name`, read with plain file reads (nothing stays mapped)."""
        path, entry = self.entry(name)
        shape, dtype = self.shape_dtype(name)
        tensor = torch.empty(shape, dtype=dtype)
        with open(path, "rb") as handle:
            handle.seek(entry["start"])
            view = memoryview(tensor.view(-1).view(torch.uint8).numpy())
            if handle.readinto(view) != self.nbytes(name):
                raise _truncated(path, name)
        return tensor

    def zeros(self, name: str) -> int:
        """Exact zeros of `name` (zero bit patterns of -0.0 aside, as count_nonzero), read 16 MiB at a time
        into one reused buffer."""
        path, entry = self.entry(name)
        _, dtype = self.shape_dtype(name)
        buffer = torch.empty(min(self.nbytes(name), _COPY_CHUNK) // dtype.itemsize, dtype=dtype)
        bytes_view = memoryview(buffer.view(torch.uint8).numpy())
        zeros, remaining = 0, self.nbytes(name)
        with open(path, "rb") as handle:
            handle.seek(entry["start"])
            while remaining:
                got = handle.readinto(bytes_view[:min(remaining, len(bytes_view))])
                if not got:
                    raise _truncated(path, name)
                values = buffer[:got // dtype.itemsize]
                zeros += values.numel() - int(torch.count_nonzero(values))
                remaining -= got
        return zeros

    def read_rows(self, name: str, rows: list[int], out: torch.Tensor) -> None:
        """Read rows `rows` of the 2-D tensor `name` into the same rows of `out` (its shape; any dtype, any
        device: each row is cast and moved as `Tensor.copy_` does)."""
        path, entry = self.entry(name)
        shape, dtype = self.shape_dtype(name)
        row = torch.empty(shape[1], dtype=dtype)
        view = memoryview(row.view(torch.uint8).numpy())
        with open(path, "rb") as handle:
            for index in rows:
                handle.seek(entry["start"] + index * len(view))
                if handle.readinto(view) != len(view):
                    raise _truncated(path, name)
                out[index].copy_(row)

    def mapped(self, name: str) -> torch.Tensor:
        """`name` as a copy-on-write view of its file: resident only where read (or written)."""
        path, entry = self.entry(name)
        shape, dtype = self.shape_dtype(name)
        if path not in self._maps:
            with open(path, "rb") as handle:
                self._maps[path] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
        count = self.nbytes(name) // dtype.itemsize
        if count == 0:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(self._maps[path], dtype=dtype, count=count, offset=entry["start"]).view(shape)


def copy_tensors(path: Path, source: TensorFiles, names: list[str], metadata: dict[str, str] | None = None,
                 order=None) -> None:
    """Write a safetensors file holding `names` of `source` by copying their bytes, 16 MiB at a time.

    `order` sorts the data section (default: by name); the header lists every tensor with its offsets.
    """
    names = sorted(names, key=order)
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name in names:
        _, entry = source.entry(name)
        header[name] = {"dtype": entry["dtype"], "shape": entry["shape"],
                        "data_offsets": [offset, offset + source.nbytes(name)]}
        offset += source.nbytes(name)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    chunk = memoryview(bytearray(_COPY_CHUNK))  # one buffer for every read
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(text)) + text)
        for name in names:
            file, entry = source.entry(name)
            with open(file, "rb") as handle:
                handle.seek(entry["start"])
                remaining = source.nbytes(name)
                while remaining:
                    got = handle.readinto(chunk[:min(remaining, len(chunk))])
                    if not got:
                        raise _truncated(file, name)
                    out.write(chunk[:got])
                    remaining -= got


__all__ = ["INDEX_NAME", "SINGLE_NAME", "CONVERT_HINT", "checkpoint_files", "TensorFiles", "copy_tensors"]
