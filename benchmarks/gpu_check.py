"""CUDA checks for a GPU machine: the engine in fp16 on CUDA, sparse-hf through lm-eval on CUDA, 2:4 kernels.

    python benchmarks/gpu_check.py --model-config DIR --out gpu_check.json

DIR holds a model's config.json and tokenizer (the default model's prepared directory without its weights
is enough: the weights are random, so this checks CUDA behaviour, speed and memory, not quality).
Prints one table per section; every number is measured in this run.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tabulate import tabulate
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from sparse_bench.harness_ext.pruning.engine import prune
from sparse_bench.harness_ext.pruning.plan import CalibrationConfig
from sparse_bench.harness_ext.pruning.request import shortcut_plan
from sparse_bench.harness_ext.pruning.targets import find_target_layers

CELLS = [("magnitude", 0.5, None), ("magnitude", None, "2:4"), ("wanda", 0.5, None), ("wanda", None, "2:4"),
         ("sparsegpt", 0.5, None), ("sparsegpt", None, "2:4")]


def timed(function, *args, **kwargs):
    torch.cuda.synchronize()
    started = time.perf_counter()
    result = function(*args, **kwargs)
    torch.cuda.synchronize()
    return result, time.perf_counter() - started


def nm_violations(weight: torch.Tensor, n: int, m: int) -> int:
    """Groups of m consecutive input weights holding more than n non-zeros."""
    groups = (weight.reshape(weight.shape[0], -1, m) != 0).sum(dim=-1)
    return int((groups > n).sum())


def engine_on_cuda(model_dir: Path, calibration: CalibrationConfig) -> list[dict]:
    """Prune a random model of the given config in fp16 on CUDA with every method and structure."""
    config = AutoConfig.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config).to(device="cuda", dtype=torch.float16).eval()
    rows = []
    for method, sparsity, structure in CELLS:
        model = copy.deepcopy(base)
        torch.cuda.reset_peak_memory_stats()
        report, seconds = timed(prune, model, shortcut_plan(method, sparsity, structure), calibration, tokenizer,
                                progress=False)
        layers = find_target_layers(model)
        violations = sum(nm_violations(layer.weight, 2, 4) for layer in layers.values()) if structure else 0
        finite = all(bool(torch.isfinite(layer.weight).all()) for layer in layers.values())
        rows.append({"method": method, "structure": structure or "unstructured", "seconds": round(seconds, 2),
                     "measured_sparsity": round(report.overall_sparsity, 6), "dtype": str(model.dtype),
                     "device": str(next(model.parameters()).device), "nm_violations": violations,
                     "finite": finite, "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20),
                     "warnings": len(report.warnings)})
        del model
    return rows


def cpu_cuda_agreement(model_dir: Path, calibration: CalibrationConfig) -> list[dict]:
    """Masks from CPU fp32 and CUDA fp32 on the same weights and data: share of identical mask entries."""
    config = AutoConfig.from_pretrained(model_dir)
    config.num_hidden_layers = 4
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_config(config).eval()
    rows = []
    for method in ("magnitude", "wanda", "sparsegpt"):
        on_cpu, on_cuda = copy.deepcopy(base), copy.deepcopy(base).cuda()
        plan = shortcut_plan(method, 0.5)
        prune(on_cpu, plan, calibration, tokenizer, progress=False)
        prune(on_cuda, plan, calibration, tokenizer, progress=False)
        cpu_layers, cuda_layers = find_target_layers(on_cpu), find_target_layers(on_cuda)
        same = total = 0
        for name, layer in cpu_layers.items():
            cpu_mask = layer.weight != 0
            same += int((cpu_mask == (cuda_layers[name].weight.cpu() != 0)).sum())
            total += cpu_mask.numel()
        rows.append({"method": method, "mask_agreement": round(same / total, 6), "weights": total})
    return rows


def semi_structured_latency(shapes: list[tuple[int, int]], tokens: list[int]) -> list[dict]:
    """fp16 F.linear with a dense 2:4-pruned weight vs torch's semi-structured (cuSPARSELt/CUTLASS) weight."""
    from torch.sparse import to_sparse_semi_structured

    rows = []
    for out_features, in_features in shapes:
        weight = torch.randn(out_features, in_features, device="cuda", dtype=torch.float16)
        keep = weight.abs().reshape(out_features, -1, 4).argsort(dim=-1, descending=True)[..., :2]
        mask = torch.zeros_like(weight, dtype=torch.bool).reshape(out_features, -1, 4).scatter_(-1, keep, True)
        weight = weight * mask.reshape(out_features, in_features)
        try:
            sparse_weight = to_sparse_semi_structured(weight)
        except Exception as error:  # noqa: BLE001 - record why the kernel is unavailable
            rows.append({"shape": f"{out_features}x{in_features}", "error": str(error).splitlines()[0]})
            continue
        for count in tokens:
            inputs = torch.randn(count, in_features, device="cuda", dtype=torch.float16)
            dense_ms = cuda_ms(lambda: F.linear(inputs, weight))
            sparse_ms = cuda_ms(lambda: F.linear(inputs, sparse_weight))
            error = (F.linear(inputs, weight) - F.linear(inputs, sparse_weight)).abs().max().item()
            rows.append({"shape": f"{out_features}x{in_features}", "tokens": count, "dense_ms": round(dense_ms, 4),
                         "sparse_2:4_ms": round(sparse_ms, 4), "speedup": round(dense_ms / sparse_ms, 3),
                         "max_abs_diff": error})
    return rows


