"""Compressed checkpoint sizes against their bound, and save / load times against dense, on a real model.

For each sparsity (magnitude pruning, unstructured 50 / 90 / 99 % and 2:4 / 4:8 by default) and each dtype,
the model is pruned once in float32, cast, saved dense and compressed, loaded back (checked bit for bit), and
the script prints: file bytes / bound (goal <= 1.05), dense / compressed bytes, and compressed / dense times
for save and load (measured in the same run, same machine).

    python benchmarks/bench_sizes.py                      # SmolLM2-135M-Instruct (sparse-bench prepare-model)
    python benchmarks/bench_sizes.py --model DIR --dtypes float16 --configs 0.5,2:4 --json sizes.json
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate
from transformers import AutoModelForCausalLM

from sparse_bench.harness_ext.checkpoints import checkpoint_sizes, load_checkpoint, save_checkpoint
from sparse_bench.harness_ext.checkpoints.encoding import int_view
from sparse_bench.harness_ext.models import load_model, parse_dtype
from sparse_bench.harness_ext.pruning.engine import prune
from sparse_bench.harness_ext.pruning.request import shortcut_plan


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def same_bits(loaded: torch.nn.Module, original: torch.nn.Module) -> bool:
    loaded_state = loaded.state_dict()
    return all(np.array_equal(int_view(loaded_state[name]), int_view(tensor))
               for name, tensor in original.state_dict().items() if tensor.is_floating_point())


def measure(model, tokenizer, label: str, dtype_name: str, workdir: Path) -> dict:
    """Sizes, save and load times of one pruned model in both formats."""
    sizes, sizes_seconds = timed(checkpoint_sizes, model)
    row = {"config": label, "dtype": dtype_name, "sparsity": sizes["sparsity"], "encodings": sizes["encodings"],
           "dense_bytes": sizes["dense_bytes"], "bound_bytes": sizes["bound_bytes"],
           "sizes_seconds": sizes_seconds}
    for save_format in ("dense", "compressed"):
        out, save_seconds = timed(save_checkpoint, model, tokenizer, workdir / f"{label}-{dtype_name}-{save_format}",
                                  None, save_format)
        loaded, load_seconds = timed(load_checkpoint, AutoModelForCausalLM, out)
        files = {p.name: p.stat().st_size for p in out.glob("*.safetensors")}
        row[save_format] = {"file_bytes": sum(files.values()), "save_seconds": save_seconds,
                            "load_seconds": load_seconds, "bit_exact": same_bits(loaded, model)}
        del loaded
    row["predicted_equals_file"] = sizes["compressed_bytes"] == row["compressed"]["file_bytes"]
    return row


def prune_copy(base, tokenizer, config: str):
    model = copy.deepcopy(base)
    plan = shortcut_plan("magnitude", None, config) if ":" in config else shortcut_plan("magnitude", float(config))
    prune(model, plan, tokenizer=tokenizer, progress=False)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtypes", default="float32,float16,bfloat16")
    parser.add_argument("--configs", default="0.5,0.9,0.99,2:4,4:8")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args()

    base, tokenizer = load_model(args.model, "float32")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_sizes_") as tmp:
        for config in args.configs.split(","):
            pruned = prune_copy(base, tokenizer, config)
            for dtype_name in args.dtypes.split(","):
                model = pruned.to(parse_dtype(dtype_name))
                rows.append(measure(model, tokenizer, config, dtype_name, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
            del pruned, model
    table = [[r["config"], r["dtype"], f"{r['sparsity']:.4f}", f"{r['compressed']['file_bytes'] / 2**20:.1f}",
              f"{r['compressed']['file_bytes'] / r['bound_bytes']:.4f}",
              f"{r['dense']['file_bytes'] / r['compressed']['file_bytes']:.2f}",
              f"{r['compressed']['save_seconds'] / r['dense']['save_seconds']:.2f}",
              f"{r['compressed']['load_seconds'] / r['dense']['load_seconds']:.2f}",
              r["compressed"]["bit_exact"] and r["dense"]["bit_exact"] and r["predicted_equals_file"]]
             for r in rows]
    print(tabulate(table, headers=["config", "dtype", "sparsity (all floats)", "compressed MiB",
                                   "file / bound", "dense / compressed", "save c/d", "load c/d", "exact"],
                   tablefmt="github", disable_numparse=True))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
