"""The runs of benchmarks/finetune_minilm.py: the run-spec syntax, and each step in a process of its own.

A run is `METHOD[:TARGET]:PRECISION[:MAX_STEPS]`:
- METHOD: `dense` (no pruning, no TARGET), a method of the registry (`magnitude`, `wanda`, `sparsegpt`, ...;
  per-layer sparsity), or `magnitude-global` (one magnitude threshold over all pruned layers, `--scope global`);
- TARGET: a sparsity fraction (`0.5`) or an N:M structure (`2:4`);
- PRECISION: `fp32`, `bf16-amp` or `fp16-amp` (the `--precision` of `sparse-bench finetune`);
- MAX_STEPS: optimizer steps that cut the run short (otherwise the script's --epochs decide).

    dense:fp32  magnitude-global:0.9:fp32  magnitude-global:0.9:bf16-amp:120  wanda:0.5:fp32  sparsegpt:2:4:fp32

Pruning is `sparse-bench prune MODEL ... --json` and fine-tuning is `sparse-bench finetune ... --json`, each in
a fresh process, so each reports its own peak resident memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from finetune_runs import finetune_in_process_of_its_own, sparse_bench

from sparse_bench.harness_ext.errors import UserError
from sparse_bench.harness_ext.finetune.config import PRECISIONS
from sparse_bench.harness_ext.pruning.request import parse_request

DENSE = "dense"
GLOBAL_SUFFIX = "-global"
SYNTAX = "METHOD[:TARGET]:PRECISION[:MAX_STEPS], e.g. dense:fp32, magnitude-global:0.9:bf16-amp:120, sparsegpt:2:4:fp32"


@dataclass(frozen=True)
class RunSpec:
    """One fine-tuning run: what to prune (method, scope, sparsity fraction or N:M structure), then how to train."""

    text: str
    method: str
    scope: str = "layer"
    sparsity: float | None = None
    structure: str | None = None
    precision: str = "fp32"
    max_steps: int | None = None

    @property
    def prune_key(self) -> tuple:
        """Runs with the same key fine-tune the same pruned model (it is pruned once)."""
        return self.method, self.scope, self.sparsity, self.structure

    @property
    def label(self) -> str:
        """The pruning in words: `dense`, `magnitude-global 90%`, `wanda 2:4`."""
        if self.method == DENSE:
            return DENSE
        name = self.method + (GLOBAL_SUFFIX if self.scope == "global" else "")
        return f"{name} {self.structure}" if self.structure else f"{name} {self.sparsity:.0%}"

    def prune_options(self) -> dict:
        """The pruning options by the names of the options table (pruning/options.py); empty for dense."""
        if self.method == DENSE:
            return {}
        target = {"structure": self.structure} if self.structure else {"sparsity": self.sparsity}
        return {"method": self.method, **({"scope": "global"} if self.scope == "global" else {}), **target}


def _integer(text: str, what: str, spec: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"run {spec!r}: {what} must be a positive integer, got {text!r}; write {SYNTAX}")
    return int(text)


def _target(parts: list[str], spec: str) -> dict:
    """{'sparsity': fraction} or {'structure': 'N:M'} from TARGET's one or two fields."""
    if len(parts) == 2:
        return {"structure": f"{_integer(parts[0], 'N of N:M', spec)}:{_integer(parts[1], 'M of N:M', spec)}"}
    if len(parts) == 1:
        try:
            return {"sparsity": float(parts[0])}
        except ValueError:
            raise UserError(f"run {spec!r}: target {parts[0]!r} is neither a fraction nor N:M; write {SYNTAX}") from None
    raise UserError(f"run {spec!r}: expected one target (0.5 or 2:4), got {':'.join(parts)!r}; write {SYNTAX}")


def parse_run(spec: str) -> RunSpec:
    """The `RunSpec` of one run text; UserError naming the run when it is not valid (checked by the request
    layer, as `sparse-bench prune` checks its flags)."""
    fields = spec.strip().split(":")
    precision_at = [index for index, field in enumerate(fields) if field in PRECISIONS]
    if len(precision_at) != 1 or precision_at[0] == 0 or len(fields) - precision_at[0] > 2:
        raise UserError(f"run {spec!r} is not {SYNTAX} (precision one of {', '.join(PRECISIONS)})")
    at = precision_at[0]
    method, target = fields[0], fields[1:at]
    steps = _integer(fields[at + 1], "MAX_STEPS", spec) if at + 1 < len(fields) else None
    if method == DENSE:
        if target:
            raise UserError(f"run {spec!r}: dense takes no target; write dense:{fields[at]}")
        return RunSpec(spec, DENSE, precision=fields[at], max_steps=steps)
    scope = "global" if method.endswith(GLOBAL_SUFFIX) else "layer"
    run = RunSpec(spec, method.removesuffix(GLOBAL_SUFFIX), scope, precision=fields[at], max_steps=steps,
                  **_target(target, spec))
    try:
        parse_request(run.prune_options(), source="cli")
    except UserError as error:
        raise UserError(f"run {spec!r}: {error}") from None
    return run


def parse_runs(text: str) -> list[RunSpec]:
    """Comma-separated runs, every one checked before anything runs."""
    return [parse_run(spec) for spec in text.split(",") if spec.strip()]


def prune(model: Path | str, run: RunSpec, calibration: list[str], out: Path) -> dict:
    """`sparse-bench prune MODEL` as `run` says (calibration flags: CALIBRATION), saved at OUT; its report."""
    flags = [f"--{name}={value}" for name, value in run.prune_options().items()]
    return sparse_bench(["prune", str(model), *flags, *calibration, "--no-progress", "--out", str(out)])


def finetune(model: Path | str, run: RunSpec, options: list[str], out: Path) -> dict:
    """The record of `sparse-bench finetune MODEL OPTIONS...` at `run`'s precision and step budget."""
    steps = ["--max-steps", str(run.max_steps)] if run.max_steps else []
    return finetune_in_process_of_its_own(model, out, [*options, "--precision", run.precision, *steps])
