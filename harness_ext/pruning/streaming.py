"""Prune a model larger than memory: one block at a time from the safetensors checkpoint to the output.

`prune_streaming(model_dir, plan, ..., out_dir)` builds the model on the meta device (no weights), loads what
lies outside the blocks (embedding rows read from the file when a forward first looks them up),
and hands the engine a `StreamedBlocks`: the engine's one layer-sequential loop (calibration.py) then loads
each block from disk when it reaches it, the engine prunes it with the same methods as in memory, and
`finish` writes it to its own shard (checkpoints/stream_writer.py) and drops it before the next block is
loaded. OWL, which needs every block's outlier ratio before pruning any, gets its own statistics pass over
the dense blocks, read from disk again (the engine's `_owl_pass`, as in memory). A killed run resumes:
finished blocks are read back from their verified shards and only run forward to make the next inputs.

Memory: glibc is told to return every freed allocation above 1 MiB at once (`_unmap_large_frees`), and the
tokenizer is freed once the calibration tokens exist (loaded again to be saved). The calibration activations
(two buffers of samples x tokens x hidden in the model's dtype) live in
memory-mapped files in the staging folder when they would take more than a quarter of the available memory.
What streaming cannot honour is refused before anything is written: encoder-decoder models (their decoder's
inputs need a forward through the whole encoder), `scope=global` (one threshold over every layer), targets
outside the blocks, and checkpoints that are not local safetensors directories. The compressed format is
encoded from the finished dense shards, one at a time, at the end.
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
from pathlib import Path

import torch
from torch import nn

from .. import __version__
from ..checkpoints.stream_writer import StreamWriter
from ..checkpoints.tensor_files import TensorFiles, checkpoint_files
from ..errors import UserError
from .calibration import BlockWeights
from .engine import plan_layers, prune
from .plan import CalibrationConfig, PruningPlan
from .report import LayerSparsity, PruneReport
from .targets import transformer_blocks

NON_BLOCK = "(outside the blocks)"
IN_MEMORY_FACTOR = 1.5  # peak memory of in-memory pruning in model bytes (measured 1.26-1.49x, docs/pruning.md)


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes; None where the platform does not say."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
MMAP_THRESHOLD_BYTES = 1 << 20


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None  # not glibc: its allocator's own policy applies


def _unmap_large_frees() -> None:
    """Make glibc give every freed allocation above 1 MiB back to the OS at once.

    glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB), after which
    tensors of that size come from the heap, and their freed chunks stay resident until the heap's top is
    free: within one block the temporaries of pruning (float64 copies, scores, masks) and of the forwards
    then add up instead of reusing one another's memory (+64 to +120 MiB per SmolLM2 block, measured). A
    fixed threshold turns that off for this process; tensors above it cost a fresh zeroed mapping each.
    """
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def _no_blas_buffer_pool() -> bool:
    """Stop MKL (torch's CPU BLAS) from keeping freed GEMM buffers for reuse; True if torch's MKL took it.

    MKL's memory manager holds each buffer size it has used; across a block's forwards and solves that is
    12-16 MiB of SmolLM2's streamed SparseGPT peak (VmHWM, measured with MKL_DISABLE_FAST_MM=1 and with this
    call). It acts on buffers allocated after the call, so streaming calls it before its first matrix product.
    """
    try:
        torch_cpu = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
    except OSError:
        return False
    if not hasattr(torch_cpu, "mkl_serv_disable_fast_mm"):
        return False  # a torch build without MKL: nothing is pooled there
    torch_cpu.mkl_serv_disable_fast_mm()
    return True


def _return_freed_memory() -> None:
    """Give the block's freed heap (allocations below the mmap threshold) back to the OS."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _assign(module: nn.Module, key: str, tensor: torch.Tensor) -> None:
    """Put `tensor` at `key` (a dotted parameter or buffer name under `module`)."""
    owner_name, _, leaf = key.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    if leaf in owner._parameters:
        owner._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)
    else:
        owner._buffers[leaf] = tensor


def _read_cast(source: TensorFiles, name: str, dtype: torch.dtype) -> torch.Tensor:
    """Tensor `name` read from `source`, cast to `dtype` if it is a floating tensor."""
    tensor = source.read(name)
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


