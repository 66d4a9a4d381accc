"""What the quality measures of docs/measures.md cost on the default model, how loose the top-k KL is, and how
well KL / top-1 agreement rank a grid's cells (Spearman against Billsum bits per byte).

    python benchmarks/bench_measures.py cost [--max-tokens 4096 --seqlen 256 --top-k 64]
    python benchmarks/bench_measures.py rank --grid results/demo

`cost` (SmolLM2-135M-Instruct, fp32, CPU seconds of this process, which the load of a shared machine does not
inflate as it does wall time): the perplexity pass alone vs the same pass with the agreement meter, and the CPU
seconds inside the meter, for the dense model (building the reference) and a magnitude-50 % copy (comparing with
it); the top-k KL against the exact full-vocabulary KL; BERTScore's scorer load and one Billsum-sized score. `rank`: Spearman correlations over the grid's finished cells. Both print
markdown; `--write FILE` also writes it there (benchmarks/results/bench_measures_*.md are written this way).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_timed(function, *args, **kwargs):
    """(result, CPU seconds of this process): on a shared machine CPU time, unlike wall time, does not grow with
    the other jobs' load."""
    start = time.process_time()
    result = function(*args, **kwargs)
    return result, time.process_time() - start


class TimedObserver:
    """A LogitsObserver wrapper that sums the CPU seconds spent inside the wrapped observer."""

    def __init__(self, observer) -> None:
        self.observer, self.seconds = observer, 0.0

    def __call__(self, token_ids, logits) -> None:
        start = time.process_time()
        self.observer(token_ids, logits)
        self.seconds += time.process_time() - start


