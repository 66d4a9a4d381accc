"""`load_checkpoint`: load a dense or compressed checkpoint, and refuse rather than run on random weights.

transformers loads a checkpoint whose tensors do not match the model (an older sparse-bitmask file, a renamed
layer, a truncated shard list) with the missing weights freshly initialised and only a log line. Here every
load goes through `from_pretrained(..., output_loading_info=True)` and any missing, unexpected or mismatched
tensor is a `UserError` naming them. Our own directories (`sparse_bench_checkpoint.json`) have their weights
files' sizes and SHA-256 checked first, and compressed ones are decoded and compared bit for bit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError

from ..errors import UserError
from .container import WEIGHTS_NAME, dtype_name, read_compressed
from .ct_bitmask import COMPRESSED_TENSORS_SUFFIXES, config_sparsity_format, read_sparse_bitmask, sparsity_format
from .encoding import int_view
from .record import RECORD_NAME, read_record, verify_files

_SHOWN = 4  # tensor names quoted per kind in an error message
# What transformers raises for a config.json with values of the wrong type, name or range (a damaged "dtype":
# AttributeError from torch; "initializer_range": 1.02: huggingface_hub's StrictDataclassError), when reading
# it or building a model from it.
_CONFIG_ERRORS = (OSError, ValueError, TypeError, AttributeError, KeyError, RuntimeError, StrictDataclassError)


def load_checkpoint(auto_class, path: str | os.PathLike, *, verify: bool = True, **from_pretrained_kwargs):
    """Load the model at `path` (directory or Hub id) with `auto_class`; UserError if any weight would be random.

    `from_pretrained_kwargs` are those of `from_pretrained` (dtype, revision, trust_remote_code, device_map,
    subfolder, gguf_file, quantization_config, ...), as lm-eval's HFLM passes them. A compressed
    checkpoint is decoded and loaded through `from_pretrained(None, config=..., state_dict=...)` with the same
    checks. `verify` checks the weights files against the hashes in the checkpoint record.
    """
    kwargs = {key: value for key, value in from_pretrained_kwargs.items() if value is not None}
    directory = _local_directory(path, kwargs.get("subfolder") or "")
    if directory is None:
        directory = _hub_compressed_snapshot(str(path), kwargs)
    record = read_record(directory) if directory is not None else None
    if record is not None and verify:
        verify_files(directory, record)
    if record is not None and record["save_format"] == "compressed":
        return _load_state(auto_class, directory, read_compressed(directory / WEIGHTS_NAME), kwargs)
    if directory is not None and sparsity_format(directory):
        return _load_state(auto_class, directory, read_sparse_bitmask(directory), kwargs)
    try:
        model, info = _from_pretrained(auto_class, str(path), kwargs)
    except UserError as error:
        if directory is None and _hub_offline():
            raise UserError(f"{error} (offline: HF_HUB_OFFLINE is set; download the model while online, "
                            "or pass a local directory)") from error
        raise
    _refuse_incomplete(str(path), info)
    return model


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _local_directory(path, subfolder: str) -> Path | None:
    """The local checkpoint directory for `path`, None for a Hub id; UserError for a missing local path."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local / subfolder if subfolder else local
    if local.exists():
        raise UserError(f"{path} is a file, not a checkpoint directory; pass the folder that holds config.json")
    text = str(path)
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep != "/" and os.sep in text:
        raise UserError(f"checkpoint directory {path} does not exist; check the path")
    return None


def _hub_compressed_snapshot(repo_id: str, kwargs: dict) -> Path | None:
    """A local snapshot of a Hub repository holding a compressed checkpoint (ours or compressed-tensors'
    sparse layouts); None for any other, which from_pretrained then fetches and checks like any model."""
    record, config = (_hub_json(repo_id, name, kwargs) for name in (RECORD_NAME, "config.json"))
    compressed = (record or {}).get("save_format") == "compressed" or \
        (record is None and config is not None and config_sparsity_format(config, repo_id) is not None)
    if not compressed:
        return None
    from huggingface_hub import snapshot_download

    subfolder = kwargs.get("subfolder") or ""
    try:
        root = snapshot_download(repo_id, revision=kwargs.get("revision"), cache_dir=kwargs.get("cache_dir"),
                                 allow_patterns=[f"{subfolder}/*" if subfolder else "*"])
    except Exception as error:  # huggingface_hub raises many types; all mean "could not fetch it"
        raise UserError(f"cannot download compressed checkpoint {repo_id}: {_first_line(error)}; check the hub id, or download "
                        "it where the hub is reachable and give the directory") from error
    return Path(root) / subfolder if subfolder else Path(root)


