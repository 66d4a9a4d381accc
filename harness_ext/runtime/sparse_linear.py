"""`SparseLinear`: a pruned `nn.Linear` that holds only the storage of the kernels chosen for it.

Inputs of at most `decode_tokens` rows (generation steps) run the `decode` kernel, larger inputs (prompts,
lm-eval's scoring batches) the `prefill` kernel. When both are sparse kernels the dense weight is gone: the
module holds the sparse form only (that is where the memory saving comes from). A kernel that raises at run
time is replaced by dense for this layer (densified from its own storage), and the reason is kept in
`fallback_reason` for the results JSON; evaluation goes on.

The module is for execution: its sparse storage is not in `state_dict()`; save the pruned model before
choosing a runtime.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..pruning.values import BlockStructure
from .kernels import KERNELS

LOGGER = logging.getLogger("sparse_bench.runtime")
REGIMES = ("decode", "prefill")


class SparseLinear(nn.Module):
    """y = x W^T + b with W held as the chosen kernels' storage; `choice` maps "decode"/"prefill" to a kernel."""

    def __init__(self, linear: nn.Linear, choice: dict[str, str], decode_tokens: int,
                 block: BlockStructure | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = linear.bias
        self.decode_tokens = decode_tokens
        self.choice = {regime: choice[regime] for regime in REGIMES}
        weight = linear.weight.detach()
        self.storage = {kernel: KERNELS[kernel].pack(weight, block) for kernel in set(self.choice.values())}
        self.fallback_reason: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        kernel = self.choice["decode" if flat.shape[0] <= self.decode_tokens else "prefill"]
        try:
            out = KERNELS[kernel].matmul(self.storage[kernel], flat)
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as error:
            out = self._fall_back_to_dense(kernel, error, flat)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def _fall_back_to_dense(self, kernel: str, error: Exception, flat: torch.Tensor) -> torch.Tensor:
        dense = KERNELS[kernel].unpack(self.storage[kernel]).to(device=flat.device, dtype=flat.dtype)
        self.storage = {"dense": dense}
        self.choice = {regime: "dense" for regime in REGIMES}
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        self.fallback_reason = (f"{kernel} failed at run time on a {tuple(flat.shape)} input "
                                f"({type(error).__name__}: {first_line}); dense from then on")
        LOGGER.warning("%s", self.fallback_reason)
        return KERNELS["dense"].matmul(dense, flat)

    def weight_bytes(self) -> int:
        """Bytes of the weight storage held (all chosen kernels' forms; the bias is not counted)."""
        return sum(KERNELS[kernel].nbytes(storage) for kernel, storage in self.storage.items())

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"decode={self.choice['decode']}, prefill={self.choice['prefill']}")


__all__ = ["REGIMES", "SparseLinear"]
