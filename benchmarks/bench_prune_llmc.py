"""llm-compressor's side of benchmarks/bench_prune.py; runs with the python of its own venv (not ours).

Prunes the model with llm-compressor's oneshot (WandaPruningModifier or SparseGPTModifier, lm_head ignored)
on the calibration tokens that bench_prune.py wrote, then scores perplexity with our perplexity module
(imported from this repository by path, so both sides share one protocol). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# `ignore=["lm_head"]` does NOT exclude lm_head in llm-compressor 0.14: the name it matches is "lm_head." when the
# target is the Linear itself, so lm_head (tied to the embedding on SmolLM2) is pruned to 50 % as well
# (benchmarks/compare_masks_llmc.py). A regular expression matches it.
IGNORE_LM_HEAD = ["re:.*lm_head"]


def llmc_prune(model, tokens: list[list[int]], method: str, structure: str, ignore: list[str]) -> float:
    """llm-compressor's oneshot Wanda or SparseGPT at 50 % (or N:M `structure`; "0:0" = unstructured) on exactly
    these token ids (nsamples x seqlen), Linear targets minus `ignore`; returns its wall seconds."""
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

    dataset = Dataset.from_dict({"input_ids": tokens, "attention_mask": [[1] * len(row) for row in tokens]})
    modifier_class = WandaPruningModifier if method == "wanda" else SparseGPTModifier
    modifier = modifier_class(sparsity=0.5, mask_structure=structure, targets=["Linear"], ignore=ignore)
    started = time.perf_counter()
    oneshot(model=model, dataset=dataset, recipe=[modifier], num_calibration_samples=len(tokens),
            max_seq_length=len(tokens[0]), shuffle_calibration_samples=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="checkpoint directory")
    parser.add_argument("--tokens", required=True, help="JSON list of token id lists (nsamples x seqlen)")
    parser.add_argument("--method", choices=["wanda", "sparsegpt"], required=True)
    parser.add_argument("--structure", default="0:0", help="N:M, or 0:0 for unstructured 50 %%")
    parser.add_argument("--eval-text", required=True)
    parser.add_argument("--eval-tokens", type=int, default=65536)
    parser.add_argument("--seqlen", type=int, default=256)
    args = parser.parse_args()

    import llmcompressor  # noqa: F401 - imported before the baseline, as bench_prune.py imports ours
    import torch
    import transformers.models.llama.modeling_llama  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sys.path.insert(0, str(REPO))
    from harness_ext.memory import peak_rss_bytes, rss_bytes  # imported by path, as the perplexity protocol
    from harness_ext.perplexity import token_perplexity

    baseline_rss = rss_bytes()
    tokens = json.loads(Path(args.tokens).read_text())
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    wall = llmc_prune(model, tokens, args.method, args.structure, IGNORE_LM_HEAD)
    peak_rss = peak_rss_bytes()
    weights = [m.weight for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and ".layers." in name]
    zeros = sum(int((w == 0).sum()) for w in weights)
    sparsity = zeros / sum(w.numel() for w in weights)
    embedding = model.get_input_embeddings().weight
    embedding_sparsity = float((embedding == 0).float().mean())
    text = Path(args.eval_text).read_text(encoding="utf-8")
    ppl = token_perplexity(model, tokenizer, text, args.seqlen, args.eval_tokens)["perplexity"]
    print(json.dumps({"case": f"{args.method}-{args.structure}", "wall": wall, "peak_rss": peak_rss,
                      "baseline_rss": baseline_rss, "model_bytes": model_bytes, "sparsity": sparsity,
                      "embedding_sparsity": embedding_sparsity, "ppl": ppl}))


if __name__ == "__main__":
    main()
