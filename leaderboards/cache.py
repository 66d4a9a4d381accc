"""Pruned models cached on disk, and fingerprints of the models they come from.

`CACHE/KEY/` is a dense checkpoint written by `save_checkpoint`, whose record holds the prune key and the prune
report (`{"prune_key": ..., "report": PruneReport.to_dict()}`). KEY is the hash of `cells.prune_key` (model weights' sha256, method,
scope, sparsity, structure, recipe hash, calibration with its seed, prune dtype), so a dtype sweep, a re-run or
another grid with the same pruning prunes each model once. `save_checkpoint` writes under a temporary name and
renames, so a killed run leaves no half entry.

Concurrent runs (Slurm array tasks, shards on several machines) share one cache safely: a miss takes an
exclusive lock on `CACHE/KEY.lock` (`flock`, which Linux's NFS client maps onto NFS byte-range locks) and looks
again before pruning, so one task prunes and writes an entry while the others wait and then read it. A complete
entry is never replaced, so readers need no lock; the lock dies with its process, so a killed task blocks nobody.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..harness_ext.checkpoints import read_record, save_checkpoint
from ..harness_ext.errors import UserError
from ..harness_ext.io import sha256_file
from .cells import Cell, prune_key
from .spec import GridSpec

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".model")


def model_fingerprint(model_path: str) -> str:
    """sha256 over the names and contents of a local checkpoint's weight, config and tokenizer files; a hub
    id that is not on disk is fingerprinted by its name only (marked `name:`)."""
    folder = Path(model_path)
    if not folder.is_dir():
        return "name:" + hashlib.sha256(model_path.encode()).hexdigest()
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES):
        digest.update(file.name.encode())
        sha256_file(file, digest)
    return digest.hexdigest()


@dataclass
class PrunedModelCache:
    """Pruned checkpoints under `root`, one folder per prune key. `save_checkpoint` writes each folder under a
    temporary name and renames it, and its record (with the prune report) marks the entry complete."""

    root: Path

    def entry(self, key: dict[str, Any]) -> Path:
        return Path(self.root) / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]

    def lookup(self, key: dict[str, Any]) -> tuple[Path, dict[str, Any]] | None:
        """(folder, prune report) of a complete entry, else None."""
        folder = self.entry(key)
        record = read_record(folder) if folder.is_dir() else None
        wanted = json.loads(json.dumps(key))
        if record is None or not record.get("prune_record") or record["prune_record"].get("prune_key") != wanted:
            return None
        return folder, record["prune_record"]["report"]

    @contextmanager
    def locked(self, key: dict[str, Any]) -> Iterator[None]:
        """Hold the exclusive lock of `key`'s entry (blocks while another process or thread holds it)."""
        path = self.entry(key).with_name(self.entry(key).name + ".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX)
            except OSError as error:
                raise UserError(f"cannot lock {path} ({error.strerror}); the pruned-model cache needs a filesystem "
                                "with file locks: give --cache a folder on one") from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def pruned_checkpoint(cell: Cell, spec: GridSpec, model_path: str, fingerprint: str,
                      cache: PrunedModelCache) -> tuple[Path, dict[str, Any], bool]:
    """(checkpoint folder, prune report, came from cache) for a pruned cell; prunes on a cache miss."""
    key = prune_key(cell, spec, fingerprint)
    found = cache.lookup(key)
    if found is not None:
        return (*found, True)
    with cache.locked(key):
        found = cache.lookup(key)  # another task may have written it while this one waited for the lock
        if found is not None:
            return (*found, True)
        return (*prune_into(cache.entry(key), key, cell, spec, model_path), False)


def prune_into(folder: Path, key: dict[str, Any], cell: Cell, spec: GridSpec,
               model_path: str) -> tuple[Path, dict[str, Any]]:
    """Prune `model_path` as `cell` says and save it (dense) to `folder`; returns (folder, prune report)."""
    from ..harness_ext.models import load_model
    from ..harness_ext.pruning.engine import prune

    model, tokenizer = load_model(model_path, spec.prune_dtype, spec.device)
    report = prune(model, cell.plan(), spec.calibration, tokenizer=tokenizer).to_dict()
    if report["zeros"] == 0:
        raise UserError(f"{cell.method_label} pruned nothing in {cell.model}; check the recipe's targets")
    save_checkpoint(model, tokenizer, folder, prune_record={"prune_key": key, "report": report}, save_format="dense")
    return folder, report


__all__ = ["PrunedModelCache", "model_fingerprint", "pruned_checkpoint"]
