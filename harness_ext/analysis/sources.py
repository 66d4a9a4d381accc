"""Where the weights come from: an in-memory torch model, or a checkpoint read one tensor (slice) at a time.

`open_weights(model_or_path)` is a context manager giving a `WeightSource`: the parameters to measure, each
counted once, as lazily read chunks (a checkpoint's tensors are read with safetensors' `safe_open` slices, so
peak memory is one chunk, not the model), plus what was tied, skipped or missing.

Tied weights: in memory, parameters sharing storage are one tensor; in a checkpoint, transformers stores one
copy of a tied group, and the model definition (built from config.json on the meta device, no memory) says
which stored tensor the missing names alias.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError

CHUNK_ELEMENTS = 1 << 22  # 4 Mi weights per chunk: ~16 MiB as float32, whatever the stored dtype
SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                      "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


@dataclass
class TensorEntry:
    """One tensor to measure: its name, shape, dtype (torch spelling) and a function yielding its chunks."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    chunks: Callable[[], Iterator[torch.Tensor]]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class WeightSource:
    """The parameters of one model, each counted once, and what was left out and why."""

    origin: dict
    entries: list[TensorEntry] = field(default_factory=list)
    # {"name", "tied_to", "numel", "stored"}: stored says if a checkpoint held its own copy (None in memory)
    tied: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)   # {"name", "reason"}
    missing: list[str] = field(default_factory=list)    # parameters of the model definition found nowhere
    tied_detection: str = ""


@contextlib.contextmanager
def open_weights(model_or_path) -> Iterator[WeightSource]:
    """A `WeightSource` for an `nn.Module`, a checkpoint directory, a .safetensors / .bin file, or a name
    that `find_or_prepare_model` knows (short name, hub id in the local cache). Raises UserError if not found."""
    if isinstance(model_or_path, torch.nn.Module):
        yield module_weights(model_or_path)
        return
    path = locate_checkpoint(model_or_path)
    with contextlib.ExitStack() as stack:
        yield checkpoint_weights(path, stack)


def module_weights(model: torch.nn.Module) -> WeightSource:
    """The parameters of an in-memory model; parameters sharing storage are measured once and listed as tied."""
    config = getattr(model, "config", None)
    source = WeightSource(origin=_origin("module", None, config, type(model).__name__),
                          tied_detection="shared storage")
    first_name: dict[tuple, str] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if parameter.device.type == "meta":
            raise UserError(f"parameter {name} is on the meta device (offloaded or not loaded); analyse the "
                            f"checkpoint directory instead of the in-memory model")
        key = _storage_key(parameter)
        if key in first_name:
            source.tied.append({"name": name, "tied_to": first_name[key], "numel": parameter.numel(),
                                "stored": None})
            continue
        first_name[key] = name
        if not parameter.is_floating_point():
            source.skipped.append({"name": name, "reason": f"not floating point ({_dtype_name(parameter.dtype)})"})
            continue
        source.entries.append(TensorEntry(name, tuple(parameter.shape), _dtype_name(parameter.dtype),
                                          _flat_chunks(parameter)))
    return source


def locate_checkpoint(name_or_path) -> Path:
    """A local checkpoint path for a path, a short name or a hub id (local cache only when offline)."""
    from ..models import find_or_prepare_model

    resolved = find_or_prepare_model(str(name_or_path))
    path = Path(resolved).expanduser()
    if path.exists():
        return path
    return _hub_snapshot(resolved)


def checkpoint_weights(path: Path, stack: contextlib.ExitStack) -> WeightSource:
    """The tensors of a checkpoint directory or weights file, opened lazily (files stay open in `stack`)."""
    folder = path if path.is_dir() else path.parent
    config = _read_config(folder)
    kinds = {file: _file_kind(file) for file in _weight_files(path)}
    source = WeightSource(origin=_origin(next(iter(kinds.values())), str(path), config, None))
    stored: dict[str, TensorEntry] = {}
    for file, kind in kinds.items():
        if kind == "sparse_bench_compressed":
            entries = _compressed_entries(file, source)
        elif kind == "safetensors":
            entries = _safetensors_entries(file, stack, source)
        else:
            entries = _bin_entries(file, source)
        for entry in entries:
            stored.setdefault(entry.name, entry)
    _apply_model_definition(source, stored, config)
    return source


