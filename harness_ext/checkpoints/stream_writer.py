"""`StreamWriter`: a dense sharded checkpoint written one block at a time, resumable after a kill.

Layout while running: `.NAME.stream.partial/` beside the output directory holds one safetensors shard per
transformer block (`model-00002-of-000NN.safetensors`, ...), shard 1 with everything outside the blocks
(embeddings, final norm, untied head), and `stream_progress.json`, the journal: the run's fingerprint
(source files, plan, calibration, dtype) and, per finished shard, its file, SHA-256, byte count, the zeros
of each tensor and the seconds it took. Each shard is written to a temporary name and renamed, and the journal
is rewritten after it, so a killed run leaves finished shards listed and at most one unlisted temporary file.
The compressed format is encoded from the finished shards at the end (stream_compressed.py).

A new run with the same fingerprint resumes: every listed shard is hashed again and kept only if it matches
(the shards after the first that does not are redone). A run with another fingerprint is refused. `complete`
writes the index, config, tokenizer and the checkpoint record last and renames the folder into place, so the
output directory exists only once it is whole.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes

from ..errors import UserError
from ..io import write_bytes_atomic, write_json_atomic
from .container import WEIGHTS_NAME
from .record import file_digest
from .save import check_replaceable, move_into_place, write_record
from .stream_compressed import compress_shards
from .tensor_files import INDEX_NAME, TensorFiles, copy_tensors

JOURNAL_NAME = "stream_progress.json"
LOCK_NAME = ".lock"


class StreamWriter:
    """Shards named by `keys` (first: the tensors outside the blocks, then one per block, in order)."""

    def __init__(self, out_dir: Path, keys: list[str], fingerprint: dict, needed_bytes: int) -> None:
        self.out_dir = Path(out_dir).expanduser().resolve()
        check_replaceable(self.out_dir)
        self.keys = list(keys)
        self.fingerprint = json.loads(json.dumps(fingerprint, default=str))
        self.staging = self.out_dir.with_name(f".{self.out_dir.name}.stream.partial")
        journal = self._read_journal()
        self.shards: dict[str, dict] = self._verified(journal["shards"]) if journal else {}
        self.resumed = len(self.shards)
        _check_disk(self.out_dir.parent, needed_bytes - sum(shard["bytes"] for shard in self.shards.values()))
        self.staging.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.staging / LOCK_NAME, "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(f"another run is writing {self.out_dir} (it holds {self.staging / LOCK_NAME}); wait "
                            "for it or choose another --out") from None
        self._started = time.perf_counter()

    def _read_journal(self) -> dict | None:
        path = self.staging / JOURNAL_NAME
        if not path.is_file():
            return None
        try:
            journal = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise UserError(f"{path} is unreadable; delete {self.staging} to start the run again") from None
        if journal.get("fingerprint") != self.fingerprint:
            raise UserError(f"{self.staging} holds an interrupted run with another model, plan, calibration or dtype; "
                            "rerun with the same options to resume it, or delete that folder to start anew")
        return journal

    def _verified(self, listed: dict[str, dict]) -> dict[str, dict]:
        """The listed shards, in order, up to the first whose file is missing or differs from its hash."""
        kept = {}
        for key in self.keys:
            shard = listed.get(key)
            path = self.staging / shard["file"] if shard else None
            if shard is None or not path.is_file() or file_digest(path) != {"bytes": shard["bytes"],
                                                                            "sha256": shard["sha256"]}:
                break
            kept[key] = shard
        return kept

    def file_name(self, key: str) -> str:
        return f"model-{self.keys.index(key) + 1:05d}-of-{len(self.keys):05d}.safetensors"

    def finished(self, key: str) -> bool:
        return key in self.shards

    def path(self, key: str) -> Path:
        return self.staging / self.file_name(key)

    def write(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        """Write one shard (atomically), then list it in the journal with its hash and zero counts."""
        data = safetensors_bytes({name: tensor.contiguous() for name, tensor in tensors.items()},
                                 metadata={"format": "pt"})
        write_bytes_atomic(self.path(key), data)
        self._finished(key, {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()},
                       {name: _zeros(tensor) for name, tensor in tensors.items()})

    def copy(self, key: str, source: TensorFiles, names: list[str]) -> None:
        """Write one shard holding `names` of `source` as stored, copied a chunk at a time (the embeddings of a
        large vocabulary never need to be in memory whole), then list it in the journal."""
        temporary = self.path(key).with_suffix(".tmp")
        copy_tensors(temporary, source, names, {"format": "pt"})
        os.replace(temporary, self.path(key))
        self._finished(key, file_digest(self.path(key)), {
            name: [source.zeros(name), math.prod(source.shape_dtype(name)[0]), source.nbytes(name)] for name in names})

    def _finished(self, key: str, digest: dict, zeros: dict[str, list[int]]) -> None:
        now = time.perf_counter()
        self.shards[key] = {"file": self.file_name(key), **digest, "tensors": zeros, "seconds": now - self._started}
        self._started = now
        write_json_atomic(self.staging / JOURNAL_NAME, {"fingerprint": self.fingerprint, "shards": self.shards})

    def counts(self) -> dict[str, tuple[int, int]]:
        """{tensor name: (zeros, elements)} over every shard written so far."""
        return {name: (zeros, numel) for shard in self.shards.values()
                for name, (zeros, numel, _) in shard["tensors"].items()}

    def block_seconds(self) -> dict[str, float]:
        """Seconds from the previous shard to each block's shard (load, calibration, pruning and writing)."""
        return {key: self.shards[key]["seconds"] for key in self.keys[1:] if key in self.shards}

    def complete(self, config, tokenizer, generation_config: Path | None, prune_record: dict,
                 save_format: str = "dense", aliases: dict[str, str] | None = None) -> Path:
        """Write index (or the compressed file), config, tokenizer and record, then move the folder into place.

        `compressed`: the shards are encoded into `model.sparse.safetensors` one at a time (stream_compressed.py,
        `aliases` {tied name: stored name}) and removed. Returns the directory.
        """
        missing = [key for key in self.keys if key not in self.shards]
        if missing:
            raise RuntimeError(f"streaming finished without writing {missing[0]}")
        if save_format == "compressed":
            shards = [self.staging / self.shards[key]["file"] for key in self.keys]
            files = {WEIGHTS_NAME: file_digest(compress_shards(self.staging, shards, aliases or {}))}
            for shard in shards:
                shard.unlink()
        else:
            files = {shard["file"]: {"bytes": shard["bytes"], "sha256": shard["sha256"]}
                     for shard in self.shards.values()}
            weight_map = {name: shard["file"] for shard in self.shards.values() for name in shard["tensors"]}
            total = sum(size for shard in self.shards.values() for _, _, size in shard["tensors"].values())
            write_json_atomic(self.staging / INDEX_NAME, {"metadata": {"total_size": total},
                                                          "weight_map": weight_map})
        config.save_pretrained(self.staging)
        if generation_config is not None and generation_config.is_file():
            shutil.copyfile(generation_config, self.staging / generation_config.name)
        if tokenizer is not None:
            tokenizer.save_pretrained(self.staging)
        stream = {"resumed_blocks": max(self.resumed - 1, 0), "block_seconds": self.block_seconds()}
        write_record(self.staging, save_format, files, None, prune_record, stream_record=stream)
        (self.staging / JOURNAL_NAME).unlink()
        (self.staging / LOCK_NAME).unlink()
        self._lock.close()
        move_into_place(self.staging, self.out_dir)
        return self.out_dir


def _zeros(tensor: torch.Tensor) -> list[int]:
    """[exact zeros, elements, bytes] of one tensor."""
    return [int(tensor.numel() - torch.count_nonzero(tensor)), tensor.numel(), tensor.numel() * tensor.element_size()]


def _check_disk(folder: Path, needed: int) -> None:
    """Refuse before writing anything when `folder`'s file system has less than `needed` bytes free."""
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise UserError(f"the pruned checkpoint needs {needed / 2**30:.2f} GiB and {folder} has "
                        f"{free / 2**30:.2f} GiB free; free some space or choose another --out")


__all__ = ["JOURNAL_NAME", "StreamWriter"]
