"""The checkpoint record `sparse_bench_checkpoint.json`: format marker, file hashes, sizes, prune record.

Written next to the weights by `save_checkpoint`; its presence marks a directory as ours. `save_format` says
how to load it ("dense": a stock Hugging Face directory; "compressed": `model.sparse.safetensors`), `files`
holds the SHA-256 and byte count of every weights file (checked on load: a truncated or altered file is
refused), `prune_record` is whatever the pruner reported (method, sparsity, structure, recipe, calibration,
measured sparsity), `sizes` the figures of `checkpoint_sizes`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..io import sha256_file

RECORD_NAME = "sparse_bench_checkpoint.json"
RECORD_VERSION = 1
SAVE_FORMATS = ("dense", "compressed")


def file_digest(path: Path) -> dict[str, Any]:
    """{"bytes": size, "sha256": hex digest} of one file, read in 16 MiB chunks."""
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path).hexdigest()}


def read_record(directory: Path) -> dict | None:
    """The record in `directory`, None if there is none; UserError if it is unreadable, malformed or of a
    newer version."""
    path = Path(directory) / RECORD_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # ValueError: not UTF-8, or not JSON
        raise UserError(f"{path} is not valid JSON ({error}); restore it or save the checkpoint again") from error
    if not isinstance(record, dict) or record.get("format") != "sparse-bench" \
            or record.get("save_format") not in SAVE_FORMATS or not _valid_files(record.get("files", {})):
        raise UserError(f"{path} is not a sparse-bench checkpoint record; remove it or save the checkpoint again")
    version = record.get("record_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise UserError(f"{path} has a malformed record_version {version!r}; save the checkpoint again")
    if version > RECORD_VERSION:
        raise UserError(f"{path} was written by a newer sparse-bench (record version {version}); "
                        "upgrade sparse-bench to load it")
    return record


def _valid_files(files: Any) -> bool:
    """True if `files` is {relative file name: {"bytes": int, "sha256": str}}, as `file_digest` writes it."""
    return isinstance(files, dict) and all(
        isinstance(name, str) and isinstance(entry, dict) and isinstance(entry.get("bytes"), int)
        and isinstance(entry.get("sha256"), str) for name, entry in files.items())


def verify_files(directory: Path, record: dict) -> None:
    """Refuse if any weights file listed in the record is missing, of another size, or has another hash."""
    for name, expected in record.get("files", {}).items():
        path = Path(directory) / name
        if not path.is_file():
            raise UserError(f"checkpoint {directory} is missing its weights file {name}; copy the whole directory")
        if path.stat().st_size != expected["bytes"]:
            raise UserError(f"weights file {path} has {path.stat().st_size} bytes, the record says "
                            f"{expected['bytes']}: it is truncated or was replaced; save the checkpoint again")
        if file_digest(path)["sha256"] != expected["sha256"]:
            raise UserError(f"weights file {path} does not match its SHA-256 in {RECORD_NAME}: it was altered "
                            f"after saving; save the checkpoint again (or delete {RECORD_NAME} if the change was "
                            "intended)")