def _hub_json(repo_id: str, name: str, kwargs: dict) -> dict | None:
    """The JSON file `name` of a Hub repository (cached or fetched), None if absent or unreachable."""
    from transformers.utils import cached_file

    try:
        path = cached_file(repo_id, name, revision=kwargs.get("revision"), subfolder=kwargs.get("subfolder") or "",
                           cache_dir=kwargs.get("cache_dir"), _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
        return json.loads(Path(path).read_text(encoding="utf-8")) if path else None
    except (OSError, ValueError):  # json.JSONDecodeError is a ValueError
        return None


def _from_pretrained(auto_class, source, kwargs: dict):
    """`auto_class.from_pretrained(source, output_loading_info=True, **kwargs)` with load failures as UserError.

    Shape mismatches are let through (`ignore_mismatched_sizes`) only so that the loading info names them;
    `_refuse_incomplete` then refuses the model.
    """
    try:
        return auto_class.from_pretrained(source, output_loading_info=True,
                                          **{**kwargs, "ignore_mismatched_sizes": True})
    except (OSError, ValueError, ImportError, SafetensorError) as error:
        raise UserError(f"cannot load checkpoint {source or kwargs.get('config')}: {_first_line(error)}; "
                        "check that the directory holds a complete checkpoint (config.json and its weight files)") from error


def _refuse_incomplete(source: str, info: dict) -> None:
    """UserError naming the tensors that would be random (missing, mismatched) or dropped (unexpected)."""
    problems = []
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(item[0]) if isinstance(item, tuple) else str(item)
                        for item in info.get("mismatched_keys") or ())
    unexpected = sorted(info.get("unexpected_keys") or ())
    for label, names in (("missing (would be randomly initialised)", missing),
                         ("of the wrong shape (would be re-initialised)", mismatched),
                         ("unexpected (would be ignored)", unexpected)):
        if names:
            problems.append(f"{len(names)} {label}: {_names(names)}")
    if info.get("error_msgs"):
        problems.append(f"load errors: {_first_line(info['error_msgs'][0])}")
    if not problems:
        return
    hint = "the checkpoint is incomplete or of another architecture; re-save it with sparse-bench"
    if any(name.endswith(COMPRESSED_TENSORS_SUFFIXES) for name in unexpected):
        hint = ("it holds compressed-tensors (llm-compressor) arrays but its config.json names no sparse format "
                "sparse-bench decodes; save it dense with llm-compressor")
    raise UserError(f"refusing to load {source}: {'; '.join(problems)}; {hint}")


def _load_state(auto_class, directory: Path, state: dict[str, torch.Tensor], kwargs: dict):
    """Load decoded weights through from_pretrained's state_dict path, with the same checks as a dense load.

    The config's own compression entry (compressed-tensors' `quantization_config`) is dropped: the weights
    are already dense. Tensors loaded in their stored dtype are compared with the decoded ones bit for bit.
    """
    for option in ("gguf_file", "quantization_config"):
        if kwargs.get(option):
            raise UserError(f"{option} does not apply to the compressed checkpoint {directory}; drop it")
    from transformers import AutoConfig

    stored = {t.dtype for t in state.values() if t.is_floating_point()}
    load_kwargs = {k: v for k, v in kwargs.items() if k not in ("revision", "subfolder", "gguf_file",
                                                                 "quantization_config", "cache_dir")}
    if load_kwargs.get("dtype", "auto") == "auto":
        load_kwargs["dtype"] = max(stored, key=lambda d: sum(t.numel() for t in state.values() if t.dtype == d)) \
            if stored else None
    try:
        config = AutoConfig.from_pretrained(directory, trust_remote_code=kwargs.get("trust_remote_code", False))
    except _CONFIG_ERRORS as error:
        raise UserError(f"cannot read the config of {directory}: {_first_line(error)}; "
                        "a checkpoint directory needs a valid config.json") from error
    for entry in ("quantization_config", "compression_config"):
        if hasattr(config, entry):
            delattr(config, entry)
    model_class = _model_class(auto_class, config, directory)
    _check_shapes(model_class, config, state, directory)
    model, info = _from_pretrained(model_class, None, {**load_kwargs, "config": config, "state_dict": dict(state)})
    _refuse_incomplete(str(directory), info)
    _check_bits(model, state, directory)
    return model


def _model_class(auto_class, config, directory: Path):
    """The concrete model class an Auto class would pick for `config` (from_pretrained(None, ...) needs it)."""
    mapping = getattr(auto_class, "_model_mapping", None)
    if mapping is None:
        return auto_class
    remote = (getattr(config, "auto_map", None) or {}).get(auto_class.__name__)
    if remote:
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        return get_class_from_dynamic_module(remote, str(directory))
    from transformers.models.auto.auto_factory import _get_model_class

    try:
        return _get_model_class(config, mapping)
    except (KeyError, ValueError) as error:
        raise UserError(f"{auto_class.__name__} has no model for the {type(config).__name__} in {directory}; "
                        "use the auto class that saved it") from error


def _check_shapes(model_class, config, state: dict[str, torch.Tensor], directory: Path) -> None:
    """UserError if the config does not build a model, or builds one whose tensors differ in shape from the
    decoded ones (an edited config.json): transformers' state_dict path fails on those with internal errors.
    The model is built on the meta device (no memory, no weights)."""
    try:
        with torch.device("meta"):
            expected = model_class(config).state_dict()
    except _CONFIG_ERRORS as error:
        raise UserError(f"the config.json of {directory} does not describe a {model_class.__name__} "
                        f"({_first_line(error)}); restore it or save the checkpoint again") from error
    wrong = sorted(name for name, tensor in state.items()
                   if name in expected and tuple(expected[name].shape) != tuple(tensor.shape))
    if wrong:
        raise UserError(f"refusing to load {directory}: {len(wrong)} tensors have another shape than its "
                        f"config.json gives: {_names(wrong)}; restore config.json or save the checkpoint again")


def _check_bits(model: torch.nn.Module, state: dict[str, torch.Tensor], directory: Path) -> None:
    """Compare the loaded tensors with the decoded ones, bit for bit, where no dtype cast was asked for."""
    loaded = model.state_dict()
    for name, tensor in state.items():
        target = loaded.get(name)
        if target is None or target.dtype != tensor.dtype or not tensor.is_floating_point():
            continue  # renamed by a key mapping, or cast on request: from_pretrained's own checks apply
        if target.shape != tensor.shape or not np.array_equal(int_view(target), int_view(tensor)):
            raise RuntimeError(f"tensor {name!r} of {directory} changed while loading into "
                               f"{type(model).__name__} ({dtype_name(tensor.dtype)})")


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _first_line(error) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
