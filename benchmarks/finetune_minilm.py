"""all-MiniLM-L6-v2 fine-tuned on MRPC: dense and global-magnitude pruned, fp32 and bf16 autocast, side by side.

Each sparsity is pruned once (global magnitude over the encoder's Linear layers) and saved; each (sparsity,
precision) run is `sparse-bench finetune --json` in its own process (so peak memory is that run's). The table
(held-out accuracy, F1, AUC and loss on the 408 validation pairs, wall time per step, tokens/s, peak RSS, zeros
kept) goes to benchmarks/results/finetune_minilm.{json,md} and into docs/finetune.md; with --bench JSON
(bench_finetune.py's output) the mask-cost line goes there too.

A run is SPARSITY:PRECISION[:MAX_STEPS]; MAX_STEPS cuts that run short (bf16 autocast is an order of magnitude
slower than fp32 on CPUs without bf16 matrix units, so a full-length bf16 run may not fit a time budget).

    python benchmarks/finetune_minilm.py --runs 0:fp32,0.5:fp32,0.9:fp32,0.99:fp32,0.5:bf16-amp:3 --limit 640 --lr 1.5e-4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from tabulate import tabulate

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from bench_finetune import minilm_dir  # noqa: E402 (after the sys.path line)
from publish_demo import replace_between  # noqa: E402

COLUMNS = ("sparsity", "precision", "acc", "f1", "auc", "loss", "steps", "s/step", "train s", "tokens/s",
           "peak RSS MiB", "zeros kept")


def prune_to(path: Path, sparsity: float, out: Path) -> Path:
    """The encoder at `path`, global-magnitude pruned to `sparsity`, saved dense at `out`."""
    from transformers import AutoModel, AutoTokenizer

    from sparse_bench.harness_ext.checkpoints import load_checkpoint, save_checkpoint
    from sparse_bench.harness_ext.pruning.engine import prune
    from sparse_bench.harness_ext.pruning.request import shortcut_plan

    model, tokenizer = load_checkpoint(AutoModel, path), AutoTokenizer.from_pretrained(path)
    report = prune(model, shortcut_plan("magnitude", sparsity, scope="global"), None, tokenizer, progress=False)
    return save_checkpoint(model, tokenizer, out, prune_record=report.to_dict())


def finetune_in_process_of_its_own(model: Path, out: Path, options: list[str]) -> dict:
    """The record of `sparse-bench finetune MODEL --out OUT OPTIONS... --json`, run in a fresh process."""
    command = [sys.executable, "-m", "sparse_bench.harness_ext.cli", "finetune", str(model), *options,
               "--save-steps", "100000", "--out", str(out), "--json", "--no-progress"]
    print("$", " ".join(command), flush=True)
    finished = subprocess.run(command, check=False, stdout=subprocess.PIPE, text=True)
    if finished.returncode != 0:
        raise SystemExit(f"error: {' '.join(command)} failed (exit {finished.returncode}; its stderr is above)")
    return json.loads(finished.stdout)


def cost_cells(record: dict) -> list:
    """steps, seconds per step, train seconds, tokens/s and peak RSS (MiB) of a finetune record."""
    return [record["steps"], f"{record['train_seconds'] / max(record['steps'], 1):.2f}",
            f"{record['train_seconds']:.0f}", f"{record['tokens_per_second']:.0f}",
            f"{record['peak_rss_bytes'] / 2 ** 20:.0f}"]


def zeros_kept(record: dict) -> str:
    zeros = record["zeros"]
    return "yes" if zeros["zeros_before"] == zeros["zeros_after"] else "NO"


def row_of(record: dict) -> list:
    metrics = record["held_out"]["model"]
    return [f"{record['zeros']['sparsity_before']:.2%}", record["precision"], f"{metrics['acc']:.4f}",
            f"{metrics['f1']:.4f}", f"{metrics['auc']:.4f}", f"{metrics['loss']:.4f}", *cost_cells(record),
            zeros_kept(record)]


def publish(name: str, table: str, records: list[dict] | dict[str, dict], marker: str) -> None:
    """Write benchmarks/results/NAME.{json,md} and the table between docs/finetune.md's MARKER lines."""
    results = REPO / "benchmarks" / "results"
    (results / f"{name}.json").write_text(json.dumps(records, indent=2, default=str) + "\n", encoding="utf-8")
    (results / f"{name}.md").write_text(table + "\n", encoding="utf-8")
    docs = REPO / "docs" / "finetune.md"
    docs.write_text(replace_between(docs.read_text(encoding="utf-8"), marker, table), encoding="utf-8")