def cuda_ms(function, warmup: int = 5, repeats: int = 30) -> float:
    for _ in range(warmup):
        function()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(repeats):
        function()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def sparse_hf_on_cuda(work: Path) -> dict:
    """`sparse-hf` with dtype=float16 and Wanda 2:4 on CUDA through lm-eval's Python API, on a tiny model."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_models import build_tiny_model
    from tiny_tasks import TASK_NAME, write_tiny_choice_task

    from sparse_bench.model_wrappers.registration import register_with_lm_eval

    register_with_lm_eval()
    import lm_eval
    from lm_eval.tasks import TaskManager

    model_dir = build_tiny_model("llama", work / "tiny-llama")
    tasks = TaskManager(include_path=str(write_tiny_choice_task(work / "tasks")))
    results = lm_eval.simple_evaluate(
        model="sparse-hf", model_args=f"pretrained={model_dir},dtype=float16,method=wanda,structure=2:4,"
        "calibration=wikitext2,nsamples=16,seqlen=128", tasks=[TASK_NAME], device="cuda", task_manager=tasks,
        bootstrap_iters=0)
    sparsity = results["config"]["sparsity"]
    return {"acc": results["results"][TASK_NAME]["acc,none"], "model_dtype": str(results["config"]["model_dtype"]),
            "overall_sparsity": sparsity["overall_sparsity"], "layers": len(sparsity["layers"]),
            "prune_seconds": round(sparsity["prune_seconds"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-config", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    args = parser.parse_args()
    results = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "python": platform.python_version()}
    print(json.dumps(results))
    paper = CalibrationConfig(data="wikitext2", nsamples=128, seqlen=2048, seed=0)
    sections = [("engine_fp16_cuda_128x2048", lambda: engine_on_cuda(args.model_config, paper)),
                ("cpu_vs_cuda_masks_fp32_32x256",
                 lambda: cpu_cuda_agreement(args.model_config, CalibrationConfig("wikitext2", 32, 256, 0))),
                ("sparse_hf_lm_eval_cuda", lambda: [sparse_hf_on_cuda(Path(tempfile.mkdtemp()))]),
                ("semi_structured_2_4", lambda: semi_structured_latency(
                    [(576, 576), (1536, 576), (576, 1536), (4096, 4096), (8192, 8192), (28672, 8192)],
                    [256, 2048, 8192]))]
    for name, run in sections:
        try:
            results[name] = run()
            print(f"\n## {name}\n" + tabulate(results[name], headers="keys"))
        except Exception as error:  # noqa: BLE001 - one failed section must not hide the others
            results[name] = {"error": f"{type(error).__name__}: {error}"}
            print(f"\n## {name}\nFAILED: {type(error).__name__}: {error}")
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
