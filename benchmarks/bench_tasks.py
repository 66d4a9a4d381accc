"""Cost and signal of the sparsebench tasks on a real model: dense vs pruned, wall time and peak RSS per task.

    python benchmarks/bench_tasks.py                      # SmolLM2-135M: dense, magnitude 50 %, Wanda 50 %
    python benchmarks/bench_tasks.py --methods dense,magnitude --bills 4 --mrpc-pairs 64   # a quick look
    python benchmarks/bench_tasks.py --methods wanda --threads 1 --json wanda.json          # side by side runs,
    python benchmarks/bench_tasks.py --from-json dense.json wanda.json                     # one table

Each method runs in its own process (so one method's memory does not inflate the next one's peak): the model
is loaded (and pruned) once, then each task runs alone through `lm_eval.simple_evaluate`; the peak RSS of each
task is measured from its start (Linux: /proc/self/clear_refs resets the high-water mark). Prints one table
with wall and CPU time (all threads), CPU seconds per document, peak RSS, the load average and every metric, and
the ratios that matter: pruned / dense CPU time per task and Billsum generation / likelihood CPU time per bill.
On a shared machine wall time depends on the neighbours; CPU time much less. `--json` keeps the records.
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

TASKS = ("sparsebench_billsum_loglik", "sparsebench_mrpc", "sparsebench_billsum")  # cheapest signal first
HEADLINE = {"sparsebench_mrpc": ("acc", "f1", "yes_rate", "auc", "auc_low", "auc_high", "gold_nll", "one_class",
                                 "auc_at_chance", "majority_acc", "majority_f1"),
            "sparsebench_billsum": ("rouge1", "rouge2", "rougeL", "rougeLsum", "lead_rouge1", "empty"),
            "sparsebench_billsum_loglik": ("bits_per_byte",)}


def peak_rss_reset() -> None:
    """Make the kernel's peak-RSS counter start again from the current RSS."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def peak_rss_mib() -> float:
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def run_method(method: str, args: argparse.Namespace) -> dict:
    """Load (and prune) the model once, then time each task alone; returns {prune, tasks: {task: ...}}."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from sparse_bench.harness_ext.models import find_or_prepare_model
    from sparse_bench.model_wrappers.registration import register_with_lm_eval
    from sparse_bench.model_wrappers.sparse_hf import SparseHFLM

    register_with_lm_eval()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model_dir = find_or_prepare_model(args.model)
    pruning = {} if method == "dense" else {"method": method, "sparsity": args.sparsity,
                                            "nsamples": args.nsamples, "seqlen": args.seqlen}
    peak_rss_reset()
    start = time.perf_counter()
    lm = SparseHFLM(pretrained=model_dir, dtype=args.dtype, device="cpu", batch_size=args.batch_size, **pruning)
    record = {"method": method, "threads": args.threads, "batch_size": args.batch_size,
              "load_and_prune_s": time.perf_counter() - start,
              "load_and_prune_peak_rss_mib": peak_rss_mib(),
              "measured_sparsity": lm.sparsity_report.to_dict().get("overall_sparsity"), "tasks": {}}
    manager = TaskManager(include_defaults=False, metadata={"pretrained": model_dir})  # Billsum's tokenizer
    limits = {"sparsebench_mrpc": args.mrpc_pairs, "sparsebench_billsum": args.gen_bills or args.bills,
              "sparsebench_billsum_loglik": args.bills}
    for task in args.tasks:
        peak_rss_reset()
        start, cpu_start, load_start = time.perf_counter(), time.process_time(), os.getloadavg()[0]
        results = lm_eval.simple_evaluate(model=lm, tasks=[task], limit=limits[task], bootstrap_iters=0,
                                          task_manager=manager, verbosity="WARNING")
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        values = results["results"][task]
        docs = values["sample_len"]
        record["tasks"][task] = {"wall_s": wall, "cpu_s": cpu, "docs": docs, "s_per_doc": wall / docs,
                                 "load_average": (load_start + os.getloadavg()[0]) / 2,
                                 "peak_rss_mib": peak_rss_mib(),
                                 "metrics": {key.split(",")[0]: value for key, value in values.items()
                                             if key.endswith(",none") and "_stderr" not in key}}
        print(f"[{method}] {task}: {wall:.1f} s for {docs} docs", file=sys.stderr, flush=True)
        if args.record:  # after every task: an interrupted run keeps what it finished
            write_json(args.record, record)
    return record


def write_json(path: Path, data) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2))
    temporary.replace(path)


def run_all(args: argparse.Namespace) -> list[dict]:
    """One child process per method (clean memory), each writing its record to a temporary JSON file."""
    records = []
    for method in args.methods:
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "record.json"
            command = [sys.executable, __file__, "--one-method", method, "--record", str(out),
                       *forwarded_options(args)]
            subprocess.run(command, check=True)
            records.append(json.loads(out.read_text()))
    return records


def forwarded_options(args: argparse.Namespace) -> list[str]:
    return ["--model", args.model, "--dtype", args.dtype, "--sparsity", str(args.sparsity), "--bills",
            str(args.bills), "--gen-bills", str(args.gen_bills), "--mrpc-pairs", str(args.mrpc_pairs or 0),
            "--batch-size", str(args.batch_size), "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen),
            "--tasks", ",".join(args.tasks), "--threads", str(args.threads)]


def report(records: list[dict]) -> str:
    from tabulate import tabulate

    dense = next((record for record in records if record["method"] == "dense"), None)
    rows = []
    for record in records:
        for task, result in record["tasks"].items():
            ratio = (result["cpu_s"] / dense["tasks"][task]["cpu_s"]
                     if dense and task in dense["tasks"] else None)
            shown = ", ".join(f"{name} {result['metrics'][name]:.3f}" for name in HEADLINE[task]
                              if name in result["metrics"])
            rows.append([record["method"], task, result["docs"], result["wall_s"], result["cpu_s"],
                         result["cpu_s"] / result["docs"], ratio, result["peak_rss_mib"], result["load_average"],
                         shown])
    lines = [tabulate(rows, headers=["method", "task", "docs", "wall s", "CPU s", "CPU s/doc", "CPU / dense",
                                     "peak RSS MiB", "load avg", "metrics"], floatfmt=".2f")]
    for record in records:
        lines.append(f"{record['method']} ({record['threads'] or 'default'} threads, batch {record['batch_size']}): "
                     f"load + prune {record['load_and_prune_s']:.1f} s, peak RSS "
                     f"{record['load_and_prune_peak_rss_mib']:.0f} MiB, measured sparsity "
                     f"{record['measured_sparsity']}")
        tasks = record["tasks"]
        if {"sparsebench_billsum", "sparsebench_billsum_loglik"} <= set(tasks):
            generation, likelihood = (tasks[name]["cpu_s"] / tasks[name]["docs"]
                                      for name in ("sparsebench_billsum", "sparsebench_billsum_loglik"))
            lines.append(f"  Billsum generation / likelihood CPU time per bill: {generation / likelihood:.2f}x")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="short name, checkpoint directory or hub id")
    parser.add_argument("--methods", default="dense,magnitude,wanda", help="dense and/or pruning methods")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--bills", type=int, default=16, help="Billsum bills (both tasks)")
    parser.add_argument("--gen-bills", type=int, default=0, help="bills for generation only; 0 = --bills")
    parser.add_argument("--mrpc-pairs", type=int, default=0, help="MRPC pairs; 0 = all 408")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0 = torch's default); 1 is steadier on a machine shared with other jobs")
    parser.add_argument("--nsamples", type=int, default=64, help="Wanda/SparseGPT calibration sequences")
    parser.add_argument("--seqlen", type=int, default=256, help="calibration sequence length in tokens")
    parser.add_argument("--json", type=Path, help="also write every record to this file")
    parser.add_argument("--from-json", type=Path, nargs="+", metavar="FILE",
                        help="print the table of earlier --json files (e.g. methods run side by side) and exit")
    parser.add_argument("--one-method", metavar="METHOD",
                        help="run one method in this process, writing --record after every task")
    parser.add_argument("--record", type=Path, help="with --one-method: its JSON record")
    args = parser.parse_args(argv)
    args.methods = [name for name in args.methods.split(",") if name]
    args.tasks = [name for name in args.tasks.split(",") if name]
    args.mrpc_pairs = args.mrpc_pairs or None
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("SPARSE_BENCH_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    if args.from_json:
        loaded = [json.loads(path.read_text()) for path in args.from_json]
        print(report([record for data in loaded for record in (data if isinstance(data, list) else [data])]))
        return
    if args.one_method:
        run_method(args.one_method, args)
        return
    records = run_all(args)
    print(report(records))
    if args.json:
        write_json(args.json, records)


if __name__ == "__main__":
    main()