def bench_line(path: Path) -> str:
    result = json.loads(path.read_text(encoding="utf-8"))
    return (f"{result['mode']} fine-tuning, {result['precision']}, {result['sparsity']:.0%} global magnitude, batch "
            f"{result['batch_size']}, {result['steps_timed']} timed steps per variant: median step "
            f"{result['median_step_seconds_with_masks'] * 1e3:.1f} ms with masks, "
            f"{result['median_step_seconds_without_masks'] * 1e3:.1f} ms without: mask keeping costs "
            f"**{result['mask_overhead']:+.1%}** of step time (goal <= +5 %; {result['torch_threads']} threads, on "
            "a 2-core machine shared with other jobs, so read the ratio, not the times).")


def bf16_cost(records: list[dict]) -> str:
    """A sentence comparing seconds per step of bf16-amp and fp32 runs at the same sparsity, if both ran."""
    per_step = {(r["zeros"]["sparsity_before"], r["precision"]): r["train_seconds"] / max(r["steps"], 1)
                for r in records}
    pairs = [(s, per_step[(s, "bf16-amp")] / per_step[(s, "fp32")]) for s, p in per_step
             if p == "bf16-amp" and (s, "fp32") in per_step]
    if not pairs:
        return ""
    ratios = ", ".join(f"{ratio:.1f}x at {sparsity:.0%}" for sparsity, ratio in pairs)
    return f" bf16 autocast took {ratios} the seconds per step of fp32 in this run."


def minilm_table(records: list[dict], rows: list[list], args) -> str:
    setup = (f"Full fine-tuning, {args.epochs:g} epoch(s) over {records[0]['data']['train_examples']} MRPC train "
             f"pairs (a run with fewer steps stopped early), lr {args.lr:g} (linear decay), batch "
             f"{args.batch_size}, pairs cut to {args.max_length} tokens, seed 0; held out: the "
             f"{records[0]['data']['held_out_examples']} validation pairs. 2 threads under the team's heavy-job "
             f"lock, on 2 CPU cores shared with other engineers' tests: compare times within this table only."
             + bf16_cost(records))
    return setup + "\n\n" + tabulate(rows, headers=COLUMNS, tablefmt="github")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="0:fp32,0:bf16-amp,0.5:fp32,0.5:bf16-amp",
                        help="SPARSITY:PRECISION[:MAX_STEPS] runs, comma-separated (global magnitude; 0 = dense)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128, help="tokens per pair (batches are padded to "
                                                                     "their longest pair)")
    parser.add_argument("--limit", type=int, default=None, help="train on the first N pairs only")
    parser.add_argument("--bench", type=Path, help="bench_finetune.py --json output to publish too")
    args = parser.parse_args()
    source, rows, records = minilm_dir(), [], []
    options = ["--data", "mrpc", "--mode", "full", "--epochs", str(args.epochs), "--lr", str(args.lr),
               "--batch-size", str(args.batch_size), "--max-length", str(args.max_length), "--seed", "0"]
    options += ["--limit", str(args.limit)] if args.limit else []
    with tempfile.TemporaryDirectory() as work:
        pruned = {0.0: source}
        for run in args.runs.split(","):
            sparsity, precision, *steps = run.split(":")
            if float(sparsity) not in pruned:
                pruned[float(sparsity)] = prune_to(source, float(sparsity), Path(work) / f"pruned{sparsity}")
            extra = ["--precision", precision] + (["--max-steps", steps[0]] if steps else [])
            record = finetune_in_process_of_its_own(pruned[float(sparsity)], Path(work) / f"ft{run}",
                                                    options + extra)
            records.append(record)
            rows.append(row_of(record))
            table = minilm_table(records, rows, args)  # written after every run: a stopped job keeps its rows
            publish("finetune_minilm", table, records, "finetune-minilm")
            print(table, flush=True)
    if args.bench:
        docs = REPO / "docs" / "finetune.md"
        docs.write_text(replace_between(docs.read_text(encoding="utf-8"), "finetune-bench", bench_line(args.bench)),
                        encoding="utf-8")


if __name__ == "__main__":
    main()