def exact_kl_and_top1(dense, pruned, tokenizer, text: str, seqlen: int, max_tokens: int) -> tuple[float, float]:
    """Full-vocabulary KL(dense || pruned) and top-1 agreement, window batch by window batch (no cache)."""
    import torch
    import torch.nn.functional as F

    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens])
    ids = ids[:ids.numel() // seqlen * seqlen].reshape(-1, seqlen)
    kl_sum, agree, count = 0.0, 0, 0
    with torch.no_grad():
        for start in range(0, ids.shape[0], 4):
            batch = ids[start:start + 4]
            p = F.log_softmax(dense(input_ids=batch).logits[:, :-1].float(), -1).flatten(0, 1)
            q = F.log_softmax(pruned(input_ids=batch).logits[:, :-1].float(), -1).flatten(0, 1)
            kl_sum += float((p.exp() * (p - q)).sum())
            agree += int((q.gather(-1, p.argmax(-1, keepdim=True))[:, 0] >= q.max(-1).values).sum())
            count += p.shape[0]
    return kl_sum / count, agree / count


def bertscore_cost(data_dir: Path) -> dict:
    """Seconds to build the default BERTScore scorer and to score one Billsum-sized pair."""
    spec = importlib.util.spec_from_file_location("billsum_utils", REPO / "tasks" / "sparsebench_billsum" / "utils.py")
    billsum = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(billsum)
    row = json.loads((data_dir / "billsum" / "test.jsonl").read_text(encoding="utf-8").splitlines()[0])
    scorer, load_s = cpu_timed(billsum.bert_scorer, billsum.DEFAULT_SCORER, None)
    doc = {"summary": row["summary"], "bertscore_model": billsum.DEFAULT_SCORER, "bertscore_layers": None}
    candidate = " ".join(row["text"].split()[:100])  # about 128 tokens, the generation budget
    scores, score_s = cpu_timed(billsum.bertscore, doc, candidate)
    return {"load_s": load_s, "score_s": score_s, "f1": scores["bertscore_f1"],
            "scorer": billsum.scorer_description(billsum.DEFAULT_SCORER, scorer)}


def cost(args) -> str:
    import copy

    import torch

    from sparse_bench.harness_ext.agreement import AgreementMeter
    from sparse_bench.harness_ext.models import load_model, resolve_model_path
    from sparse_bench.harness_ext.perplexity import token_perplexity
    from sparse_bench.harness_ext.pruning.engine import prune
    from sparse_bench.harness_ext.pruning.plan import plan_from_arguments

    data_dir = Path(os.environ.get("SPARSE_BENCH_DATA_DIR", REPO.parent / "shared" / "data"))
    text = (data_dir / "wikitext2" / "wiki.test.raw").read_text(encoding="utf-8")[:args.max_tokens * 16]
    model, tokenizer = load_model(resolve_model_path("smollm2-135m"), "float32", "cpu")
    window = (args.seqlen, args.max_tokens)
    _, dense_s = cpu_timed(token_perplexity, model, tokenizer, text, *window)
    builder = TimedObserver(AgreementMeter(None, args.top_k))
    _, dense_build_s = cpu_timed(token_perplexity, model, tokenizer, text, *window, on_logits=builder)
    reference = builder.observer.built_reference({})
    pruned = copy.deepcopy(model)
    prune(pruned, plan_from_arguments("magnitude", 0.5), progress=False)
    _, pruned_s = cpu_timed(token_perplexity, pruned, tokenizer, text, *window)
    meter = TimedObserver(AgreementMeter(reference))
    _, pruned_agree_s = cpu_timed(token_perplexity, pruned, tokenizer, text, *window, on_logits=meter)
    result = meter.observer.result()
    exact_kl, exact_top1 = exact_kl_and_top1(model, pruned, tokenizer, text, *window)
    scorer = bertscore_cost(data_dir)
    reference_mib = sum(t.numel() * t.element_size() for t in (reference.token_ids, reference.top_ids,
                                                             reference.top_logprobs, reference.rest_logprob)) / 2**20
    threads, load = torch.get_num_threads(), os.getloadavg()[0]
    rows = [("dense: perplexity pass alone", dense_s, ""),
            ("dense: perplexity pass building the reference", dense_build_s,
             f"{builder.seconds:.2f} in the meter = {builder.seconds / dense_s:.1%} of the pass alone"),
            ("magnitude 50 %: perplexity pass alone", pruned_s, ""),
            ("magnitude 50 %: perplexity pass with KL / top-1 vs the reference", pruned_agree_s,
             f"{meter.seconds:.2f} in the meter = {meter.seconds / pruned_s:.1%} of the pass alone"),
            (f"BERTScore: build the {scorer['scorer']} scorer (once per process)", scorer["load_s"], ""),
            ("BERTScore: score one 100-word output against a Billsum summary", scorer["score_s"], "")]
    lines = [(f"# Cost of the quality measures on SmolLM2-135M-Instruct (fp32, CPU, {threads} torch threads; "
              f"load average {load:.1f} at the end: the machine was shared, so CPU seconds of this process)"), "",
             f"Windows: {args.max_tokens} tokens of WikiText-2 test in windows of {args.seqlen}; top k = {args.top_k}.",
             "", "| what | CPU seconds | of which the agreement meter |", "|---|---|---|"]
    lines += [f"| {what} | {seconds:.2f} | {meter_note} |" for what, seconds, meter_note in rows]
    lines += ["", f"Reference in memory: {reference_mib:.1f} MiB (the file stores token ids as int32: less).", "",
              ("| magnitude 50 % vs dense | top-k KL (nats/token) | exact KL | top-1 agreement (cached) | exact top-1 "
               "| dense rest mass |"), "|---|---|---|---|---|---|",
              (f"| | {result['kl']:.4f} | {exact_kl:.4f} | {result['top1_agreement']:.4f} | {exact_top1:.4f} | "
               f"{result['reference_tail_mass']:.4f} |")]
    return "\n".join(lines) + "\n"


def rank(args) -> str:
    from scipy.stats import spearmanr

    from sparse_bench.leaderboards.render import load_grid

    grid = load_grid(Path(args.grid))
    rows = []
    for result in grid.ok():
        agreement = result.get("agreement") or {}
        bpb = result.metrics.get("sparsebench_billsum_loglik", {}).get("bits_per_byte")
        cell = result.cell
        label = cell.method if cell.is_dense else f"{cell.method} {cell.structure}"
        rows.append((label, bpb, (result.get("perplexity") or {}).get("perplexity"), agreement.get("kl"),
                     agreement.get("top1_agreement")))
    if len(rows) < 3 or any(value is None for row in rows for value in row):
        sys.exit(f"{args.grid}: need >= 3 finished cells with Billsum bits/byte, perplexity and agreement")
    bpb, ppl, kl, top1 = (list(column) for column in list(zip(*rows))[1:])
    correlations = {"KL vs dense": spearmanr(kl, bpb)[0],
                    "top-1 agreement (negated)": spearmanr([-t for t in top1], bpb)[0],
                    "token perplexity": spearmanr(ppl, bpb)[0]}
    lines = [f"# KL and top-1 agreement vs Billsum bits per byte on `{args.grid}` ({len(rows)} cells)", "",
             "| cell | Billsum bits/byte | token ppl | KL vs dense | top-1 agree |", "|---|---|---|---|---|"]
    lines += [f"| {label} | {b:.3f} | {p:.1f} | {k:.3f} | {t:.3f} |" for label, b, p, k, t in rows]
    lines += ["", "| measure | Spearman with Billsum bits/byte |", "|---|---|"]
    lines += [f"| {name} | {value:.3f} |" for name, value in correlations.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    cost_parser = commands.add_parser("cost")
    cost_parser.add_argument("--max-tokens", type=int, default=4096)
    cost_parser.add_argument("--seqlen", type=int, default=256)
    cost_parser.add_argument("--top-k", type=int, default=64)
    rank_parser = commands.add_parser("rank")
    rank_parser.add_argument("--grid", required=True)
    for sub in (cost_parser, rank_parser):
        sub.add_argument("--write", type=Path, help="also write the markdown to this file")
    args = parser.parse_args()
    text = cost(args) if args.command == "cost" else rank(args)
    print(text, end="")
    if args.write:
        from sparse_bench.harness_ext.io import write_text_atomic

        write_text_atomic(args.write, text)


if __name__ == "__main__":
    main()
