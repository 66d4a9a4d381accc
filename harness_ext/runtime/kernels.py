"""The matrix-multiply kernels a pruned linear layer can run on, one registry row each.

A kernel packs an (out, in) weight into its own storage and multiplies a (tokens, in) input by it, giving
(tokens, out) = x @ W^T (the bias is added by the caller). Rows:

- `dense`: `torch.nn.functional.linear` on the dense weight (what every model runs today).
- `csr`: torch's compressed-sparse-row tensor (int32 indices), `torch.sparse.mm(W, x^T)^T`; CPU (MKL, run on one
  thread) and CUDA.
- `bsr`: torch's block-sparse-row tensor with the layer's R x C block shape (structure=block:RxC only);
  MKL on CPU refuses non-square blocks, which the probe records as the reason it is unavailable.
- `scipy-csr`: `scipy.sparse.csr_matrix @ x^T` on CPU (float32/float64; single-threaded, tiny fixed cost).
- `semi-structured`: torch's 2:4 semi-structured tensor (cuSPARSELt / CUTLASS) on CUDA, fp16/bf16, 2:4 layers.

`unavailable(kernel, weight, layout)` says why a kernel cannot serve a layer (None when it can); the chooser
(choose.py) then times it on the real shapes, and any exception there also makes it unavailable.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..pruning.reproducible import one_cpu_thread
from ..pruning.values import BlockStructure


@dataclass(frozen=True)
class Kernel:
    """One kernel: `pack(weight, block)` -> storage, `matmul(storage, x)` -> x @ W^T, `unpack(storage)` -> the
    dense (out, in) weight, `bytes(storage)` -> bytes held; `check(weight, block)` -> reason or None."""

    name: str
    description: str
    pack: Callable[[torch.Tensor, BlockStructure | None], Any]
    matmul: Callable[[Any, torch.Tensor], torch.Tensor]
    unpack: Callable[[Any], torch.Tensor]
    nbytes: Callable[[Any], int]
    check: Callable[[torch.Tensor, BlockStructure | None], str | None]


def _tensor_bytes(*tensors: torch.Tensor) -> int:
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def _dense_check(weight: torch.Tensor, block: BlockStructure | None) -> str | None:
    return None


def _pack_csr(weight: torch.Tensor, block: BlockStructure | None) -> torch.Tensor:
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state": known, said in docs/runtime.md
        warnings.simplefilter("ignore", UserWarning)
        csr = weight.detach().to_sparse_csr()
        return torch.sparse_csr_tensor(csr.crow_indices().int(), csr.col_indices().int(), csr.values(), csr.shape)


def _sparse_bytes(matrix: torch.Tensor) -> int:
    """Bytes of a torch CSR or BSR tensor (row pointers, column indices, values)."""
    return _tensor_bytes(matrix.crow_indices(), matrix.col_indices(), matrix.values())


def _torch_sparse_matmul(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x @ W^T for a torch CSR/BSR W. On one CPU thread: on the shared 2-core machine MKL's sparse routines were
    15-50x slower with two threads than with one (0.8 ms vs 45 ms, 1536 x 576 at 95 %, 128 tokens)."""
    with one_cpu_thread():
        return torch.sparse.mm(matrix, x.t().contiguous()).t()


def _bsr_check(weight: torch.Tensor, block: BlockStructure | None) -> str | None:
    if block is None:
        return "needs a block-structured layer (structure=block:RxC)"
    return None


def _pack_bsr(weight: torch.Tensor, block: BlockStructure | None) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return weight.detach().to_sparse_bsr((block.rows, block.columns))


def _scipy_check(weight: torch.Tensor, block: BlockStructure | None) -> str | None:
    if weight.device.type != "cpu":
        return "scipy.sparse runs on the CPU only"
    if weight.dtype not in (torch.float32, torch.float64):
        return f"scipy.sparse has no {str(weight.dtype).removeprefix('torch.')} matmul; use float32"
    return None


def _pack_scipy(weight: torch.Tensor, block: BlockStructure | None) -> Any:
    import scipy.sparse

    return scipy.sparse.csr_matrix(weight.detach().numpy())


def _scipy_matmul(matrix: Any, x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(matrix @ x.detach().numpy().T).t()


def _scipy_bytes(matrix: Any) -> int:
    return int(matrix.data.nbytes + matrix.indices.nbytes + matrix.indptr.nbytes)


def is_two_four(weight: torch.Tensor) -> bool:
    """True if every group of 4 consecutive inputs of every row holds at most 2 non-zeros."""
    if weight.shape[1] % 4:
        return False
    return bool(((weight.detach().reshape(weight.shape[0], -1, 4) != 0).sum(-1) <= 2).all())


def _semi_structured_check(weight: torch.Tensor, block: BlockStructure | None) -> str | None:
    if not is_two_four(weight):
        return "the layer is not 2:4 sparse (some group of 4 inputs holds more than 2 non-zeros); prune with structure=2:4"
    if weight.device.type != "cuda":
        return "2:4 semi-structured kernels need a CUDA GPU (this layer is on the CPU)"
    if weight.dtype not in (torch.float16, torch.bfloat16):
        return "2:4 semi-structured kernels need float16 or bfloat16 weights; load with dtype=float16"
    return None


def _pack_semi_structured(weight: torch.Tensor, block: BlockStructure | None) -> torch.Tensor:
    with warnings.catch_warnings():  # "prototype stage" warning, said in docs/runtime.md
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse.to_sparse_semi_structured(weight.detach())


def _semi_structured_bytes(matrix: Any) -> int:
    return _tensor_bytes(*(t for t in (matrix.packed, matrix.meta) if t is not None))


KERNELS: dict[str, Kernel] = {kernel.name: kernel for kernel in (
    Kernel("dense", "torch.nn.functional.linear on the dense weight", lambda w, b: w.detach(),
           lambda w, x: F.linear(x, w), lambda w: w, _tensor_bytes, _dense_check),
    Kernel("csr", "torch sparse CSR (int32 indices), torch.sparse.mm", _pack_csr, _torch_sparse_matmul,
           lambda m: m.to_dense(), _sparse_bytes, _dense_check),
    Kernel("bsr", "torch sparse BSR with the layer's R x C blocks, torch.sparse.mm", _pack_bsr,
           _torch_sparse_matmul, lambda m: m.to_dense(), _sparse_bytes, _bsr_check),
    Kernel("scipy-csr", "scipy.sparse.csr_matrix @ x^T (CPU, float32/float64)", _pack_scipy, _scipy_matmul,
           lambda m: torch.from_numpy(m.toarray()), _scipy_bytes, _scipy_check),
    Kernel("semi-structured", "torch.sparse.to_sparse_semi_structured, 2:4 on CUDA (fp16/bf16)",
           _pack_semi_structured, lambda m, x: F.linear(x, m), lambda m: m.to_dense(), _semi_structured_bytes,
           _semi_structured_check),
)}
SPARSE_KERNELS = tuple(name for name in KERNELS if name != "dense")


def unavailable(name: str, weight: torch.Tensor, block: BlockStructure | None) -> str | None:
    """Why kernel `name` cannot serve this (out, in) weight (None: it can, pending a probe at run time)."""
    return KERNELS[name].check(weight, block)


__all__ = ["Kernel", "KERNELS", "SPARSE_KERNELS", "is_two_four", "unavailable"]