def _apply_model_definition(source: WeightSource, stored: dict[str, TensorEntry], config) -> None:
    """Drop buffers and duplicate tied copies from `stored`, record tied aliases and missing parameters."""
    groups, buffers, problem = _definition_groups(config)
    if groups and not any(name in stored for names in groups for name in names):
        groups, buffers, problem = [], set(), "unavailable: no stored name matches the model definition"
    source.tied_detection = problem or "model definition (config.json on the meta device)"
    duplicates: set[str] = set()
    already_tied = {tied["name"] for tied in source.tied}
    for names in groups:
        present = [name for name in names if name in stored]
        if not present:
            source.missing.extend(names)
            continue
        for alias in names:
            if alias != present[0] and alias not in already_tied:
                source.tied.append({"name": alias, "tied_to": present[0], "numel": stored[present[0]].numel,
                                    "stored": alias in stored})
                duplicates.add(alias)
    for name, entry in stored.items():
        if name in buffers:
            source.skipped.append({"name": name, "reason": "buffer, not a parameter"})
        elif name not in duplicates:
            source.entries.append(entry)


def _definition_groups(config) -> tuple[list[list[str]], set[str], str | None]:
    """(parameter name groups, one group per distinct tensor; buffer names; None or why unavailable)."""
    if config is None:
        return [], set(), "unavailable: no config.json next to the weights"
    import transformers

    from ..models import auto_model_class

    architecture = (getattr(config, "architectures", None) or [None])[0]
    model_class = getattr(transformers, architecture, None) if architecture else None
    try:
        with torch.device("meta"):
            model = model_class(config) if model_class else auto_model_class(config).from_config(config)
    except Exception as error:  # an architecture transformers cannot build: count what is stored
        return [], set(), f"unavailable: cannot build {architecture or config.model_type} ({type(error).__name__})"
    groups: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(parameter), []).append(name)
    return list(groups.values()), {name for name, _ in model.named_buffers()}, None


def _safetensors_entries(file: Path, stack: contextlib.ExitStack, source: WeightSource) -> Iterator[TensorEntry]:
    from safetensors import safe_open

    from ..checkpoints.ct_bitmask import COMPRESSED_TENSORS_SUFFIXES

    try:
        handle = stack.enter_context(safe_open(str(file), framework="pt"))
    except Exception as error:
        raise UserError(f"cannot read {file}: {error}; is it a complete safetensors file?") from None
    packed = [name for name in handle.keys() if name.endswith(COMPRESSED_TENSORS_SUFFIXES)]
    if packed:
        raise UserError(f"{file} is an llm-compressor compressed-tensors checkpoint (e.g. {packed[0]}); "
                        f"decompress it (load with llm-compressor, save dense) and analyse that")
    for name in handle.keys():
        tensor_slice = handle.get_slice(name)
        stored_dtype = tensor_slice.get_dtype()
        if stored_dtype not in SAFETENSORS_DTYPES:
            source.skipped.append({"name": name, "reason": f"not floating point ({stored_dtype})"})
            continue
        shape = tuple(tensor_slice.get_shape())
        yield TensorEntry(name, shape, SAFETENSORS_DTYPES[stored_dtype], _slice_chunks(handle, name, shape))


def _file_kind(file: Path) -> str:
    """'safetensors', 'sparse_bench_compressed' (written by `save_checkpoint(..., save_format="compressed")`)
    or 'pytorch_bin'."""
    if file.suffix != ".safetensors":
        return "pytorch_bin"
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            compressed = "sparse_bench.format" in (handle.metadata() or {})
    except Exception as error:
        raise UserError(f"cannot read {file}: {error}; is it a complete safetensors file?") from None
    return "sparse_bench_compressed" if compressed else "safetensors"


def _compressed_entries(file: Path, source: WeightSource) -> Iterator[TensorEntry]:
    """Tensors of a sparse-bench compressed checkpoint, decoded by the checkpoints package (whole file at
    once: memory is the dense model's size). Tied names share one decoded tensor: counted once."""
    from ..checkpoints.container import read_compressed

    state = read_compressed(file)
    first_name: dict[int, str] = {}
    for name, tensor in state.items():
        if id(tensor) in first_name:  # an alias read_compressed filled in for a tied name
            source.tied.append({"name": name, "tied_to": first_name[id(tensor)], "numel": tensor.numel(),
                                "stored": False})
            continue
        first_name[id(tensor)] = name
        if not tensor.is_floating_point():
            source.skipped.append({"name": name, "reason": f"not floating point ({_dtype_name(tensor.dtype)})"})
            continue
        yield TensorEntry(name, tuple(tensor.shape), _dtype_name(tensor.dtype), _flat_chunks(tensor))


