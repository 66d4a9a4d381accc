"""`sparse-bench latency MODEL`: prefill and decode speed with dense kernels and with a chosen runtime."""

from __future__ import annotations

import json

import click

from ..errors import UserError
from .choose import MODES
from .kernels import SPARSE_KERNELS


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise UserError(f"--{name} must be >= 1, got {value}; leave it out for the default")
    return value


def _summary(result: dict) -> str:
    dense, chosen, report = result["dense"], result["chosen"], result["runtime_report"]
    decode = result["decode_speedup"]
    lines = [f"runtime={result['runtime']}: {report['sparse_layers']} of {report['pruned_layers']} pruned layers "
             f"run sparse kernels ({', '.join(f'{k} {v}' for k, v in sorted(report['kernel_counts'].items()))})",
             f"prefill {dense['forward_shape'][0]}x{dense['forward_shape'][1]}: dense {dense['forward_ms']:.2f} ms, "
             f"{result['runtime']} {chosen['forward_ms']:.2f} ms ({result['prefill_speedup']:.2f}x)"]
    if decode is not None:
        lines.append(f"decode batch 1: dense {dense['generate_tokens_per_s']:.1f} tokens/s, {result['runtime']} "
                     f"{chosen['generate_tokens_per_s']:.1f} tokens/s ({decode:.2f}x)")
    if report["pruned_linear_memory_ratio"] is not None:
        lines.append(f"pruned linear weights: {report['pruned_linear_stored_bytes']:,} of "
                     f"{report['pruned_linear_dense_bytes']:,} dense bytes "
                     f"({report['pruned_linear_memory_ratio']:.3f}x)")
    lines += [f"fallback: {line}" for line in report["fallbacks"]]
    lines.append(f"{chosen['device_name']}, {chosen['torch_threads']} torch threads, {chosen['dtype']}")
    return "\n".join(lines)


@click.command("latency", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model")
@click.option("--runtime", default="auto", show_default=True, type=click.Choice(MODES + SPARSE_KERNELS),
              help="Kernel choice for the pruned layers (auto: fastest per layer, measured).")
@click.option("--batch", type=int, default=1, show_default=True, help="Prefill batch size.")
@click.option("--seqlen", type=int, default=128, show_default=True, help="Prefill tokens per sequence.")
@click.option("--new-tokens", type=int, default=32, show_default=True, help="Tokens generated at batch 1.")
@click.option("--repeats", type=int, default=9, show_default=True,
              help="Interleaved dense / runtime forward pairs (generation: half as many); medians.")
@click.option("--dtype", default="auto", show_default=True, help="float32, float16, bfloat16 or auto.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def latency_command(model, runtime, batch, seqlen, new_tokens, repeats, dtype, device, as_json):
    """Prefill ms and decode tokens/s of MODEL with dense kernels, then with --runtime, in one process.

    The same measurement as the leaderboard's latency columns. Prune first (`sparse-bench prune`); the
    per-layer kernel choices and timings are in the --json output under `runtime_report`.

    \b
    Example:
      sparse-bench prune smollm2-135m --method magnitude --sparsity 0.95 --out out/mag95
      sparse-bench latency out/mag95 --runtime auto --seqlen 128 --new-tokens 32
    """
    for name, value in (("batch", batch), ("seqlen", seqlen), ("new-tokens", new_tokens), ("repeats", repeats)):
        _positive(name, value)
    from ..models import load_model
    from .latency import measure_runtime

    loaded, _ = load_model(model, dtype, device)
    result = {"model": model, **measure_runtime(loaded.eval(), runtime, batch, seqlen, new_tokens, repeats)}
    click.echo(json.dumps(result, indent=2, default=str) if as_json else _summary(result))


__all__ = ["latency_command"]
