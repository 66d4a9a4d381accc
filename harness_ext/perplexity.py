"""Token-level perplexity on raw text: the protocol of the SparseGPT and Wanda papers.

The text (WikiText-2 style: rows joined with "\\n\\n") is tokenized as one stream, cut into non-overlapping
windows of `seqlen` tokens (a trailing partial window is dropped), and each window is scored on its own:
every token but the first is predicted from the tokens before it in the window. Perplexity is
exp(total negative log-likelihood / predicted tokens), in nats per token before exp.

This is not lm-eval's `wikitext` task, which reports word-level perplexity of whole documents; the two
numbers are not comparable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError

PROTOCOL = ("token-level perplexity: text tokenized as one stream, non-overlapping windows of seqlen tokens "
            "(partial last window dropped), each window scored alone, exp(mean NLL of predicted tokens)")
LOGITS_BUDGET = 1 << 26  # float32 logits per forward (256 MiB): windows per batch = budget // (seqlen * vocab)


def read_text(path: str | Path) -> str:
    """A raw text file as one string (UTF-8); UserError if it is missing or not text."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"text file {str(path)!r} not found; pass a raw text file such as wiki.test.raw")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; give a raw text file such as WikiText-2's wiki.test.raw") from None


# Called with (windows' token ids [batch, seqlen], their logits [batch, seqlen, vocab]) after each forward, in
# window order: another measure over the same windows (harness_ext.agreement) then costs no second forward.
LogitsObserver = Callable[[torch.Tensor, torch.Tensor], None]


@torch.no_grad()
def token_perplexity(model: nn.Module, tokenizer, text: str, seqlen: int, max_tokens: int | None = None,
                     on_logits: LogitsObserver | None = None) -> dict:
    """Perplexity of `model` on `text` with windows of `seqlen` tokens (first `max_tokens` tokens only).

    Returns {"perplexity", "nll_per_token", "tokens" (tokens in the windows), "predicted_tokens", "windows",
    "seqlen", "max_tokens", "protocol"}. The model may be any dtype; the loss is computed in float32.
    `on_logits`, if given, sees every batch of windows and its logits (see `LogitsObserver`).
    """
    if seqlen < 2:
        raise UserError(f"seqlen must be >= 2 tokens, got {seqlen}; use e.g. --seqlen 256")
    if max_tokens is not None and max_tokens < seqlen:
        raise UserError(f"max_tokens={max_tokens} is smaller than one window of seqlen={seqlen}; raise max_tokens "
                        "or lower seqlen")
    ids = torch.tensor(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.int64)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    windows = ids.numel() // seqlen
    if windows == 0:
        raise UserError(f"the text has {ids.numel()} tokens, fewer than one window of seqlen={seqlen}; use a "
                        "longer text or a smaller seqlen")
    ids = ids[:windows * seqlen].reshape(windows, seqlen)
    device = model.get_input_embeddings().weight.device
    vocab = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else 1
    batch = max(1, LOGITS_BUDGET // (seqlen * vocab))
    was_training = model.training
    model.eval()
    total_nll = 0.0
    try:
        for start in range(0, windows, batch):
            chunk = ids[start:start + batch].to(device)
            logits = model(input_ids=chunk, use_cache=False).logits
            total_nll += float(F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                               chunk[:, 1:].reshape(-1), reduction="sum"))
            if on_logits is not None:
                on_logits(chunk, logits)
            del logits
    finally:
        model.train(was_training)
    predicted = windows * (seqlen - 1)
    nll = total_nll / predicted
    return {"perplexity": math.exp(nll), "nll_per_token": nll, "tokens": windows * seqlen,
            "predicted_tokens": predicted, "windows": windows, "seqlen": seqlen, "max_tokens": max_tokens,
            "protocol": PROTOCOL}


__all__ = ["PROTOCOL", "LogitsObserver", "read_text", "token_perplexity"]
