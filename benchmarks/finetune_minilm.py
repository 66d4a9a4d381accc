"""all-MiniLM-L6-v2 fine-tuned on MRPC: dense and global-magnitude pruned, fp32 and bf16 autocast, side by side.

Each sparsity is pruned once (global magnitude over the encoder's Linear layers) and saved; each (sparsity,
precision) run is `sparse-bench finetune --json` in its own process (so peak memory is that run's). The table
(held-out accuracy, F1, AUC and loss on the 408 validation pairs, wall time, tokens/s, peak RSS, sparsity before
and after) goes to benchmarks/results/finetune_minilm.{json,md} and into docs/finetune.md; with --bench JSON
(bench_finetune.py's output) the mask-cost line goes there too.

    python benchmarks/finetune_minilm.py --runs 0:fp32,0.5:fp32,0.5:bf16-amp,0.9:fp32 --epochs 1
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

COLUMNS = ("sparsity", "precision", "acc", "f1", "auc", "loss", "steps", "train s", "tokens/s", "peak RSS MiB",
           "zeros kept")


def prune_to(path: Path, sparsity: float, out: Path) -> Path:
    """The encoder at `path`, global-magnitude pruned to `sparsity`, saved dense at `out`."""
    from transformers import AutoModel, AutoTokenizer

    from sparse_bench.harness_ext.checkpoints import load_checkpoint, save_checkpoint
    from sparse_bench.harness_ext.pruning.engine import prune
    from sparse_bench.harness_ext.pruning.request import shortcut_plan

    model, tokenizer = load_checkpoint(AutoModel, path), AutoTokenizer.from_pretrained(path)
    report = prune(model, shortcut_plan("magnitude", sparsity, scope="global"), None, tokenizer, progress=False)
    return save_checkpoint(model, tokenizer, out, prune_record=report.to_dict())


def finetune_in_process_of_its_own(model: Path, out: Path, precision: str, args) -> dict:
    command = [sys.executable, "-m", "sparse_bench.harness_ext.cli", "finetune", str(model), "--data", "mrpc",
               "--mode", "full", "--precision", precision, "--epochs", str(args.epochs), "--lr", str(args.lr),
               "--batch-size", str(args.batch_size), "--max-length", "128", "--seed", "0", "--save-steps",
               "100000", "--out", str(out), "--json", "--no-progress"]
    if args.limit:
        command += ["--limit", str(args.limit)]
    finished = subprocess.run(command, check=False, capture_output=True, text=True)
    if finished.returncode != 0:
        raise SystemExit(f"error: {' '.join(command)} failed:\n{finished.stderr[-2000:]}")
    return json.loads(finished.stdout)


def row_of(record: dict) -> list:
    metrics, zeros = record["held_out"]["model"], record["zeros"]
    return [f"{zeros['sparsity_before']:.2%}", record["precision"], f"{metrics['acc']:.4f}", f"{metrics['f1']:.4f}",
            f"{metrics['auc']:.4f}", f"{metrics['loss']:.4f}", record["steps"], f"{record['train_seconds']:.0f}",
            f"{record['tokens_per_second']:.0f}", f"{record['peak_rss_bytes'] / 2 ** 20:.0f}",
            "yes" if zeros["zeros_before"] == zeros["zeros_after"] else "NO"]


def bench_line(path: Path) -> str:
    result = json.loads(path.read_text(encoding="utf-8"))
    return (f"{result['mode']} fine-tuning, {result['precision']}, {result['sparsity']:.0%} global magnitude, batch "
            f"{result['batch_size']}, {result['steps_timed']} timed steps per variant: median step "
            f"{result['median_step_seconds_with_masks'] * 1e3:.1f} ms with masks, "
            f"{result['median_step_seconds_without_masks'] * 1e3:.1f} ms without: mask keeping costs "
            f"**{result['mask_overhead']:+.1%}** of step time (goal <= +5 %; {result['torch_threads']} threads, on "
            "a 2-core machine shared with other jobs, so read the ratio, not the times).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="0:fp32,0:bf16-amp,0.5:fp32,0.5:bf16-amp",
                        help="SPARSITY:PRECISION pairs, comma-separated (global magnitude; 0 = dense)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--limit", type=int, default=None, help="train on the first N pairs only")
    parser.add_argument("--bench", type=Path, help="bench_finetune.py --json output to publish too")
    args = parser.parse_args()
    source, rows, records = minilm_dir(), [], []
    with tempfile.TemporaryDirectory() as work:
        pruned = {0.0: source}
        for run in args.runs.split(","):
            sparsity, precision = float(run.split(":")[0]), run.split(":")[1]
            if sparsity not in pruned:
                pruned[sparsity] = prune_to(source, sparsity, Path(work) / f"pruned{sparsity}")
            record = finetune_in_process_of_its_own(pruned[sparsity], Path(work) / f"ft{run}", precision, args)
            records.append(record)
            rows.append(row_of(record))
            print(tabulate([rows[-1]], headers=COLUMNS, tablefmt="github"), flush=True)
    setup = (f"Full fine-tuning, {args.epochs:g} epoch(s) over {records[0]['data']['train_examples']} MRPC train "
             f"pairs, lr {args.lr:g} (linear decay), batch {args.batch_size}, seed 0; held out: the "
             f"{records[0]['data']['held_out_examples']} validation pairs. 2 CPU cores shared with other jobs: "
             "compare times within this table only.")
    table = setup + "\n\n" + tabulate(rows, headers=COLUMNS, tablefmt="github")
    results = REPO / "benchmarks" / "results"
    (results / "finetune_minilm.json").write_text(json.dumps(records, indent=2, default=str) + "\n", encoding="utf-8")
    (results / "finetune_minilm.md").write_text(table + "\n", encoding="utf-8")
    docs = REPO / "docs" / "finetune.md"
    text = replace_between(docs.read_text(encoding="utf-8"), "finetune-minilm", table)
    if args.bench:
        text = replace_between(text, "finetune-bench", bench_line(args.bench))
    docs.write_text(text, encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
