"""Atomic file writes: write to a temporary name in the same folder, then rename into place."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


def sha256_file(path: Path, digest: Any = None) -> Any:
    """Feed the bytes of `path` into `digest` (a new sha256 when None), in 16 MiB chunks; returns the digest."""
    digest = hashlib.sha256() if digest is None else digest
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest


def write_text_atomic(path: Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` so readers see either the old file or the whole new one."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write `data` to `path` so readers see either the old file or the whole new one (e.g. a PNG)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp_name, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: Path, data: Any) -> Path:
    """Write `data` as indented JSON to `path` atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_figure_atomic(figure, path: Path, dpi: int = 120) -> Path:
    """Render a matplotlib `figure` to PNG at `path` atomically and close it."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    return write_bytes_atomic(path, buffer.getvalue())


def read_jsonl_records(path: Path, hint: str = "") -> Iterator[tuple[int, dict]]:
    """Yield (line number, JSON object) for each non-blank line of a JSONL file.

    A line that is not a JSON object raises UserError naming the file and line (`hint` is appended).
    """
    from .errors import UserError

    suffix = f"; {hint}" if hint else ""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{path}, line {number}: not JSON ({error.msg}){suffix}; fix or remove that line") from None
            if not isinstance(record, dict):
                raise UserError(f"{path}, line {number}: not a JSON object{suffix}; each line must be one {{...}} record")
            yield number, record
