"""`save_checkpoint`: a pruned model as a Hugging Face directory, dense or compressed, written atomically.

dense:      `model.save_pretrained` (safetensors) + tokenizer + `sparse_bench_checkpoint.json`. Stock
            transformers and `lm_eval --model hf` load it.
compressed: config + generation config + tokenizer + `model.sparse.safetensors` (values + mask per tensor,
            the smallest encoding each) + the record. Load it with `load_checkpoint` / `--model sparse-hf`.

Everything is written into a temporary folder beside `out_dir` and renamed into place at the end, so an
interrupted save leaves no half checkpoint behind (an existing `out_dir` is replaced only then).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..errors import UserError
from ..io import write_json_atomic
from .container import WEIGHTS_NAME, read_compressed, write_compressed
from .encoding import int_view
from .record import RECORD_NAME, RECORD_VERSION, SAVE_FORMATS, file_digest
from .sizes import measure_state, sizes_of_state


@contextlib.contextmanager
def _plain_weights(model: torch.nn.Module):
    """Let a GGUF-loaded model (dequantized, plain tensors) save like any model; restore it afterwards.

    transformers keeps `hf_quantizer` and `config.quantization_config` on a model read from a GGUF file and
    then refuses to save it, although its weights are ordinary float tensors. Other quantizers hold packed
    weights that the dense path saves through transformers as they are and the compressed path cannot encode.
    """
    config = model.config
    quantization = getattr(config, "quantization_config", None)
    method = quantization.get("quant_method") if isinstance(quantization, dict) else getattr(quantization, "quant_method", None)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None and quantization is None:
        yield False
        return
    if "gguf" not in str(method).lower() and not _is_gguf_quantizer(quantizer):
        yield True
        return
    model.hf_quantizer = None
    if quantization is not None:
        del config.quantization_config
    try:
        yield False
    finally:
        model.hf_quantizer = quantizer
        if quantization is not None:
            config.quantization_config = quantization


def _is_gguf_quantizer(quantizer) -> bool:
    return quantizer is not None and "gguf" in type(quantizer).__name__.lower()


def save_checkpoint(model: torch.nn.Module, tokenizer, out_dir: str | os.PathLike, prune_record: dict | None = None,
                    save_format: str = "dense", verify: bool = True, finetune_record: dict | None = None) -> Path:
    """Save `model` (+ `tokenizer`, may be None) to `out_dir` in `save_format`; returns the directory.

    `prune_record` (e.g. `PruneReport.to_dict()`) is stored verbatim in `sparse_bench_checkpoint.json`, with
    the size figures and each weights file's SHA-256; `finetune_record` (`finetune.run.finetune`'s) likewise.
    `verify` reads a compressed file back and compares every
    tensor bit for bit before the directory is moved into place.
    """
    if save_format not in SAVE_FORMATS:
        raise UserError(f"unknown save format {save_format!r}; use one of {', '.join(SAVE_FORMATS)}")
    out_dir = Path(out_dir).expanduser().resolve()
    check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
    staging.mkdir()  # (not mkdtemp: its 0700 would stick to the finished checkpoint)
    try:
        with _plain_weights(model) as quantized:
            if save_format == "dense":
                model.save_pretrained(staging)
                sizes = None if quantized else sizes_of_state(model.state_dict())
            else:
                if quantized:
                    raise UserError("a quantized model (bitsandbytes, GPTQ, ...) holds packed weights that cannot "
                                    "be saved compressed; load it unquantized or use save_format='dense'")
                sizes = _save_compressed(model, staging, verify)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        weights = sorted(p for p in staging.iterdir() if p.suffix in (".safetensors", ".bin"))
        write_record(staging, save_format, {p.name: file_digest(p) for p in weights}, sizes, prune_record,
                     finetune_record=finetune_record)
        move_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def write_record(directory: Path, save_format: str, files: dict[str, dict], sizes: dict | None,
                 prune_record: dict | None, **extra: dict | None) -> None:
    """Write the checkpoint record: format, versions, `files` ({name: file_digest}), sizes and the records
    given (`extra` entries that are None are left out)."""
    write_json_atomic(directory / RECORD_NAME, {
        "format": "sparse-bench", "record_version": RECORD_VERSION, "save_format": save_format,
        "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"sparse_bench": __version__, "torch": torch.__version__, "transformers": _transformers()},
        "files": files, "sizes": sizes, "prune_record": prune_record,
        **{key: value for key, value in extra.items() if value is not None}})


def _save_compressed(model: torch.nn.Module, staging: Path, verify: bool) -> dict:
    """Write config, generation config and `model.sparse.safetensors`; returns the size figures."""
    state = model.state_dict()
    sizes, tensors, aliases, encodings = measure_state(state)
    if sizes["compressed_bytes"] >= sizes["dense_bytes"]:
        raise UserError(f"nothing to compress: the model has {sizes['sparsity']:.2%} zeros and its compressed "
                        f"weights ({sizes['compressed_bytes']} bytes) would not be smaller than dense "
                        f"({sizes['dense_bytes']}); prune it first or use save_format='dense'")
    model.config.save_pretrained(staging)
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(staging)
    written = write_compressed(staging / WEIGHTS_NAME, tensors, encodings, aliases)
    if written != sizes["compressed_bytes"]:
        raise RuntimeError(f"compressed file has {written} bytes, the size formula said {sizes['compressed_bytes']}")
    if verify:
        reread = read_compressed(staging / WEIGHTS_NAME)
        for name, tensor in state.items():
            if not _same_bits(reread.get(name), tensor):
                raise RuntimeError(f"compressed round trip changed tensor {name!r}")
    return sizes


def _same_bits(decoded: torch.Tensor | None, original: torch.Tensor) -> bool:
    if decoded is None or decoded.dtype != original.dtype or decoded.shape != original.shape:
        return False
    if original.numel() == 0:
        return True
    return np.array_equal(int_view(decoded), int_view(original)) if original.is_floating_point() \
        else torch.equal(decoded, original.detach().cpu())


def check_replaceable(out_dir: Path) -> None:
    """Refuse an output path whose current contents a save would delete: a file, or a folder that is neither
    empty nor a sparse-bench checkpoint."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} exists and is not a directory; choose another output path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / RECORD_NAME).is_file():
        raise UserError(f"{out_dir} is not empty and holds no sparse-bench checkpoint; saving would replace "
                        "its contents: choose a new or empty directory")


def _remove_abandoned(out_dir: Path) -> None:
    """Delete staging folders for `out_dir` left by saves of this host whose process no longer exists."""
    for staging in out_dir.parent.glob(f".{glob.escape(out_dir.name)}.*.*.*.partial"):
        host, pid, _, _ = staging.name[len(out_dir.name) + 2:].rsplit(".", 3)  # host may hold dots
        if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def move_into_place(staging: Path, out_dir: Path) -> None:
    """Rename the finished folder to `out_dir`, replacing an existing one only after the new one is complete."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old{os.getpid()}")
        os.replace(out_dir, old)
    os.replace(staging, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _transformers() -> str:
    import transformers

    return transformers.__version__
