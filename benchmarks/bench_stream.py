"""Streaming pruning (`sparse-bench prune --stream`): equality with the in-memory engine, peak memory, time per block.

Two parts, each case in its own process so its peak RSS (VmHWM) is its own; memory is reported as
(VmHWM - RSS with the libraries imported) / the model's bytes, as in bench_prune.py:

    python benchmarks/bench_stream.py smollm2                      # SmolLM2-135M fp32: --stream vs in memory
    python benchmarks/make_random_llama.py /work/bench_data/llama-3b-random
    python benchmarks/bench_stream.py big --model /work/bench_data/llama-3b-random --out-root /work/bench_data

`smollm2`: magnitude, Wanda and SparseGPT at 50 %, once in memory (`prune` + `save_checkpoint`) and once
streamed; the two checkpoints are compared tensor by tensor, bit for bit. Target: streamed peak <= 0.35x the
model's bytes. `big`: magnitude and Wanda (a few calibration samples) on the ~3B random fp16 model, streamed
only. Target: peak RSS <= 2.5 GB. Each part writes benchmarks/results/bench_stream_PART.json and the table
between its markers in docs/pruning.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SPARSE_BENCH_DATA_DIR") or REPO.parent / "shared" / "data")
DOC = REPO / "docs" / "pruning.md"


def worker(args: argparse.Namespace) -> None:
    """One case in this process: prune (streamed or in memory), print a JSON line."""
    import accelerate  # noqa: F401  (the libraries' baseline includes them, lazily imported parts too)
    import safetensors.torch  # noqa: F401
    import torch  # noqa: F401
    import transformers
    from transformers import AutoConfig

    from sparse_bench.harness_ext.checkpoints import save_checkpoint
    from sparse_bench.harness_ext.memory import peak_rss_bytes, rss_bytes
    from sparse_bench.harness_ext.models import load_model
    from sparse_bench.harness_ext.pruning.engine import prune
    from sparse_bench.harness_ext.pruning.plan import CalibrationConfig
    from sparse_bench.harness_ext.pruning.request import shortcut_plan
    from sparse_bench.harness_ext.pruning.streaming import prune_streaming

    config = AutoConfig.from_pretrained(args.model)
    transformers.AutoModelForCausalLM.from_config  # noqa: B018
    __import__(f"transformers.models.{config.model_type}.modeling_{config.model_type}")
    baseline = rss_bytes()
    plan = shortcut_plan(args.method, 0.5, None, source="bench")
    calibration = CalibrationConfig(data=args.calibration, nsamples=args.nsamples, seqlen=args.seqlen)
    started = time.perf_counter()
    block_seconds = None
    if args.mode == "stream":
        report, out = prune_streaming(args.model, plan, calibration, args.out, progress=False,
                                      batch_size=args.batch_size)
        record = json.loads((out / "sparse_bench_checkpoint.json").read_text())
        block_seconds = list(record["stream_record"]["block_seconds"].values())
    else:
        model, tokenizer = load_model(args.model)
        report = prune(model, plan, calibration, tokenizer, progress=False, batch_size=args.batch_size)
        save_checkpoint(model, tokenizer, args.out, prune_record=report.to_dict())
    print(json.dumps({"seconds": time.perf_counter() - started, "peak_delta": peak_rss_bytes() - baseline,
                      "sparsity": report.overall_sparsity, "block_seconds": block_seconds}))


def run_case(model: str, mode: str, method: str, out: Path, args: argparse.Namespace) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, __file__, "worker", "--model", model, "--mode", mode, "--method", method,
               "--out", str(out), "--calibration", args.calibration, "--nsamples", str(args.nsamples),
               "--seqlen", str(args.seqlen), *(["--batch-size", str(args.batch_size)] if args.batch_size else [])]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    if result.returncode != 0:
        sys.exit(f"{mode} {method} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def model_bytes(model: str) -> int:
    from sparse_bench.harness_ext.checkpoints.tensor_files import TensorFiles, checkpoint_files
    from sparse_bench.harness_ext.pruning.streaming import local_checkpoint, weights_bytes

    return weights_bytes(TensorFiles(checkpoint_files(local_checkpoint(model))), None)


def same_bits(first: Path, second: Path) -> bool:
    """Every tensor of two checkpoints equal bit for bit (read one tensor at a time)."""
    import torch

    from sparse_bench.harness_ext.checkpoints.tensor_files import TensorFiles, checkpoint_files

    a, b = TensorFiles(checkpoint_files(first)), TensorFiles(checkpoint_files(second))
    return a.where.keys() == b.where.keys() and all(
        torch.equal(a.read(name).view(torch.uint8), b.read(name).view(torch.uint8)) for name in a.where)


def write_doc(part: str, table: str) -> None:
    start, end = f"<!-- bench_stream:{part}:start -->", f"<!-- bench_stream:{part}:end -->"
    text = DOC.read_text(encoding="utf-8")
    block = f"{start}\n{table}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOC.write_text(text, encoding="utf-8")


def smollm2(args: argparse.Namespace) -> None:
    from sparse_bench.harness_ext.models import find_or_prepare_model

    model = find_or_prepare_model("smollm2-135m")
    size = model_bytes(model)
    rows, results = [], {}
    for method in args.methods.split(","):
        cases = {mode: run_case(model, mode, method, args.out_root / f"stream-bench-{method}-{mode}", args)
                 for mode in ("memory", "stream")}
        equal = same_bits(args.out_root / f"stream-bench-{method}-memory", args.out_root / f"stream-bench-{method}-stream")
        results[method] = {**cases, "bit_identical": equal}
        rows.append(f"| {method} 50 % | {'yes' if equal else 'NO'} | {cases['memory']['peak_delta'] / size:.3f}x | "
                    f"{cases['stream']['peak_delta'] / size:.3f}x | {cases['memory']['seconds']:.0f} s | "
                    f"{cases['stream']['seconds']:.0f} s |")
    table = (f"SmolLM2-135M-Instruct float32 ({size / 2**20:.0f} MiB of weights), calibration {args.nsamples} x "
             f"{args.seqlen} tokens, {args.batch_size or 'the default number of'} samples per forward, 2 threads; wall times from a shared machine (other jobs running); "
             "peak = VmHWM - RSS with the libraries imported, in model bytes.\n\n"
             "| method | streamed == in memory, bit for bit | peak in memory | peak streamed | "
             "wall in memory | wall streamed |\n|---|---|---|---|---|---|\n" + "\n".join(rows))
    finish("smollm2", table, {"model_bytes": size, "cases": results}, args)


def big(args: argparse.Namespace) -> None:
    size = model_bytes(args.model)
    rows, results = [], {}
    for method in args.methods.split(","):
        case = run_case(args.model, "stream", method, args.out_root / f"stream-bench-big-{method}", args)
        shutil.rmtree(args.out_root / f"stream-bench-big-{method}", ignore_errors=True)
        results[method] = case
        per_block = case["block_seconds"]
        rows.append(f"| {method} 50 % | {case['peak_delta'] / 2**30:.2f} GiB ({case['peak_delta'] / size:.2f}x) | "
                    f"{sum(per_block) / len(per_block):.1f} s (min {min(per_block):.1f}, max {max(per_block):.1f}) | "
                    f"{case['seconds']:.0f} s |")
    table = (f"Random-weight Llama-3.2-3B-shaped model, float16, {size / 2**30:.2f} GiB of weights "
             f"(benchmarks/make_random_llama.py), calibration {args.nsamples} x {args.seqlen} tokens (Wanda), "
             "2 threads, shared machine.\n\n| method | peak RSS above libraries | time per block | wall |\n"
             "|---|---|---|---|\n" + "\n".join(rows))
    finish("big", table, {"model_bytes": size, "cases": results}, args)


def finish(part: str, table: str, results: dict, args: argparse.Namespace) -> None:
    out = REPO / "benchmarks" / "results" / f"bench_stream_{part}.json"
    out.write_text(json.dumps({**results, "nsamples": args.nsamples, "seqlen": args.seqlen,
                               "batch_size": args.batch_size}, indent=2) + "\n")
    write_doc(part, table)
    print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["smollm2", "big", "worker"])
    parser.add_argument("--model")
    parser.add_argument("--mode", choices=["stream", "memory"])
    parser.add_argument("--method")
    parser.add_argument("--methods", default=None)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--out-root", type=Path, default=Path("/tmp"))
    parser.add_argument("--calibration", default="c4")
    parser.add_argument("--nsamples", type=int, default=None)
    parser.add_argument("--seqlen", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="calibration samples per forward, both modes (default: the engine's, ~2048 tokens)")
    args = parser.parse_args()
    if args.part == "worker":
        worker(args)
        return
    defaults = {"smollm2": ("magnitude,wanda,sparsegpt", 32, 256), "big": ("magnitude,wanda", 2, 128)}[args.part]
    args.methods = args.methods or defaults[0]
    args.nsamples = args.nsamples or defaults[1]
    args.seqlen = args.seqlen or defaults[2]
    (smollm2 if args.part == "smollm2" else big)(args)


if __name__ == "__main__":
    main()
