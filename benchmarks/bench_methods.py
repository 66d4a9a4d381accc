"""Every registered method at 50 % and 2:4, side by side in one run: WikiText-2 perplexity and prune wall time.

Setting (issue 17): SmolLM2-135M-Instruct in float32, calibration 64 x 256 tokens of C4 (seed 0), WikiText-2
test, first 65,536 tokens, windows of 256 (`sparse_bench.harness_ext.perplexity`), the default (two forwards
per block) protocol. Every case runs in its own process, one after the other; wall time is the `prune` call.
Ratios are to SparseGPT at the same structure in the same run, so a loaded machine shifts both sides alike.

    python benchmarks/bench_methods.py                                   # all cases (~30-40 min on 2 cores)
    python benchmarks/bench_methods.py --cases wanda-24,wanda+admm-24 --out /tmp/quick

Writes `benchmarks/results/bench_methods.md` and `.json` (or `--out PREFIX`). Goals: a method at <= 0.85x
SparseGPT's 2:4 perplexity within 2x SparseGPT's wall time; no new method worse than Wanda at 50 %.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from bench_prune import DEFAULT_DATA, REPO, fmt, reference_setting_parser, run_json

STRUCTURES = {"24": (None, "2:4"), "50": (0.5, None)}
METHODS = ("sparsegpt", "wanda+admm", "admm", "wanda", "ria", "sparsegpt+admm")
EXTRA = {"ria-realloc-24": ("ria", None, "2:4", {"ria_reallocation": True})}  # mask quality only (not N:M in storage)
BASELINE, GOAL_RATIO, WALL_RATIO = "sparsegpt", 0.85, 2.0


def cases() -> dict[str, tuple[str, float | None, str | None, dict]]:
    """case name -> (grid method name, sparsity, structure, options), in run order: 2:4 first (the issue's
    goal), then 50 %, the reallocation variant and dense last."""
    table = {}
    for suffix, (sparsity, structure) in STRUCTURES.items():
        table.update({f"{method}-{suffix}": (method, sparsity, structure, {}) for method in METHODS})
    return {**table, **EXTRA, "dense": ("dense", None, None, {})}


def worker(args: argparse.Namespace) -> None:
    """One case in this process; prints one JSON line."""
    import torch

    from sparse_bench.harness_ext.models import load_model
    from sparse_bench.harness_ext.perplexity import read_text, token_perplexity
    from sparse_bench.harness_ext.pruning.engine import prune
    from sparse_bench.harness_ext.pruning.methods import split_grid_name
    from sparse_bench.harness_ext.pruning.plan import CalibrationConfig, shortcut_plan

    torch.manual_seed(0)
    model, tokenizer = load_model(args.model, "float32", "cpu")
    name, sparsity, structure, options = cases()[args.worker]
    result = {"case": args.worker, "method": name, "structure": structure or "unstructured",
              "load_average_at_start": os.getloadavg()[0]}
    if name != "dense":
        method, update = split_grid_name(name)
        plan = shortcut_plan(method, sparsity, structure, update=update, options=options)
        config = CalibrationConfig("c4", args.nsamples, args.seqlen, 0)
        started = time.perf_counter()
        report = prune(model, plan, config, tokenizer, progress=False)
        result.update(wall=time.perf_counter() - started, sparsity=report.overall_sparsity,
                      calibration_seconds=report.calibration_seconds, warnings=report.warnings[:3])
    text = read_text(args.eval_text)
    result["ppl"] = token_perplexity(model, tokenizer, text, args.seqlen, args.eval_tokens)["perplexity"]
    result["load_average_at_end"] = os.getloadavg()[0]
    print(json.dumps(result))


def table(rows: dict[str, dict]) -> str:
    from tabulate import tabulate

    lines = []
    for case, row in rows.items():
        suffix = case.rsplit("-", 1)[-1]
        base = rows.get(f"{BASELINE}-{suffix}", {})
        wanda = rows.get(f"wanda-{suffix}", {})
        ppl, wall = row.get("ppl"), row.get("wall")
        lines.append([case, fmt(ppl, ".2f"), fmt(wall, ".1f"),
                      fmt(ppl / base["ppl"] if ppl and base.get("ppl") and case != "dense" else None, ".3f"),
                      fmt(wall / base["wall"] if wall and base.get("wall") else None, ".2f"),
                      fmt(ppl / wanda["ppl"] if ppl and wanda.get("ppl") and case != "dense" else None, ".3f"),
                      fmt(row.get("sparsity"), ".4f"), row.get("error", "")])
    return tabulate(lines, headers=["case", "ppl", "prune s", "ppl / SparseGPT", "wall / SparseGPT",
                                    "ppl / Wanda", "measured sparsity", "error"], disable_numparse=True)


def verdict(rows: dict[str, dict]) -> list[str]:
    """The issue's goals, checked on this run's numbers."""
    base = rows.get(f"{BASELINE}-24", {})
    lines = []
    if base.get("ppl") and base.get("wall"):
        winners = [case for case, row in rows.items() if case.endswith("-24") and row.get("ppl") and row.get("wall")
                   and case in cases() and cases()[case][3] == {}
                   and row["ppl"] <= GOAL_RATIO * base["ppl"] and row["wall"] <= WALL_RATIO * base["wall"]]
        lines.append(f"2:4 goal (ppl <= {GOAL_RATIO} x SparseGPT's {base['ppl']:.2f}, wall <= {WALL_RATIO} x "
                     f"{base['wall']:.1f} s): {'met by ' + ', '.join(winners) if winners else 'NOT met'}")
    wanda = rows.get("wanda-50", {}).get("ppl")
    if wanda:
        worse = [case for case, row in rows.items() if case.endswith("-50") and row.get("ppl", 0) > wanda]
        lines.append(f"50 % goal (no method worse than Wanda's {wanda:.2f}): "
                     f"{'worse: ' + ', '.join(worse) if worse else 'met'}")
    return lines


def main() -> None:
    parser = reference_setting_parser(__doc__)
    parser.add_argument("--cases", default=",".join(cases()), help="comma-separated subset of " + ", ".join(cases()))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "bench_methods"),
                        help="output prefix: PREFIX.md and PREFIX.json")
    parser.add_argument("--worker", choices=list(cases()), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    env = {**os.environ, "SPARSE_BENCH_DATA_DIR": str(DEFAULT_DATA), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    common = ["--model", args.model, "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen),
              "--eval-text", args.eval_text, "--eval-tokens", str(args.eval_tokens)]
    rows: dict[str, dict] = {}
    started = time.time()
    for case in args.cases.split(","):
        rows[case] = run_json([sys.executable, __file__, "--worker", case, *common], env)
        print(json.dumps(rows[case]), flush=True)
        write_results(args, rows, (time.time() - started) / 60)  # after every case: a cut-short run keeps its rows
    print(Path(args.out).with_suffix(".md").read_text(encoding="utf-8"))


def write_results(args: argparse.Namespace, rows: dict[str, dict], minutes: float) -> None:
    """PREFIX.md (table and goals) and PREFIX.json (every number) for the cases run so far."""
    from sparse_bench.harness_ext.io import write_json_atomic, write_text_atomic

    loads = [row[key] for row in rows.values() for key in ("load_average_at_start", "load_average_at_end")
             if key in row]
    header = (f"# bench_methods: every method at 50 % and 2:4 (one run)\n\n"
              f"SmolLM2-135M-Instruct fp32, calibration C4 {args.nsamples} x {args.seqlen} (seed 0), WikiText-2 "
              f"test first {args.eval_tokens:,} tokens, windows of {args.seqlen}. One process per case, run one "
              f"after another on {os.cpu_count()} CPU cores ({platform.machine()}); {len(rows)} cases in "
              f"{minutes:.1f} min; 1-minute load average {min(loads, default=0):.1f}-{max(loads, default=0):.1f} "
              f"(per case in the JSON; above {os.cpu_count()} the machine was shared and the seconds are slow): "
              f"compare the ratios to SparseGPT measured in this same run, not the seconds. `ria-realloc-24` is N:M only in a permuted channel order (not folded into the "
              f"weights): mask quality, not a deployable 2:4 model.\n")
    text = "\n".join([header, "```", table(rows), "```", "", *[f"- {line}" for line in verdict(rows)], ""])
    out = Path(args.out)
    write_text_atomic(out.with_suffix(".md"), text)
    write_json_atomic(out.with_suffix(".json"), {"settings": vars(args), "cases": rows, "verdict": verdict(rows)})

if __name__ == "__main__":
    main()
