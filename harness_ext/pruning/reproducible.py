"""Factorisations whose result does not depend on the CPU thread count.

LAPACK's blocked Cholesky (`potrf`, behind `torch.linalg.cholesky` on CPU) and the inverse from it (`potri`)
split their trailing updates across threads for matrices of 256 columns and more, so the factor of the same
float64 matrix differs in its last bits with 1 and 2 threads (measured on this machine's torch 2.13 build).
SparseGPT's 2:4 choices compare four values per group, so such a difference flips a choice and then changes
every later block. Running the factorisation on one thread fixes its summation order; it is a small part of a
layer's solve (a (4096, 4096) factor takes well under a second), and CUDA factorisations are not affected.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def one_cpu_thread() -> Iterator[None]:
    """Run the enclosed torch CPU operations on one thread, then restore the caller's thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
