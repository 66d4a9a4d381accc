"""Same inputs, same numbers on any machine: SparseGPT masks and weights with 1 and with 2 CPU threads.

Each case prunes the default model (SmolLM2-135M-Instruct, float32) in its own process with a given torch
thread count (a different BLAS summation order), then prints the sha256 of the pruned layers' masks and of their
weights, the token-level WikiText-2 perplexity and the pruning wall time. The statistics and the SparseGPT solve
are float64 (harness_ext/pruning/calibration.py, sparsegpt.py), so the digests must be equal; Wanda runs once
as the cost reference (SparseGPT's wall / Wanda's wall in the same run). Writes
benchmarks/results/determinism.{json,md}.

    python benchmarks/check_determinism.py                         # demo calibration: c4 16 x 256
    python benchmarks/check_determinism.py --nsamples 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_DATA = Path(os.environ.get("SPARSE_BENCH_DATA_DIR") or REPO.parent / "shared" / "data")
CASES = (("sparsegpt", "0.5"), ("sparsegpt", "2:4"), ("wanda", "0.5"))


def worker(args: argparse.Namespace) -> None:
    """Prune once with args.threads threads; print one JSON line."""
    import hashlib

    import torch

    from sparse_bench.harness_ext.models import load_model
    from sparse_bench.harness_ext.perplexity import read_text, token_perplexity
    from sparse_bench.harness_ext.pruning.engine import prune
    from sparse_bench.harness_ext.pruning.plan import CalibrationConfig, shortcut_plan
    from sparse_bench.harness_ext.pruning.targets import find_target_layers, weight_matrix

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, "float32", "cpu")
    structure = args.target if ":" in args.target else None
    plan = shortcut_plan(args.method, None if structure else float(args.target), structure)
    started = time.perf_counter()
    prune(model, plan, CalibrationConfig("c4", args.nsamples, args.seqlen, 0), tokenizer, progress=False)
    wall = time.perf_counter() - started
    masks, weights = hashlib.sha256(), hashlib.sha256()
    for name, module in find_target_layers(model).items():
        weight = weight_matrix(module).detach().contiguous()
        masks.update(name.encode() + (weight != 0).numpy().tobytes())
        weights.update(name.encode() + weight.numpy().tobytes())
    text = read_text(str(DEFAULT_DATA / "wikitext2" / "wiki.test.raw"))
    ppl = token_perplexity(model, tokenizer, text, args.seqlen, args.eval_tokens)["perplexity"]
    print(json.dumps({"method": args.method, "target": args.target, "threads": args.threads, "wall": wall,
                      "mask_sha256": masks.hexdigest(), "weight_sha256": weights.hexdigest(), "ppl": ppl}))


def run_case(method: str, target: str, threads: int, args: argparse.Namespace) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "SPARSE_BENCH_DATA_DIR": str(DEFAULT_DATA), "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, __file__, "--worker", "--method", method, "--target", target, "--threads",
               str(threads), "--model", args.model, "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen),
               "--eval-tokens", str(args.eval_tokens)]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    from tabulate import tabulate

    sparsegpt = [row for row in rows if row["method"] == "sparsegpt"]
    identical = all(row["mask_sha256"] == other["mask_sha256"] and row["weight_sha256"] == other["weight_sha256"]
                    for row in sparsegpt for other in sparsegpt if row["target"] == other["target"])
    wanda = next(row["wall"] for row in rows if row["method"] == "wanda")
    table = [[row["method"], row["target"], row["threads"], row["mask_sha256"][:16], row["weight_sha256"][:16],
              f"{row['ppl']:.4f}", f"{row['wall']:.1f}", f"{row['wall'] / wanda:.2f}"] for row in rows]
    return "\n".join([
        f"# Determinism: SparseGPT with 1 and 2 threads ({args.model}, fp32, c4 {args.nsamples} x {args.seqlen}, "
        f"WikiText-2 first {args.eval_tokens} tokens)", "",
        "Written by `python benchmarks/check_determinism.py`. Masks and weights are sha256 over all pruned layers "
        "(first 16 hex digits shown). Wall times are this machine's and vary between machines and runs; "
        "the digests and perplexities must not.", "",
        tabulate(table, headers=["method", "target", "threads", "mask sha256", "weight sha256", "ppl", "prune s",
                                 "wall / Wanda's"], tablefmt="github", disable_numparse=True), "",
        f"SparseGPT results identical across thread counts: **{'yes' if identical else 'NO'}**. "
        f"Load average (1 min) at start and end of the run: {args.load[0]:.1f} and {args.load[1]:.1f} "
        f"on {os.cpu_count()} cores.", ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    rows, load_at_start = [], os.getloadavg()[0]
    for method, target in CASES:
        for threads in ((1, 2) if method == "sparsegpt" else (2,)):
            rows.append(run_case(method, target, threads, args))
            print(json.dumps(rows[-1]), flush=True)
    args.load = (load_at_start, os.getloadavg()[0])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "determinism.json").write_text(json.dumps({"setting": vars(args), "rows": rows}, indent=2))
    text = markdown(rows, args)
    (RESULTS / "determinism.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
