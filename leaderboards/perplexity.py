"""A cell's token-level perplexity (causal LMs) or pseudo-perplexity (masked LMs): the text it is measured on
(WikiText-2 test or a file) and the forward.

Used by the perplexity and pseudo-perplexity measures and by the agreement measure, which reads the same text
with the dense model to build its reference.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..harness_ext.errors import UserError
from .spec import GridSpec

CHARS_PER_TOKEN_CAP = 16  # see perplexity_text


def wikitext2_test_text() -> str:
    """WikiText-2 raw test: $SPARSE_BENCH_DATA_DIR/wikitext2/wiki.test.raw, else the hub's
    `Salesforce/wikitext` (wikitext-2-raw-v1, test) rows joined with "\\n\\n" as the pruning papers do."""
    from ..harness_ext.perplexity import read_text

    root = os.environ.get("SPARSE_BENCH_DATA_DIR")
    if root:
        return read_text(Path(root) / "wikitext2" / "wiki.test.raw")
    try:
        import datasets

        rows = datasets.load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split="test")["text"]
    except Exception as error:  # noqa: BLE001 - offline, no such dataset: one line for the user
        raise UserError(f"cannot load WikiText-2 test from the hub ({type(error).__name__}); set "
                        "SPARSE_BENCH_DATA_DIR to a folder with wikitext2/wiki.test.raw, or set perplexity.data "
                        "to a text file, or perplexity: null") from None
    return "\n\n".join(rows)


def perplexity_text(spec: GridSpec, tokenizer: Any) -> str:
    """The text whose first `max_tokens` tokens perplexity (and agreement) are measured on.

    Tokenizing all of WikiText-2 test takes ~5 s on 2 cores, so the text is first cut to `CHARS_PER_TOKEN_CAP`
    characters per wanted token (BPE splits words locally, so the first `max_tokens` tokens are unchanged);
    if the cut yields fewer tokens than asked, the whole text is used.
    """
    from ..harness_ext.perplexity import read_text

    settings = spec.perplexity
    text = wikitext2_test_text() if settings.data == "wikitext2" else read_text(settings.data)
    head = text[:settings.max_tokens * CHARS_PER_TOKEN_CAP]
    head_tokens = len(tokenizer(head, add_special_tokens=False, verbose=False)["input_ids"])
    return text if len(head) < len(text) and head_tokens < settings.max_tokens else head


def cell_perplexity(lm: Any, spec: GridSpec, on_logits: Any = None) -> dict[str, Any] | None:
    """Token-level perplexity (harness_ext.perplexity) on the first `max_tokens` tokens of `perplexity_text`;
    `on_logits` sees every batch of windows (the agreement meter)."""
    if spec.perplexity is None:
        return None
    from ..harness_ext.perplexity import token_perplexity

    settings = spec.perplexity
    result = token_perplexity(lm.model, lm.tokenizer, perplexity_text(spec, lm.tokenizer), settings.seqlen,
                              settings.max_tokens, on_logits)
    return {**result, "data": settings.data}


def cell_pseudo_perplexity(lm: Any, spec: GridSpec) -> dict[str, Any]:
    """Masked-LM pseudo-perplexity (harness_ext.pseudo_likelihood: each token masked in turn) on the same text,
    windows and token budget as `cell_perplexity` (spec `perplexity` set); for encoder-only models, not
    comparable with causal ones."""
    from ..harness_ext.pseudo_likelihood import pseudo_perplexity

    settings = spec.perplexity
    result = pseudo_perplexity(lm.model, lm.tokenizer, perplexity_text(spec, lm.tokenizer), settings.seqlen,
                               settings.max_tokens)
    return {**result, "data": settings.data}


__all__ = ["wikitext2_test_text", "perplexity_text", "cell_perplexity", "cell_pseudo_perplexity"]
