"""Pruned models cached on disk, and fingerprints of the models they come from.

`CACHE/KEY/` holds a dense safetensors checkpoint (`save_checkpoint`), `prune_key.json` and `prune_report.json`
(written last: it marks the entry complete). KEY is the hash of `spec.prune_key` (model weights' sha256, method,
scope, sparsity, structure, recipe hash, calibration with its seed, prune dtype), so a dtype sweep, a re-run or
another grid with the same pruning prunes each model once. Entries are written under a temporary folder name
and renamed: concurrent shards on a shared disk are safe (the first writer wins).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..harness_ext.errors import UserError
from ..harness_ext.io import write_json_atomic
from .spec import Cell, GridSpec, prune_key

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
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass
class PrunedModelCache:
    """Pruned checkpoints under `root`, one folder per prune key, written to a temporary folder and renamed."""

    root: Path

    def entry(self, key: dict[str, Any]) -> Path:
        return Path(self.root) / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]

    def lookup(self, key: dict[str, Any]) -> tuple[Path, dict[str, Any]] | None:
        folder = self.entry(key)
        try:
            return folder, json.loads((folder / "prune_report.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def store(self, key: dict[str, Any], write: Callable[[Path], dict[str, Any]]) -> tuple[Path, dict[str, Any]]:
        """Run `write(temp_folder) -> prune report`, then move the folder into place (first writer wins)."""
        final = self.entry(key)
        self._remove_abandoned()
        temp = Path(self.root) / f".tmp-{final.name}-{socket.gethostname()}-{os.getpid()}"
        shutil.rmtree(temp, ignore_errors=True)
        try:
            report = write(temp)
            write_json_atomic(temp / "prune_key.json", key)
            write_json_atomic(temp / "prune_report.json", report)  # last file: marks the entry complete
            try:
                os.replace(temp, final)
            except OSError:  # another shard stored the same entry meanwhile: keep theirs
                if self.lookup(key) is None:
                    raise
        finally:
            shutil.rmtree(temp, ignore_errors=True)
        return final, report

    def _remove_abandoned(self) -> None:
        """Delete temporary folders that a killed process of this host left behind."""
        host = socket.gethostname()
        for temp in Path(self.root).glob(f".tmp-*-{host}-*"):
            pid = temp.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(temp, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pruned_checkpoint(cell: Cell, spec: GridSpec, model_path: str, fingerprint: str,
                      cache: PrunedModelCache) -> tuple[Path, dict[str, Any], bool]:
    """(checkpoint folder, prune report, came from cache) for a pruned cell; prunes on a cache miss."""
    key = prune_key(cell, spec, fingerprint)
    found = cache.lookup(key)
    if found is not None:
        return (*found, True)

    def prune_and_save(folder: Path) -> dict[str, Any]:
        from ..harness_ext.checkpoints import save_checkpoint
        from ..harness_ext.models import load_model
        from ..harness_ext.pruning.engine import prune

        model, tokenizer = load_model(model_path, spec.prune_dtype, spec.device)
        report = prune(model, cell.plan(), spec.calibration, tokenizer=tokenizer).to_dict()
        if report["zeros"] == 0:
            raise UserError(f"{cell.method_label} pruned nothing in {cell.model}; check the recipe's targets")
        save_checkpoint(model, tokenizer, folder, prune_record=report, save_format="dense")
        return report

    return (*cache.store(key, prune_and_save), False)


__all__ = ["PrunedModelCache", "model_fingerprint", "pruned_checkpoint"]
