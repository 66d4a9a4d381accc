"""DSnoT's worth on real inputs, cheaply: layer reconstruction error of block 0 of SmolLM2-135M-Instruct.

For every Linear of block 0 (q/k/v/o, gate/up/down), on the inputs it really sees for a few C4 calibration
samples (the project's calibration loop and statistics), the squared output error of a pruned weight W' against
the dense W,

    ||X W^T - X W'^T||^2 = sum_rows (w - w')^T H (w - w'),   H = X^T X,

for wanda, wanda+dsnot (default options, and threshold 0.01), wanda+admm and sparsegpt at 50 % and 2:4, summed over the block's
layers and per layer, as ratios to Wanda's and to SparseGPT's error in the same run. Also |E[error]| (the
mean-output error DSnoT minimises, sum_j (w_j - w'_j) E[x_j] per row, averaged over rows). A few seconds of
compute after the model load; one thread is enough.

    python benchmarks/dsnot_layer_error.py [--nsamples 8 --seqlen 256] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = {"wanda": ("wanda", {}), "wanda+dsnot": ("wanda+dsnot", {}),  # label -> (grid method name, options)
         "wanda+dsnot threshold 0.01": ("wanda+dsnot", {"dsnot_threshold": 0.01}),
         "wanda+admm": ("wanda+admm", {}), "sparsegpt": ("sparsegpt", {})}
STRUCTURES = {"50 %": (0.5, None), "2:4": (None, "2:4")}


def block0_statistics(model, tokenizer, nsamples: int, seqlen: int):
    """{layer name: (dense (out, in) float64 weight, InputStatistics with the Hessian)} for block 0."""
    from sparse_bench.harness_ext.pruning.calibration import Stopwatch, layer_sequential
    from sparse_bench.harness_ext.pruning.calibration_data import calibration_tokens
    from sparse_bench.harness_ext.pruning.plan import CalibrationConfig
    from sparse_bench.harness_ext.pruning.targets import find_target_layers, weight_matrix

    tokens, _, _ = calibration_tokens(CalibrationConfig("c4", nsamples, seqlen, 0), tokenizer)
    step = next(layer_sequential(model, tokens, 8, Stopwatch(), progress=False))
    layers = {name: module for name, module in find_target_layers(model).items()
              if name.startswith(step.name + ".")}
    stats = step.collect(layers, with_hessian=True)
    return {name: (weight_matrix(module).double().clone(), stats[name]) for name, module in layers.items()}


def pruned_weight(case: str, weight, stats, sparsity, structure, options=None):
    """The case's pruned (out, in) weight, through the registry rows as the engine runs them."""
    from sparse_bench.harness_ext.pruning.method_types import Target
    from sparse_bench.harness_ext.pruning.methods import get_method, get_update, split_grid_name
    from sparse_bench.harness_ext.pruning.request import shortcut_plan

    method, update = split_grid_name(case)
    step = shortcut_plan(method, sparsity, structure, update=update, options=options or {}).steps[0]
    target = Target(((weight.shape[0], step.sparsity),), step.structure)
    result = get_method(method).function(weight, stats, target, step.method_options)
    if update:
        result = get_update(update).function(weight, stats, result.keep, target, step.update_options)
    new = result.weight if result.weight is not None else weight
    return new * result.keep, result.keep


def errors(weight, new, stats) -> tuple[float, float]:
    """(squared output error summed over tokens and rows, mean over rows of |E[row output error]|)."""
    difference = weight - new
    mean, _ = stats.feature_moments()
    squared = float(((difference @ stats.hessian) * difference).sum())
    return squared, float((difference @ mean).abs().mean())


def measure(layers: dict) -> dict:
    """{(structure, case): {layer: (squared error, |E[error]|, changed mask entries vs wanda)}}."""
    results = {}
    for label, (sparsity, structure) in STRUCTURES.items():
        for case, (grid_name, options) in CASES.items():
            per_layer = {}
            for name, (weight, stats) in layers.items():
                new, keep = pruned_weight(grid_name, weight, stats, sparsity, structure, options)
                _, wanda_keep = pruned_weight("wanda", weight, stats, sparsity, structure)
                per_layer[name] = (*errors(weight, new, stats), int((keep != wanda_keep).sum()) // 2)
            results[(label, case)] = per_layer
    return results


def report(results: dict, setting: str) -> str:
    from tabulate import tabulate

    rows, detail = [], []
    for (label, case), per_layer in results.items():
        total = sum(value[0] for value in per_layer.values())
        wanda = sum(value[0] for value in results[(label, "wanda")].values())
        sparsegpt = sum(value[0] for value in results[(label, "sparsegpt")].values())
        mean_error = sum(value[1] for value in per_layer.values()) / len(per_layer)
        swaps = sum(value[2] for value in per_layer.values())
        rows.append([label, case, f"{total:.4g}", f"{total / wanda:.3f}", f"{total / sparsegpt:.3f}",
                     f"{mean_error:.4g}", swaps])
        for name, (squared, _, _) in per_layer.items():
            base = results[(label, "wanda")][name][0]
            detail.append([label, case, name.rsplit(".", 2)[-2] + "." + name.rsplit(".", 1)[-1],
                           f"{squared / base:.3f}"])
    header = ["structure", "case", "squared error (block 0, sum)", "/ wanda", "/ sparsegpt",
              "mean |E[row error]|", "swaps vs wanda mask"]
    return "\n".join([
        "# DSnoT: layer reconstruction error on SmolLM2 block 0", "",
        f"Written by `benchmarks/dsnot_layer_error.py`. {setting}", "",
        "Squared error = sum over block 0's seven Linear layers of ||X W^T - X W'^T||^2 on their real inputs; "
        "mean |E[row error]| = the expected-output error DSnoT drives towards zero (averaged over layers and "
        "rows); swaps = pairs of mask entries that differ from Wanda's mask.", "",
        tabulate(rows, header, tablefmt="github"), "",
        "## Per layer, squared error / Wanda's", "",
        tabulate(detail, ["structure", "case", "layer", "/ wanda"], tablefmt="github"), ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--nsamples", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "dsnot_layer_error.md")
    args = parser.parse_args()
    import torch

    from sparse_bench.harness_ext.io import write_text_atomic
    from sparse_bench.harness_ext.models import load_model

    torch.manual_seed(0)
    with torch.no_grad():
        model, tokenizer = load_model(args.model, "float32", "cpu")
        layers = block0_statistics(model, tokenizer, args.nsamples, args.seqlen)
        results = measure(layers)
    setting = (f"{args.model} fp32, C4 calibration {args.nsamples} x {args.seqlen} tokens (seed 0), DSnoT and "
               f"ADMM default options, torch threads {torch.get_num_threads()}, Python {sys.version.split()[0]}, "
               f"load average {os.getloadavg()[0]:.1f} (shared machine).")
    write_text_atomic(args.out, report(results, setting))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
