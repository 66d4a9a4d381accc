"""Speed from sparsity, measured: `runtime=auto` against dense kernels on SmolLM2-135M fp32, one run.

For each case the model is loaded fresh, pruned by magnitude (speed depends on the zeros' pattern, not on the
method), measured with dense kernels, switched to `runtime=auto` (a kernel chosen per layer by timing it at
the real shapes) and measured again in the same process, dense and auto alternating twice (`harness_ext.runtime.latency.measure_runtime`):
prefill = one forward over 1 x 128 tokens (ms), decode = 16 greedy tokens at batch 1 (tokens/s). The speedups
are ratios of those two measurements. Pruned-linear memory = bytes the pruned layers hold after the switch /
their dense bytes.

Quality of block masks: Wanda 50 % unstructured and Wanda 50 % block:1x4, small calibration (16 x 256 tokens
of C4), token perplexity on the WikiText-2 test slice the pruning benchmarks use (first 65,536 tokens,
windows of 256).

    OMP_NUM_THREADS=1 flock /work/locks/heavy python benchmarks/bench_runtime.py --eval-tokens 16384  # ~10 min

Writes benchmarks/results/bench_runtime.{json,md} and the table between the markers in docs/runtime.md.
Targets (issue 22): auto >= 0.98x dense everywhere; >= 1.5x decode tokens/s and pruned-linear memory <= 0.3x
at 95 % unstructured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_prune import reference_setting_parser  # noqa: E402

CASES = {  # name -> (sparsity, structure)
    "unstructured 50 %": (0.5, None), "unstructured 90 %": (0.9, None), "unstructured 95 %": (0.95, None),
    "unstructured 99 %": (0.99, None), "block 1x4 50 %": (0.5, "block:1x4"), "block 1x4 80 %": (0.8, "block:1x4"),
    "block 1x4 90 %": (0.9, "block:1x4"), "2:4": (None, "2:4"),
}
QUALITY = {"wanda 50 % unstructured": None, "wanda 50 % block:1x4": "block:1x4"}
RESULTS = REPO / "benchmarks" / "results"
DOC = REPO / "docs" / "runtime.md"
MARKERS = ("<!-- bench_runtime:start -->", "<!-- bench_runtime:end -->")


def speed_case(name: str, args: argparse.Namespace) -> dict:
    """Prune by magnitude, then dense vs auto latency in this process."""
    from sparse_bench.harness_ext.models import load_model
    from sparse_bench.harness_ext.pruning.engine import prune
    from sparse_bench.harness_ext.pruning.plan import CalibrationConfig
    from sparse_bench.harness_ext.pruning.request import shortcut_plan
    from sparse_bench.harness_ext.runtime.latency import measure_runtime

    sparsity, structure = CASES[name]
    model, tokenizer = load_model(args.model, "float32", "cpu")
    plan = shortcut_plan("magnitude", sparsity, structure)
    report = prune(model, plan, CalibrationConfig(), tokenizer, progress=False)
    block = plan.steps[0].structure if structure and structure.startswith("block") else None
    result = measure_runtime(model.eval(), "auto", 1, args.prefill_tokens, args.new_tokens, args.repeats, block,
                             rounds=args.rounds)
    runtime = result["runtime_report"]
    return {"case": name, "measured_sparsity": report.overall_sparsity,
            "prefill_ms_dense": result["dense"]["forward_ms"], "prefill_ms_auto": result["chosen"]["forward_ms"],
            "prefill_speedup": result["prefill_speedup"],
            "decode_tps_dense": result["dense"]["generate_tokens_per_s"],
            "decode_tps_auto": result["chosen"]["generate_tokens_per_s"], "decode_speedup": result["decode_speedup"],
            "memory_ratio": runtime["pruned_linear_memory_ratio"], "sparse_layers": runtime["sparse_layers"],
            "pruned_layers": runtime["pruned_layers"], "kernel_counts": runtime["kernel_counts"],
            "choose_seconds": runtime["choose_seconds"], "peak_memory_bytes_dense": result["dense"]["peak_memory_bytes"],
            "peak_memory_bytes_auto": result["chosen"]["peak_memory_bytes"], "loadavg": os.getloadavg()[0],
            "device": result["chosen"]["device_name"], "torch_threads": result["chosen"]["torch_threads"],
            "layers": runtime["layers"]}


def quality_case(name: str, args: argparse.Namespace) -> dict:
    """Wanda 50 % (unstructured or block:1x4) and its WikiText-2 token perplexity."""
    from sparse_bench.harness_ext.models import load_model
    from sparse_bench.harness_ext.perplexity import read_text, token_perplexity
    from sparse_bench.harness_ext.pruning.engine import prune
    from sparse_bench.harness_ext.pruning.plan import CalibrationConfig
    from sparse_bench.harness_ext.pruning.request import shortcut_plan

    model, tokenizer = load_model(args.model, "float32", "cpu")
    report = prune(model, shortcut_plan("wanda", 0.5, QUALITY[name]),
                   CalibrationConfig("c4", args.calibration_samples, args.seqlen, 0), tokenizer, progress=False)
    ppl = token_perplexity(model, tokenizer, read_text(args.eval_text), args.seqlen, args.eval_tokens)
    return {"case": name, "measured_sparsity": report.overall_sparsity, "perplexity": ppl["perplexity"]}


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def markdown(speed: list[dict], quality: list[dict], meta: dict) -> str:
    from tabulate import tabulate

    rows = [[row["case"], f"{row['measured_sparsity']:.3f}", f"{row['prefill_ms_dense']:.1f}",
             f"{row['prefill_ms_auto']:.1f}", _ratio(row["prefill_speedup"]), f"{row['decode_tps_dense']:.1f}",
             f"{row['decode_tps_auto']:.1f}", _ratio(row["decode_speedup"]),
             f"{row['sparse_layers']}/{row['pruned_layers']}", _ratio(row["memory_ratio"])] for row in speed]
    table = tabulate(rows, headers=["case", "sparsity", "prefill ms dense", "prefill ms auto", "prefill speedup",
                                    "decode tok/s dense", "decode tok/s auto", "decode speedup",
                                    "sparse layers", "pruned-linear memory"], tablefmt="github")
    no_win = [row["case"] for row in speed if row["sparse_layers"] == 0]
    dense_ppl = {row["case"]: row["perplexity"] for row in quality}
    lines = [f"SmolLM2-135M fp32, {meta['device']}, {meta['torch_threads']} torch threads, "
             f"prefill 1 x {meta['prefill_tokens']} tokens, decode {meta['new_tokens']} tokens at batch 1, "
             f"median of {meta['repeats']} x {meta['rounds']} alternating rounds; machine {meta['machine']}; load average "
             f"{min(r['loadavg'] for r in speed):.1f}-{max(r['loadavg'] for r in speed):.1f}.", "", table, ""]
    if no_win:
        lines += [f"No sparse kernel beat dense on this CPU for any layer in: {', '.join(no_win)} "
                  "(auto kept every layer dense there).", ""]
    if len(dense_ppl) == 2:
        unstructured, block = dense_ppl.values()
        lines += [f"Wanda 50 % perplexity (WikiText-2, {meta['eval_tokens']:,} tokens, calibration "
                  f"{meta['calibration_samples']} x {meta['seqlen']}): unstructured {unstructured:.2f}, block:1x4 "
                  f"{block:.2f} ({block / unstructured:.2f}x).", ""]
    return "\n".join(lines)


def write_doc_table(text: str) -> None:
    """Replace the table between the markers in docs/runtime.md (the doc keeps its prose)."""
    doc = DOC.read_text()
    start, end = doc.index(MARKERS[0]) + len(MARKERS[0]), doc.index(MARKERS[1])
    DOC.write_text(doc[:start] + "\n" + text + "\n" + doc[end:])


def main() -> None:
    parser = reference_setting_parser(__doc__)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of the speed cases")
    parser.add_argument("--prefill-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="dense / auto measurements alternated this often")
    parser.add_argument("--calibration-samples", type=int, default=16)
    parser.add_argument("--no-quality", action="store_true", help="skip the block-mask perplexity comparison")
    parser.add_argument("--machine", default="shared (other engineers' jobs running)",
                        help="how busy the machine was, for the table's caption")
    parser.add_argument("--out", default=str(RESULTS / "bench_runtime"), help="output path without suffix")
    args = parser.parse_args()
    import torch

    from sparse_bench.harness_ext.io import write_json_atomic, write_text_atomic

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    started = time.perf_counter()
    speed = []
    for name in [case for case in args.cases.split(",") if case]:
        speed.append(speed_case(name, args))
        print(json.dumps({k: v for k, v in speed[-1].items() if k != "layers"}), flush=True)
    quality = [] if args.no_quality else [quality_case(name, args) for name in QUALITY]
    for row in quality:
        print(json.dumps(row), flush=True)
    meta = {"device": speed[0]["device"], "torch_threads": speed[0]["torch_threads"],
            "prefill_tokens": args.prefill_tokens, "new_tokens": args.new_tokens, "repeats": args.repeats,
            "rounds": args.rounds,
            "eval_tokens": args.eval_tokens, "seqlen": args.seqlen, "calibration_samples": args.calibration_samples,
            "machine": args.machine, "torch_version": torch.__version__, "seconds": time.perf_counter() - started}
    text = markdown(speed, quality, meta)
    write_json_atomic(Path(args.out + ".json"), {"meta": meta, "speed": speed, "quality": quality})
    write_text_atomic(Path(args.out + ".md"), "# bench_runtime\n\n" + text + "\n")
    if args.out == str(RESULTS / "bench_runtime"):
        write_doc_table(text)
    print(text)


if __name__ == "__main__":
    main()
