"""Masked-LM pseudo-log-likelihood (Salazar et al. 2020, "Masked Language Model Scoring"): how encoder-only
models with a masked-LM head are scored.

Each scored token w_t is predicted with that token alone replaced by the mask token and the rest of the
sequence visible: PLL = sum_t log P(w_t | W with t masked). Token-level pseudo-perplexity is
exp(-PLL / scored tokens). One forward per scored token (batched), so it costs about `seqlen` times a causal
model's perplexity; it is comparable between encoders sharing a tokenizer, never with causal perplexity.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .errors import UserError
from .perplexity import LOGITS_BUDGET

PROTOCOL = ("masked-LM token-level pseudo-perplexity: text tokenized as one stream, non-overlapping windows of "
            "seqlen tokens (partial last window dropped) each wrapped in the tokenizer's special tokens, every "
            "window token scored with itself masked, exp(mean negative pseudo-log-likelihood)")


def check_masked_lm(model: nn.Module, tokenizer) -> int:
    """The mask token id; UserError when the model has no masked-LM head or the tokenizer no mask token."""
    if model.get_output_embeddings() is None or tokenizer.mask_token_id is None:
        raise UserError(f"{type(model).__name__} has no masked-LM head (or its tokenizer no mask token), so it "
                        "cannot score text; evaluate it with a classification task or load a ...ForMaskedLM model")
    return tokenizer.mask_token_id


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """(prefix, suffix) special tokens the tokenizer puts around a text, e.g. ([CLS], [SEP]) for BERT."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    wrapped = tokenizer("a", add_special_tokens=True)["input_ids"]
    start = next(start for start in range(len(wrapped) - len(plain) + 1) if wrapped[start:start + len(plain)] == plain)
    return wrapped[:start], wrapped[start + len(plain):]


def wrap_in_special_tokens(tokenizer, ids: list[int]) -> tuple[list[int], int]:
    """(ids with the tokenizer's special tokens around them, offset of the first of `ids` in the result)."""
    prefix, suffix = special_tokens(tokenizer)
    return prefix + ids + suffix, len(prefix)


def special_token_count(tokenizer) -> int:
    return sum(map(len, special_tokens(tokenizer)))


@torch.no_grad()
def masked_log_probs(model: nn.Module, ids: list[int], positions: list[int],
                     mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(log P(ids[p] | ids with p masked), whether it is the argmax), float64 tensors over `positions`."""
    device = model.get_input_embeddings().weight.device
    sequence = torch.tensor(ids, dtype=torch.int64, device=device)
    vocab = model.get_output_embeddings().weight.shape[0]
    batch = max(1, LOGITS_BUDGET // (len(ids) * vocab))
    log_probs, greedy = [], []
    for start in range(0, len(positions), batch):
        chunk = torch.tensor(positions[start:start + batch], dtype=torch.int64, device=device)
        rows = sequence.repeat(len(chunk), 1)
        rows[torch.arange(len(chunk), device=device), chunk] = mask_id
        logits = model(input_ids=rows, attention_mask=torch.ones_like(rows)).logits
        picked = logits[torch.arange(len(chunk), device=device), chunk].float().log_softmax(dim=-1)
        targets = sequence[chunk]
        log_probs.append(picked.gather(1, targets[:, None])[:, 0].double().cpu())
        greedy.append((picked.argmax(dim=-1) == targets).cpu())
    return torch.cat(log_probs), torch.cat(greedy)


def pseudo_perplexity(model: nn.Module, tokenizer, text: str, seqlen: int, max_tokens: int | None = None) -> dict:
    """Token-level pseudo-perplexity of a masked LM on `text` (windows of `seqlen` tokens, first `max_tokens`).

    Returns {"pseudo_perplexity", "nll_per_token", "tokens", "windows", "seqlen", "max_tokens", "protocol"}.
    """
    mask_id = check_masked_lm(model, tokenizer)
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"][:max_tokens]
    windows = len(ids) // seqlen
    if windows == 0:
        raise UserError(f"the text has {len(ids)} tokens, fewer than one window of seqlen={seqlen}; use a "
                        "longer text or a smaller seqlen")
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        for start in range(0, windows * seqlen, seqlen):
            wrapped, offset = wrap_in_special_tokens(tokenizer, ids[start:start + seqlen])
            log_probs, _ = masked_log_probs(model, wrapped, list(range(offset, offset + seqlen)), mask_id)
            total += float(log_probs.sum())
    finally:
        model.train(was_training)
    nll = -total / (windows * seqlen)
    return {"pseudo_perplexity": math.exp(nll), "nll_per_token": nll, "tokens": windows * seqlen,
            "windows": windows, "seqlen": seqlen, "max_tokens": max_tokens, "protocol": PROTOCOL}


__all__ = ["PROTOCOL", "check_masked_lm", "special_tokens", "wrap_in_special_tokens", "special_token_count", "masked_log_probs",
           "pseudo_perplexity"]
