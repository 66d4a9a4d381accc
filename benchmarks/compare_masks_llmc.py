"""Which weights do we and llm-compressor prune? Masks compared layer by layer on identical calibration tokens.

Both sides prune the same checkpoint on the same (nsamples, seqlen) token ids (drawn once by our
`calibration_tokens`, handed to llm-compressor as a tokenized `datasets.Dataset`, as bench_prune_llmc.py does).
Then, for every weight matrix that either side changed, in model order, it prints each side's zero fraction
and the fraction of positions where the two keep-masks agree (1.000 = the same weights were pruned).
Agreement that drops already in block 0 means the statistic or selection rule differs; agreement that only
drops in later blocks means the propagation between blocks differs; a layer pruned by one side only (such
as the tied embedding / lm_head) shows up with sparsity 0.000 on the other side.

llm-compressor runs in its own virtual environment (this file is re-run there with `--llmc-worker`; that
mode imports nothing from this repository). `--llmc-ignore` sets its modifier's `ignore` list. With
targets=["Linear"], llm-compressor 0.14 names the layer `lm_head.` (trailing dot) when it matches the ignore
list, so ignore=["lm_head"] does not exclude it: lm_head, and with it the tied embedding, is pruned by Wanda
/ SparseGPT. `re:.*lm_head` excludes it; then the block masks agree (Wanda 1.000; SparseGPT ~0.9998, one
extra weight per 128-column block from its `<= threshold` selection).

    python benchmarks/compare_masks_llmc.py --tiny --method wanda               # tiny llama, ~10 s
    python benchmarks/compare_masks_llmc.py --tiny --method sparsegpt --llmc-ignore 're:.*lm_head'
    python benchmarks/compare_masks_llmc.py --model ~/.cache/sparse_bench/models/smollm2-135m-instruct \
        --nsamples 64 --seqlen 256 --method wanda --eval-tokens 16384            # real model, minutes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LLMC_PYTHON = "/work/venv-llmc/bin/python"
DATA_DIR = Path(os.environ.get("SPARSE_BENCH_DATA_DIR") or REPO.parent / "shared" / "data")


def weight_masks(model) -> dict:
    """{parameter name: keep-mask (uint8 tensor)} of every 2-D weight; a tied weight is listed under each name."""
    return {f"{name}.weight": (module.weight.detach() != 0).cpu().byte()
            for name, module in model.named_modules(remove_duplicate=False)
            if getattr(module, "weight", None) is not None and module.weight.dim() == 2}


def perplexity(model, tokenizer, eval_tokens: int) -> float:
    """Our protocol (harness_ext/perplexity.py, imported by path), WikiText-2 test, windows of 256."""
    sys.path.insert(0, str(REPO))
    from harness_ext.perplexity import token_perplexity
    text = (DATA_DIR / "wikitext2" / "wiki.test.raw").read_text(encoding="utf-8")
    return token_perplexity(model, tokenizer, text, 256, eval_tokens)["perplexity"]


def llmc_worker(args: argparse.Namespace) -> None:
    """Runs inside llm-compressor's venv: oneshot on the given tokens, masks to --out, one JSON line."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_prune_llmc import llmc_prune  # the benchmark's own llm-compressor call

    tokens = json.loads(Path(args.tokens).read_text())
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    llmc_prune(model, tokens, args.method, args.structure, args.llmc_ignore)
    save_file({name: mask.contiguous() for name, mask in weight_masks(model).items()}, args.out)
    result = {"tied": model.get_output_embeddings().weight is model.get_input_embeddings().weight}
    if args.eval_tokens:
        result["ppl"] = perplexity(model, AutoTokenizer.from_pretrained(args.model), args.eval_tokens)
    print(json.dumps(result))


