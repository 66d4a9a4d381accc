"""Pruning wall time, peak memory and perplexity: ours against llm-compressor, side by side in one run.

Reference setting (issue 5): SmolLM2-135M-Instruct in float32, calibration 64 x 256 tokens of C4 (seed 0),
WikiText-2 test, first 65,536 tokens, windows of 256 (`sparse_bench.harness_ext.perplexity`). Every case runs
in its own process, so its peak RSS (VmHWM) is its own, read right after pruning, before the perplexity pass.
Memory is reported as (peak RSS - RSS with the libraries imported) / model bytes, so it counts the model
itself (1.0 when fully resident) plus whatever pruning holds; both sides import their libraries first.
Cases ending in `-ts` run our engine with `true_sequential` (one forward per block) against the same peer run.
The floors are the times of the calibration forwards alone: block inputs captured, then every block run twice
(`floor`, the default loop) or once (`floor-1`, true-sequential); ratios to the floor and to llm-compressor
are printed.

llm-compressor runs in a separate virtual environment (it pins its own dependencies), on the very same
calibration tokens (written to a file by this script) and is scored by the same perplexity code:

    python -m venv /work/venv-llmc && /work/venv-llmc/bin/pip install -c constraints.txt llmcompressor
    python benchmarks/bench_prune.py                              # the whole table (~30 min on 2 cores)
    python benchmarks/bench_prune.py --cases wanda-50,sparsegpt-24 --peer-python none --json out.json

Targets: our perplexity within 2 % of llm-compressor's, prune wall <= 0.5x theirs, peak RSS <= 1.5x model bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("SPARSE_BENCH_DATA_DIR") or REPO.parent / "shared" / "data")
CASES = {  # name -> (method, sparsity, structure); "dense" and the floors are special. Run in this order.
    "wanda-50": ("wanda", 0.5, None),
    "wanda-50-ts": ("wanda", 0.5, None),
    "sparsegpt-50": ("sparsegpt", 0.5, None),
    "sparsegpt-50-ts": ("sparsegpt", 0.5, None),
    "floor": (None, None, None),
    "floor-1": (None, None, None),
    "wanda-24": ("wanda", None, "2:4"),
    "wanda-24-ts": ("wanda", None, "2:4"),
    "sparsegpt-24": ("sparsegpt", None, "2:4"),
    "sparsegpt-24-ts": ("sparsegpt", None, "2:4"),
    "magnitude-50": ("magnitude", 0.5, None),
    "dense": (None, None, None),
}
PEER_CASES = ("wanda-50", "sparsegpt-50", "wanda-24", "sparsegpt-24")
TRUE_SEQUENTIAL = "-ts"


def peer_case(case: str) -> str:
    """The llm-compressor case a row is compared with (a true-sequential row: the same method's)."""
    return case.removesuffix(TRUE_SEQUENTIAL)


def run_json(command: list[str], env: dict) -> dict:
    """Run one worker process; its last stdout line is a JSON object (plus the 1-minute load average)."""
    load = os.getloadavg()[0]
    completed = subprocess.run(command, capture_output=True, text=True, env=env)
    if completed.returncode != 0:
        return {"error": (completed.stderr.strip().splitlines() or ["failed"])[-1], "loadavg": load}
    return {**json.loads(completed.stdout.strip().splitlines()[-1]), "loadavg": load}


def worker(args: argparse.Namespace) -> None:
    """One of our cases in this process; prints one JSON line."""
    import torch
    import transformers.models.llama.modeling_llama  # noqa: F401 - a library both sides import before the model

    from sparse_bench.harness_ext.memory import peak_rss_bytes, rss_bytes
    from sparse_bench.harness_ext.models import load_model
    from sparse_bench.harness_ext.perplexity import read_text, token_perplexity
    from sparse_bench.harness_ext.pruning.calibration import Stopwatch, default_batch_size, layer_sequential, run_block
    from sparse_bench.harness_ext.pruning.calibration_data import calibration_tokens
    from sparse_bench.harness_ext.pruning.engine import prune
    from sparse_bench.harness_ext.pruning.plan import CalibrationConfig
    from sparse_bench.harness_ext.pruning.request import shortcut_plan

    torch.manual_seed(0)
    baseline_rss = rss_bytes()  # interpreter + libraries
    model, tokenizer = load_model(args.model, "float32", "cpu")
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    config = CalibrationConfig("c4", args.nsamples, args.seqlen, 0,
                               true_sequential=args.worker.endswith(TRUE_SEQUENTIAL))
    result = {"case": args.worker, "model_bytes": model_bytes, "baseline_rss": baseline_rss,
              "rss_after_load": rss_bytes()}
    method, sparsity, structure = CASES[args.worker]
    started = time.perf_counter()
    if args.worker.startswith("floor"):
        tokens, _, _ = calibration_tokens(config, tokenizer)
        stopwatch = Stopwatch()
        for block in layer_sequential(model, tokens, default_batch_size(args.seqlen), stopwatch, progress=False):
            if args.worker == "floor":
                run_block(block.block, block.inputs, None)  # the statistics forward; the loop runs the second
        result["wall"] = time.perf_counter() - started
    elif method is not None:
        report = prune(model, shortcut_plan(method, sparsity, structure), config, tokenizer, progress=False)
        result.update(wall=time.perf_counter() - started, sparsity=report.overall_sparsity,
                      calibration_seconds=report.calibration_seconds)
    result["peak_rss"] = peak_rss_bytes()
    if not args.worker.startswith("floor"):
        text = read_text(args.eval_text)
        result["ppl"] = token_perplexity(model, tokenizer, text, args.seqlen, args.eval_tokens)["perplexity"]
    print(json.dumps(result))


def fmt(value, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def rss_ratio(row: dict) -> str:
    """(peak RSS - RSS with the libraries imported) / model bytes: the model plus what pruning holds."""
    if "peak_rss" not in row or "baseline_rss" not in row:
        return "-"
    return fmt((row["peak_rss"] - row["baseline_rss"]) / row["model_bytes"], ".2f")


def table(ours: dict, peer: dict, floors: dict[str, float | None]) -> str:
    from tabulate import tabulate

    rows = []
    for case, row in ours.items():
        if case.startswith("floor"):
            continue
        other = peer.get(peer_case(case), {})
        floor = floors["floor-1" if case.endswith(TRUE_SEQUENTIAL) else "floor"]
        wall, peer_wall = row.get("wall"), other.get("wall")
        ppl, peer_ppl = row.get("ppl"), other.get("ppl")
        rows.append([case, fmt(wall, ".1f"), fmt(row.get("peak_rss", 0) / 2**20, ".0f"), rss_ratio(row),
                     fmt(ppl, ".2f"), fmt(wall / floor if wall and floor else None, ".2f"),
                     fmt(peer_wall, ".1f"), fmt(other.get("peak_rss", 0) / 2**20 if other else None, ".0f"),
                     rss_ratio(other),
                     fmt(peer_ppl, ".2f"), fmt(wall / peer_wall if wall and peer_wall else None, ".2f"),
                     fmt(ppl / peer_ppl - 1 if ppl and peer_ppl else None, "+.1%"),
                     row.get("error") or other.get("error") or ""])
    headers = ["case", "ours s", "ours RSS MiB", "(RSS-base)/model", "ours ppl", "wall/floor", "llmc s",
               "llmc RSS MiB", "(RSS-base)/model", "llmc ppl", "wall ours/llmc", "ppl ours vs llmc", "error"]
    return tabulate(rows, headers=headers, disable_numparse=True)


def write_calibration_tokens(args: argparse.Namespace, folder: Path) -> Path:
    """Our calibration tokens (C4, seed 0) as JSON, so llm-compressor calibrates on exactly the same ones."""
    from sparse_bench.harness_ext.models import load_model
    from sparse_bench.harness_ext.pruning.calibration_data import calibration_tokens
    from sparse_bench.harness_ext.pruning.plan import CalibrationConfig

    os.environ["SPARSE_BENCH_DATA_DIR"] = str(DEFAULT_DATA)
    _, tokenizer = load_model(args.model, "float32", "cpu")
    tokens, _, _ = calibration_tokens(CalibrationConfig("c4", args.nsamples, args.seqlen, 0), tokenizer)
    path = folder / "calibration.json"
    path.write_text(json.dumps(tokens.tolist()))
    return path


def run_peer(peer_python: Path, case: str, token_file: Path, args: argparse.Namespace, env: dict) -> dict:
    from sparse_bench.harness_ext.models import find_or_prepare_model

    method, _, structure = CASES[case]
    return run_json([str(peer_python), str(REPO / "benchmarks" / "bench_prune_llmc.py"),
                     "--model", find_or_prepare_model(args.model), "--tokens", str(token_file), "--method", method,
                     "--structure", structure or "0:0", "--eval-text", args.eval_text,
                     "--eval-tokens", str(args.eval_tokens), "--seqlen", str(args.seqlen)], env)


def reference_setting_parser(description: str) -> argparse.ArgumentParser:
    """Arguments of the reference setting (model, calibration size, perplexity text and tokens), shared by the
    pruning benchmarks."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--nsamples", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--eval-text", default=str(DEFAULT_DATA / "wikitext2" / "wiki.test.raw"))
    parser.add_argument("--eval-tokens", type=int, default=65536)
    return parser


def main() -> None:
    parser = reference_setting_parser(__doc__)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ", ".join(CASES))
    parser.add_argument("--peer-python", default="/work/venv-llmc/bin/python",
                        help="python of the llm-compressor venv ('none' to skip the peer)")
    parser.add_argument("--json", dest="json_out", help="also write all numbers to this JSON file")
    parser.add_argument("--worker", choices=list(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    env = {**os.environ, "SPARSE_BENCH_DATA_DIR": str(DEFAULT_DATA), "TOKENIZERS_PARALLELISM": "false"}
    common = ["--model", args.model, "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen),
              "--eval-text", args.eval_text, "--eval-tokens", str(args.eval_tokens)]
    cases = [case for case in args.cases.split(",") if case]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {unknown}")
    peer_python = None if args.peer_python == "none" else Path(args.peer_python)
    if peer_python is None or not peer_python.exists():
        print(f"note: llm-compressor venv not found at {args.peer_python}; peer columns skipped "
              "(python -m venv /work/venv-llmc && /work/venv-llmc/bin/pip install -c constraints.txt llmcompressor)")
        peer_python = None
    ours, peer = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        token_file = write_calibration_tokens(args, Path(scratch)) if peer_python else None
        for case in cases:  # ours and the peer back to back, so both see the same machine load
            ours[case] = run_json([sys.executable, __file__, "--worker", case, *common], env)
            print(f"ours {case}: {json.dumps(ours[case])}", flush=True)
            if peer_python and case in PEER_CASES:
                peer[case] = run_peer(peer_python, case, token_file, args, env)
                print(f"llm-compressor {case}: {json.dumps(peer[case])}", flush=True)
            if args.json_out:  # after every case, so an interrupted run keeps what it measured
                Path(args.json_out).write_text(json.dumps({"ours": ours, "llm_compressor": peer}, indent=2))
    floors = {name: ours.get(name, {}).get("wall") for name in ("floor", "floor-1")}
    print()
    print(f"model {args.model} float32, calibration c4 {args.nsamples} x {args.seqlen} seed 0, perplexity on "
          f"{args.eval_tokens} tokens of {Path(args.eval_text).name} (windows of {args.seqlen}); floors: capture + "
          f"2 forwards per block {fmt(floors['floor'], '.1f')} s, capture + 1 forward {fmt(floors['floor-1'], '.1f')} s")
    print(table(ours, peer, floors))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"ours": ours, "llm_compressor": peer, "floors": floors}, indent=2))


if __name__ == "__main__":
    main()
