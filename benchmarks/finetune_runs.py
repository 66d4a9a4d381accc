"""What the fine-tuning benchmarks share (finetune_minilm.py, finetune_smollm.py): `sparse-bench` commands run
in fresh processes (so each reports its own peak memory), the cost and zeros cells of a finetune record, and
where the tables are written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sparse_bench.harness_ext.io import write_json_atomic, write_text_atomic

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from publish_demo import replace_between  # noqa: E402 (after the sys.path line)


def sparse_bench(arguments: list[str]) -> dict:
    """The JSON that `sparse-bench ARGUMENTS... --json` prints, run in a fresh process (its stderr passes
    through); SystemExit naming the command if it fails."""
    command = [sys.executable, "-m", "sparse_bench.harness_ext.cli", *arguments, "--json"]
    print("$", " ".join(command), flush=True)
    finished = subprocess.run(command, check=False, stdout=subprocess.PIPE, text=True)
    if finished.returncode != 0:
        raise SystemExit(f"error: {' '.join(command)} failed (exit {finished.returncode}; its stderr is above)")
    return json.loads(finished.stdout)


def finetune_in_process_of_its_own(model: Path | str, out: Path, options: list[str]) -> dict:
    """The record of `sparse-bench finetune MODEL OPTIONS... --out OUT --json`, run in a fresh process."""
    return sparse_bench(["finetune", str(model), *options, "--save-steps", "100000", "--no-progress",
                         "--out", str(out)])


def seconds_per_step(record: dict) -> float:
    return record["train_seconds"] / max(record["steps"], 1)


def cost_cells(record: dict) -> list:
    """steps, seconds per step, train seconds, tokens/s and peak RSS (MiB) of a finetune record."""
    return [record["steps"], f"{seconds_per_step(record):.2f}", f"{record['train_seconds']:.0f}",
            f"{record['tokens_per_second']:.0f}", f"{record['peak_rss_bytes'] / 2 ** 20:.0f}"]


def zeros_kept(record: dict) -> str:
    """"yes" when fine-tuning left exactly the zeros it started from."""
    zeros = record["zeros"]
    return "yes" if zeros["zeros_before"] == zeros["zeros_after"] else "NO"


def write_results(folder: Path, name: str, records: list | dict, table: str) -> None:
    """FOLDER/NAME.json (the records) and FOLDER/NAME.md (the table)."""
    write_json_atomic(folder / f"{name}.json", records)
    write_text_atomic(folder / f"{name}.md", table + "\n")


def write_doc_block(path: Path, marker: str, block: str) -> None:
    """Replace what stands between the `<!-- demo:MARKER:start/end -->` lines of the markdown file PATH."""
    write_text_atomic(path, replace_between(path.read_text(encoding="utf-8"), marker, block))