def our_side(args: argparse.Namespace, model_dir: Path, work: Path) -> tuple[dict, float | None]:
    """Draw the calibration tokens, write them for the peer, prune with our engine; (masks, ppl)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sparse_bench.harness_ext.pruning.calibration_data import calibration_tokens
    from sparse_bench.harness_ext.pruning.engine import model_context, prune
    from sparse_bench.harness_ext.pruning.plan import CalibrationConfig
    from sparse_bench.harness_ext.pruning.request import shortcut_plan

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = CalibrationConfig(args.calibration, args.nsamples, args.seqlen, args.seed)
    tokens, _, _ = calibration_tokens(config, tokenizer, model_context(model))
    (work / "tokens.json").write_text(json.dumps(tokens.tolist()))
    structure = None if args.structure == "0:0" else args.structure
    prune(model, shortcut_plan(args.method, None if structure else 0.5, structure), config, tokenizer,
          progress=False)
    ppl = perplexity(model, tokenizer, args.eval_tokens) if args.eval_tokens else None
    return weight_masks(model), ppl


def compare(ours: dict, theirs: dict) -> list[dict]:
    """Per weight that either side pruned: both zero fractions and the keep-mask agreement."""
    rows = []
    for name, mask in ours.items():
        other = theirs[name]
        if bool(mask.all()) and bool(other.all()):
            continue
        rows.append({"layer": name, "ours": 1 - mask.float().mean().item(),
                     "llmc": 1 - other.float().mean().item(), "agree": (mask == other).float().mean().item()})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint directory (default with --tiny: a tiny random llama)")
    parser.add_argument("--tiny", action="store_true", help="build the tests' tiny llama (tied lm_head)")
    parser.add_argument("--method", choices=["wanda", "sparsegpt"], default="wanda")
    parser.add_argument("--structure", default="0:0", help="N:M, or 0:0 for unstructured 50 %%")
    parser.add_argument("--calibration", default="c4")
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-tokens", type=int, default=0, help="also score perplexity on this many tokens")
    parser.add_argument("--llmc-ignore", nargs="*", default=["lm_head"], help="llm-compressor's ignore list")
    parser.add_argument("--llmc-python", default=LLMC_PYTHON)
    parser.add_argument("--json", help="write the rows and perplexities here")
    parser.add_argument("--llmc-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tokens", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.llmc_worker:
        return llmc_worker(args)

    os.environ.setdefault("SPARSE_BENCH_DATA_DIR", str(DATA_DIR))  # local C4 for the calibration draw
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from safetensors.torch import load_file
    with tempfile.TemporaryDirectory(prefix="compare_masks_") as tmp:
        work = Path(tmp)
        if args.tiny:
            sys.path.insert(0, str(REPO / "tests"))
            from tiny_models import build_tiny_model
            model_dir = build_tiny_model("llama", work / "tiny")
        else:
            model_dir = Path(args.model).expanduser()
        ours, our_ppl = our_side(args, model_dir, work)
        command = [args.llmc_python, __file__, "--llmc-worker", "--model", str(model_dir), "--method", args.method,
                   "--structure", args.structure, "--tokens", str(work / "tokens.json"),
                   "--out", str(work / "llmc.safetensors"), "--eval-tokens", str(args.eval_tokens),
                   "--llmc-ignore", *args.llmc_ignore]
        done = subprocess.run(command, capture_output=True, text=True, cwd=work)
        if done.returncode != 0:
            sys.exit(f"llm-compressor worker failed:\n{done.stderr[-3000:]}")
        peer = json.loads(done.stdout.strip().splitlines()[-1])
        rows = compare(ours, load_file(str(work / "llmc.safetensors")))

    from tabulate import tabulate
    print(tabulate(rows, headers="keys", floatfmt=".4f"))
    print(f"llm-compressor ignore={args.llmc_ignore}; lm_head tied to the embedding: {peer['tied']}")
    if args.eval_tokens:
        print(f"perplexity ({args.eval_tokens} WikiText-2 tokens): ours {our_ppl:.2f}, "
              f"llm-compressor {peer['ppl']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "ours_ppl": our_ppl, "llmc_ppl": peer.get("ppl"),
                                               "llmc_ignore": args.llmc_ignore}, indent=1))


if __name__ == "__main__":
    main()
