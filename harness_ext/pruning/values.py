"""Typed values of pruning options, from text (model_args, CLI) or YAML: sparsity, N:M structure, flags, integers.

Conventions
-----------
- `sparsity` is the fraction of weights set to zero in each targeted layer, in [0, 1).
- `NMStructure(n, m)` keeps at most `n` non-zero weights in every group of `m` consecutive weights along a
  layer's input dimension (NVIDIA's and Zhou et al.'s "N:M": 2:4 keeps 2 of every 4, sparsity 1 - n/m).
- `BlockStructure(rows, columns)` ("block:RxC") prunes whole R x C tiles of the (out, in) weight, ranked by the
  sum of their members' scores; the sparsity stays free (SparseML's `mask_type: [1, 4]`, FBGEMM's 1x4 blocks).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UserError

UNSTRUCTURED = "unstructured"


@dataclass(frozen=True)
class NMStructure:
    """Keep at most `n` non-zeros in every `m` consecutive input weights."""

    n: int
    m: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


@dataclass(frozen=True)
class BlockStructure:
    """Prune whole `rows` x `columns` tiles of the (out, in) weight; `block:1x4` tiles 4 consecutive inputs."""

    rows: int
    columns: int

    @property
    def size(self) -> int:
        return self.rows * self.columns

    def __str__(self) -> str:
        return f"block:{self.rows}x{self.columns}"


def validate_sparsity(sparsity: float) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise UserError(f"sparsity must be a number in [0, 1), got {sparsity!r}; write it as a fraction, e.g. 0.5")
    if not 0.0 <= float(sparsity) < 1.0:
        raise UserError(f"sparsity must be in [0, 1) (fraction of weights set to zero), got {sparsity}; "
                        "for 50 % write 0.5")
    return float(sparsity)


def parse_structure(text: str | None) -> NMStructure | BlockStructure | None:
    """Parse "unstructured" / "0:0" / None -> None, "N:M" (0 < N < M) -> NMStructure, "block:RxC" ->
    BlockStructure (block:1x1 is unstructured)."""
    if text is None:
        return None
    value = str(text).strip().lower()
    if value in ("", UNSTRUCTURED, "0:0"):
        return None
    if value.startswith("block:"):
        return parse_block(text)
    match = re.fullmatch(r"(\d+):(\d+)", value)
    if not match:
        raise UserError(f"malformed structure {text!r}; use 'unstructured', N:M such as 2:4 or block:RxC such as "
                        "block:1x4")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise UserError(f"impossible N:M structure {text!r}: need 0 < N < M (keep N of every M weights); "
                        "write e.g. 2:4")
    return NMStructure(n, m)


def parse_block(text: str) -> BlockStructure | None:
    """"block:RxC" (R, C >= 1) -> BlockStructure; block:1x1 is unstructured (None)."""
    match = re.fullmatch(r"block:(\d+)x(\d+)", str(text).strip().lower())
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise UserError(f"malformed block structure {text!r}; write block:RxC with R, C >= 1, e.g. block:1x4")
    rows, columns = int(match.group(1)), int(match.group(2))
    return None if rows == columns == 1 else BlockStructure(rows, columns)


def parse_flag(name: str, value: bool | str) -> bool:
    """A yes/no argument given as a bool or as lm-eval model_args text (true/false, 1/0, yes/no)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise UserError(f"{name} must be true or false, got {value!r}; write {name}=true or {name}=false")


def parse_integer(name: str, value: float | str) -> int:
    """A whole-number argument given as an int or as lm-eval model_args text ("128"; lm-eval casts "128.0" to
    a float): anything else, 1.5 included, is an error rather than silently truncated."""
    if isinstance(value, bool):
        raise UserError(f"{name} must be a whole number, got {value!r}; write it without a fraction, e.g. {name}=128")
    try:
        number = float(value) if not isinstance(value, int) else value
    except (TypeError, ValueError):
        number = None
    if number is None or isinstance(number, float) and not number.is_integer():
        raise UserError(f"{name} must be a whole number, got {value!r}; write it without a fraction, e.g. {name}=128")
    return int(number)


__all__ = ["UNSTRUCTURED", "NMStructure", "BlockStructure", "validate_sparsity", "parse_structure", "parse_block",
           "parse_flag", "parse_integer"]