def _slice_chunks(handle, name: str, shape: tuple[int, ...]) -> Callable[[], Iterator[torch.Tensor]]:
    """Chunks of whole rows (first dimension), read from disk only when iterated."""
    def chunks() -> Iterator[torch.Tensor]:
        if not shape:
            yield handle.get_tensor(name)
            return
        row_elements = max(1, math.prod(shape[1:]))
        rows = max(1, CHUNK_ELEMENTS // row_elements)
        tensor_slice = handle.get_slice(name)
        for start in range(0, shape[0], rows):
            yield tensor_slice[start:start + rows]
    return chunks


def _bin_entries(file: Path, source: WeightSource) -> Iterator[TensorEntry]:
    """Tensors of a torch.save'd state dict, memory-mapped where the format allows; no pickled code runs."""
    try:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (pre-zip) format cannot be memory-mapped
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(f"cannot read {file} safely ({type(error).__name__}); convert the checkpoint to "
                        f"safetensors (save_pretrained(..., safe_serialization=True))") from None
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            kind = _dtype_name(tensor.dtype) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            source.skipped.append({"name": name, "reason": f"not floating point ({kind})"})
            continue
        yield TensorEntry(name, tuple(tensor.shape), _dtype_name(tensor.dtype), _flat_chunks(tensor))


def _weight_files(path: Path) -> list[Path]:
    """The weight files of a checkpoint, safetensors preferred; UserError if there are none."""
    if path.is_file():
        if path.suffix not in (".safetensors", ".bin", ".pt", ".pth"):
            raise UserError(f"{path} is not a weights file; give a checkpoint directory or a .safetensors file")
        return [path]
    for index_name, pattern in (("model.safetensors.index.json", "*.safetensors"),
                                ("pytorch_model.bin.index.json", "*.bin")):
        index = path / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
            return [path / name for name in sorted(set(weight_map.values()))]
        files = sorted(path.glob(pattern))
        if files:
            return files
    raise UserError(f"no weights in {path}: expected *.safetensors or pytorch_model.bin; is it a checkpoint "
                    f"directory written by save_pretrained?")


def _hub_snapshot(repo_id: str) -> Path:
    """The local snapshot of a hub model's config and weights (downloads unless HF_HUB_OFFLINE is set)."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=["config.json", "*.safetensors",
                                                                 "model.safetensors.index.json"]))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(repo_id, allow_patterns=["config.json", "*.bin",
                                                                     "pytorch_model.bin.index.json"]))
    except Exception as error:
        raise UserError(f"model {repo_id!r} is neither a local path nor a hub model available here "
                        f"({type(error).__name__}); give a checkpoint directory or a short name") from None
    return folder


def _read_config(folder: Path):
    if not (folder / "config.json").is_file():
        return None
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"cannot read {folder / 'config.json'}: {str(error).splitlines()[0]}; "
                        "a checkpoint directory needs a valid config.json") from None


def _origin(kind: str, path: str | None, config, class_name: str | None) -> dict:
    architectures = getattr(config, "architectures", None) or []
    return {"kind": kind, "path": path,
            "architecture": class_name or (architectures[0] if architectures else None),
            "model_type": getattr(config, "model_type", None),
            "is_encoder_decoder": bool(getattr(config, "is_encoder_decoder", False)),
            "config_tie_word_embeddings": getattr(config, "tie_word_embeddings", None)}


def _flat_chunks(tensor: torch.Tensor) -> Callable[[], Iterator[torch.Tensor]]:
    def chunks() -> Iterator[torch.Tensor]:
        flat = tensor.detach().reshape(-1)
        for start in range(0, flat.numel(), CHUNK_ELEMENTS):
            yield flat[start:start + CHUNK_ELEMENTS]
    return chunks


def _storage_key(tensor: torch.Tensor) -> tuple:
    """Identity of the memory a tensor views: equal keys mean the same weights (tied)."""
    return (tensor.device.type, tensor.device.index, tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")