class StreamedBlocks(BlockWeights):
    """Blocks read from `source` (or, once written, from their own shard) and written by `writer`."""

    streamed = True

    def __init__(self, source: TensorFiles, dtype: torch.dtype, device: torch.device, writer: StreamWriter | None,
                 spill_over_bytes: int | None = None) -> None:
        self.source, self.dtype, self.device, self.writer = source, dtype, torch.device(device), writer
        memory = available_memory()
        self.spill_over_bytes = spill_over_bytes if spill_over_bytes is not None else \
            (memory // 4 if memory else None)
        self.spilled: list[Path] = []

    def load(self, name: str, block: nn.Module) -> None:
        state = block.state_dict(keep_vars=True)
        if not any(value.is_meta for value in state.values()):
            return
        reader = self.source
        if self.finished(name):  # written by an interrupted run: its pruned weights
            path = self.writer.path(name)
            reader = TensorFiles(dict.fromkeys(TensorFiles.header(path), path))
        for key in state:
            _assign(block, key, _read_cast(reader, f"{name}.{key}", self.dtype).to(self.device))

    def unload(self, name: str, block: nn.Module) -> None:
        for key, value in block.state_dict(keep_vars=True).items():
            _assign(block, key, torch.empty_like(value, device="meta"))

    def finish(self, name: str, block: nn.Module) -> None:
        if self.writer is not None and not self.writer.finished(name):
            self.writer.write(name, {f"{name}.{key}": value.detach().cpu()
                                     for key, value in block.state_dict().items()})
        self.unload(name, block)
        _return_freed_memory()

    def finished(self, name: str) -> bool:
        return self.writer is not None and self.writer.finished(name)

    def buffer(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """In memory, or in a memory-mapped file of the staging folder when the two buffers would take more
        than a quarter of the available memory."""
        numel = math.prod(shape)
        too_big = self.spill_over_bytes is not None and 2 * numel * dtype.itemsize > self.spill_over_bytes
        if not too_big or torch.device(device).type != "cpu" or self.writer is None:
            return torch.empty(shape, dtype=dtype, device=device)
        path = self.writer.staging / f"activations-{len(self.spilled)}.bin"
        self.spilled.append(path)
        return torch.from_file(str(path), shared=True, size=numel, dtype=dtype).view(shape)

    def statistics_only(self) -> StreamedBlocks:
        return StreamedBlocks(self.source, self.dtype, self.device, None, self.spill_over_bytes)

    def measure(self, model: nn.Module, layers: dict[str, nn.Module],
                targets: dict[str, float | None]) -> tuple[dict[str, LayerSparsity], int, int]:
        """Zeros counted when each shard was written (the model itself holds no weights any more)."""
        counts = self.writer.counts()
        measured = {name: LayerSparsity(*counts[f"{name}.weight"], target_sparsity=targets.get(name))
                    for name in layers}
        total = sum(numel for _, numel in counts.values())
        return measured, total - sum(zeros for zeros, _ in counts.values()), total

    def remove_spilled(self) -> None:
        for path in self.spilled:
            path.unlink(missing_ok=True)


def local_checkpoint(model: str) -> Path:
    """The local directory of `model` (a path or a short name); UserError for a hub id or a missing folder."""
    from ..models import find_or_prepare_model

    path = Path(find_or_prepare_model(model)).expanduser()
    if not (path / "config.json").is_file():
        raise UserError(f"--stream reads a local checkpoint directory with config.json; {model} is not one: "
                        "download it first (huggingface-cli download ID --local-dir DIR) and give DIR")
    return path


def _skeleton(directory: Path, dtype, source: TensorFiles) -> tuple[nn.Module, torch.dtype]:
    """The model on the meta device with its dtype; refuses an encoder-decoder model."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    from ..models import auto_model_class, model_family, parse_dtype

    config = AutoConfig.from_pretrained(directory)
    if model_family(config) == "encoder-decoder":
        raise UserError("--stream cannot prune an encoder-decoder model (its decoder's calibration inputs need "
                        "the whole encoder at once); prune it without --stream")
    torch_dtype = parse_dtype(dtype)
    if not isinstance(torch_dtype, torch.dtype):  # "auto": the config's dtype, else the first float tensor's
        torch_dtype = getattr(config, "dtype", None) or next(
            stored for name in source.where if (stored := source.shape_dtype(name)[1]).is_floating_point)
        torch_dtype = getattr(torch, torch_dtype) if isinstance(torch_dtype, str) else torch_dtype
    with init_empty_weights():
        model = auto_model_class(config).from_config(config, dtype=torch_dtype)
    model.config.dtype = torch_dtype
    return model.eval(), torch_dtype


class _RowsOnFirstUse:
    """Forward pre-hook of an `nn.Embedding` whose weight is read from the checkpoint a row at a time.

    The weight starts uninitialised (its untouched pages cost no memory); before each forward, the rows the
    input ids name that were not read yet are read from the file. A copy-on-write mapping of the file would
    not do: the kernel maps 64 KiB around each touched page (fault-around), and calibration's ~3,000 distinct
    SmolLM2 token ids (6.6 MiB of rows) made 93 MiB of its 113 MiB embedding resident (measured).
    """

    def __init__(self, source: TensorFiles, name: str, weight: torch.Tensor) -> None:
        self.source, self.name, self.weight = source, name, weight
        self.loaded = torch.zeros(weight.shape[0], dtype=torch.bool)

    def __call__(self, _module: nn.Module, args: tuple) -> None:
        ids = args[0].unique().cpu()
        new = ids[~self.loaded[ids]]
        self.source.read_rows(self.name, new.tolist(), self.weight)
        self.loaded[new] = True


def _load_outside_blocks(model: nn.Module, source: TensorFiles, prefixes: tuple[str, ...], dtype: torch.dtype,
                         device: torch.device) -> list[str]:
    """Load every tensor outside the blocks: embedding tables row by row on first use (`_RowsOnFirstUse`),
    the others mapped when no cast is needed, else read; returns their names."""
    expected = set(model.state_dict())
    names = [name for name in source.where if not name.startswith(prefixes)]
    unexpected = sorted(set(source.where) - expected)
    if unexpected:
        raise UserError(f"the checkpoint holds {len(unexpected)} tensors the model does not have "
                        f"({', '.join(unexpected[:3])}); --stream needs the model's own tensor names: prune "
                        "it without --stream")
    embeddings = {f"{module_name}.weight": module for module_name, module in model.named_modules()
                  if type(module) is nn.Embedding}
    for name in names:
        shape, stored = source.shape_dtype(name)
        cast = stored.is_floating_point and stored != dtype
        if name in embeddings:
            tensor = torch.empty(shape, dtype=dtype if stored.is_floating_point else stored, device=device)
            embeddings[name].register_forward_pre_hook(_RowsOnFirstUse(source, name, tensor))
        else:
            tensor = _read_cast(source, name, dtype) if cast or device.type != "cpu" else source.mapped(name)
        _assign(model, name, tensor.to(device))
    model.tie_weights()
    missing = sorted(name for name, value in model.state_dict(keep_vars=True).items()
                     if value.is_meta and (not name.startswith(prefixes) or name not in source.where))
    if missing:
        raise UserError(f"the checkpoint lacks {len(missing)} tensors of the model ({', '.join(missing[:3])}); "
                        "restore the checkpoint (its weights would otherwise be random)")
    return names


def _check_plan(model: nn.Module, plan: PruningPlan, prefixes: tuple[str, ...]) -> None:
    for step in plan.steps:
        if step.scope == "global":
            raise UserError("--stream cannot honour scope=global (one threshold over every layer needs them all "
                            "at once); use scope=layer or prune without --stream")
    outside = [job.name for job in plan_layers(model, plan) if not job.name.startswith(prefixes)]
    if outside:
        raise UserError(f"--stream prunes layers inside the transformer blocks only, and {outside[0]} is outside "
                        "them; ignore it or prune without --stream")


def _fingerprint(directory: Path, plan: PruningPlan, calibration: CalibrationConfig | None, dtype: torch.dtype,
                 batch_size: int | None) -> dict:
    files = sorted({path for path in checkpoint_files(directory).values()})
    return {"source": {path.name: [path.stat().st_size, path.stat().st_mtime_ns] for path in files},
            "plan": plan.describe(),
            "calibration": dataclasses.asdict(calibration) if calibration is not None else None, "dtype": str(dtype), "batch_size": batch_size,
            "sparse_bench": __version__}


def prune_streaming(model: str, plan: PruningPlan, calibration: CalibrationConfig | None, out_dir: Path, *,
                    dtype="auto", device: str = "cpu", batch_size: int | None = None, progress: bool = True,
                    save_format: str = "dense", spill_over_bytes: int | None = None) -> tuple[PruneReport, Path]:
    """Prune the safetensors checkpoint `model` block by block into a checkpoint at `out_dir`.

    Same arguments and same weights as `prune` + `save_checkpoint(..., save_format)` (bit for bit), at the
    memory of one block, the embeddings' touched rows and the calibration activations. `dense`: one shard per
    block; `compressed`: those shards encoded into `model.sparse.safetensors` at the end. Resumes an
    interrupted run with the same options. Returns the measured report and the directory.
    """
    from transformers import AutoTokenizer

    _unmap_large_frees()
    _no_blas_buffer_pool()
    directory = local_checkpoint(model)
    source = TensorFiles(checkpoint_files(directory))
    skeleton, torch_dtype = _skeleton(directory, dtype, source)
    blocks = transformer_blocks(skeleton)
    prefixes = tuple(name + "." for name, _ in blocks)
    _check_plan(skeleton, plan, prefixes)
    outside = _load_outside_blocks(skeleton, source, prefixes, torch_dtype, torch.device(device))
    needed = weights_bytes(source, torch_dtype)
    if save_format == "compressed":  # at most the dense shards' size, and both exist while it is written
        needed *= 2
    writer = StreamWriter(out_dir, [NON_BLOCK] + [name for name, _ in blocks],
                          _fingerprint(directory, plan, calibration, torch_dtype, batch_size), needed)
    if not writer.finished(NON_BLOCK) and all(source.shape_dtype(name)[1] in (torch_dtype, torch.int64)
                                              for name in outside):
        writer.copy(NON_BLOCK, source, outside)
    elif not writer.finished(NON_BLOCK):  # read again: the skeleton's embeddings hold only the rows used
        writer.write(NON_BLOCK, {name: _read_cast(source, name, torch_dtype) for name in outside})
    weights = StreamedBlocks(source, torch_dtype, device, writer, spill_over_bytes)
    try:
        # no reference kept here: prune() drops the tokenizer once it has made the calibration tokens, so
        # it is not resident while the blocks are pruned (SmolLM2's: 55 MiB); it is loaded again to be saved
        report = prune(skeleton, plan, calibration, AutoTokenizer.from_pretrained(directory), progress,
                       batch_size=batch_size, weights=weights)
    finally:
        weights.remove_spilled()
    saved = writer.complete(skeleton.config, AutoTokenizer.from_pretrained(directory),
                            directory / "generation_config.json", report.to_dict(), save_format, _aliases(skeleton))
    return report, saved


def _aliases(model: nn.Module) -> dict[str, str]:
    """{tied parameter name: the name it is stored under} (lm_head.weight -> model.embed_tokens.weight)."""
    first: dict[int, str] = {}
    aliases = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if id(parameter) in first:
            aliases[name] = first[id(parameter)]
        else:
            first[id(parameter)] = name
    return aliases


def too_big_for_memory(model: str, dtype) -> str | None:
    """A one-line note when pruning `model` in memory would need more than the available memory, else None."""
    from ..models import parse_dtype

    try:
        source = TensorFiles(checkpoint_files(local_checkpoint(model)))
    except UserError:
        return None  # not a local safetensors checkpoint: loading it will say what is wrong
    torch_dtype = parse_dtype(dtype)
    size = weights_bytes(source, torch_dtype if isinstance(torch_dtype, torch.dtype) else None)
    available = available_memory()
    if available is None or size * IN_MEMORY_FACTOR <= available:
        return None
    return (f"{model} takes {size / 2**30:.1f} GiB and pruning it in memory needs about "
            f"{size * IN_MEMORY_FACTOR / 2**30:.1f} GiB, more than the {available / 2**30:.1f} GiB available: "
            "pruning it block by block from disk (--stream)")


def weights_bytes(source: TensorFiles, dtype: torch.dtype | None) -> int:
    """Bytes of every tensor of `source` with its floating tensors in `dtype` (None: as stored)."""
    total = 0
    for name in source.where:
        shape, stored = source.shape_dtype(name)
        total += math.prod(shape) * (dtype.itemsize if dtype is not None and stored.is_floating_point
                                     else stored.itemsize)
    return total


__all__ = ["StreamedBlocks", "prune_streaming", "too_big_for_memory", "weights_bytes", "available_memory",
           "local_checkpoint", "NON_BLOCK"]
