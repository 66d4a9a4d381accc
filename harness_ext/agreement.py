"""How far a (pruned) model's next-token distributions are from its dense parent's: KL and top-1 agreement.

Protocol. The text is cut into the windows of `harness_ext.perplexity.token_perplexity` (one token stream,
non-overlapping windows of `seqlen` tokens); at every position that predicts a token of its window (seqlen - 1
per window, as for perplexity) the dense model's distribution P and the model's distribution Q are compared:
- `top1_agreement`: share of positions where Q's most likely token is P's most likely token (ties count as
  agreement);
- `kl`: mean over positions of KL(P || Q) in nats per token, dense first (the dense model's view of what the
  pruned model should predict).

The dense side is cached (`DenseReference`): per position P's top-k token ids and log-probabilities and the
remaining mass r = 1 - sum(top-k probabilities). Each later model then costs one forward, shared with its
perplexity (the meter is a `LogitsObserver`). **Approximation**: with only the top k of P stored, the KL is
computed between P and Q coarsened to k + 1 outcomes (the k tokens and "any other token"):

    KL_k = sum_{v in top-k} P(v) (log P(v) - log Q(v)) + r (log r - log Q(rest)),  Q(rest) = 1 - sum_{top-k} Q(v)

By the data-processing inequality KL_k <= KL(P || Q), with equality when Q is proportional to P outside the
top k, and KL_k = KL when r = 0; the result reports the mean r (`reference_tail_mass`) so the looseness is
visible. Both rest masses are floored at TAIL_FLOOR (float32 log-probabilities cannot resolve less). Top-1
agreement is exact. The dense model against itself gives KL 0 and agreement 1 exactly (same forward, same code).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError
from .io import write_bytes_atomic
from .perplexity import token_perplexity

DEFAULT_TOP_K = 64
TAIL_FLOOR = 1e-7  # smallest rest mass resolved from float32 log-probabilities summed over k tokens
REFERENCE_FORMAT = "sparse-bench-dense-reference/1"
APPROXIMATION = ("KL(dense || model) over the dense model's top-k tokens plus one 'rest' outcome (a lower bound "
                 "on the full KL, exact when the dense rest mass is 0); top-1 agreement exact")


@dataclass
class DenseReference:
    """The dense model's next-token distributions over the windows of a text, top-k only.

    token_ids: [windows, seqlen] int64, the windows scored; top_ids: [positions, k] int64 and top_logprobs:
    [positions, k] float32 (natural log, descending), with positions = windows * (seqlen - 1) in window order;
    rest_logprob: [positions] float64, log of the mass outside the top k (floored at TAIL_FLOOR).
    `description` says what was measured (model, text, dtype, ...): a cache key, compared on load.
    """

    token_ids: torch.Tensor
    top_ids: torch.Tensor
    top_logprobs: torch.Tensor
    rest_logprob: torch.Tensor
    description: dict[str, Any]

    @property
    def top_k(self) -> int:
        return int(self.top_ids.shape[-1])

    def save(self, path: Path) -> Path:
        """Write the reference as one safetensors file (atomically)."""
        from safetensors.torch import save

        tensors = {"token_ids": self.token_ids.to(torch.int32), "top_ids": self.top_ids.to(torch.int32),
                   "top_logprobs": self.top_logprobs, "rest_logprob": self.rest_logprob}
        metadata = {"format": REFERENCE_FORMAT, "description": json.dumps(self.description, sort_keys=True)}
        return write_bytes_atomic(Path(path), save({k: v.contiguous() for k, v in tensors.items()}, metadata))


def load_reference(path: Path, description: dict[str, Any]) -> DenseReference | None:
    """The reference saved at `path` if it was measured as `description` says, else None (then rebuild it)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != REFERENCE_FORMAT:
                return None
            stored = json.loads(metadata.get("description", "null"))
            if stored != json.loads(json.dumps(description, sort_keys=True)):
                return None
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 - not a dict
    except (OSError, ValueError, RuntimeError):  # a truncated or foreign file: rebuild it
        return None
    return DenseReference(token_ids=tensors["token_ids"].long(), top_ids=tensors["top_ids"].long(),
                          top_logprobs=tensors["top_logprobs"], rest_logprob=tensors["rest_logprob"],
                          description=stored)


def rest_logprob(top_logprobs: torch.Tensor) -> torch.Tensor:
    """log(1 - sum(exp(top_logprobs))) over the last dimension, in float64, floored at log(TAIL_FLOOR)."""
    covered = torch.logsumexp(top_logprobs.double(), dim=-1).exp()
    return torch.log(torch.clamp(1.0 - covered, min=TAIL_FLOOR))


class AgreementMeter:
    """A `LogitsObserver` that compares each batch of windows with the dense reference and accumulates KL_k and
    top-1 agreement (module docstring). Without a reference it builds one from the logits it sees (the dense
    model measured against itself); `built_reference()` then returns it.
    """

    def __init__(self, reference: DenseReference | None = None, top_k: int = DEFAULT_TOP_K) -> None:
        if top_k < 1:
            raise UserError(f"top_k must be >= 1, got {top_k}; keep at least the dense model's most likely token")
        self.reference, self.top_k = reference, (reference.top_k if reference is not None else top_k)
        self.windows_seen, self.positions = 0, 0
        self.kl_sum, self.agreeing, self.rest_sum = 0.0, 0, 0.0
        self._parts: list[tuple[torch.Tensor, ...]] = []

    def __call__(self, token_ids: torch.Tensor, logits: torch.Tensor) -> None:
        logprobs = F.log_softmax(logits[:, :-1].float(), dim=-1).flatten(0, 1)  # [positions, vocab]
        count = logprobs.shape[0]
        if self.reference is None:
            top_logprobs, top_ids = logprobs.topk(min(self.top_k, logprobs.shape[-1]), dim=-1)
            part = (token_ids.cpu(), top_ids.cpu(), top_logprobs.cpu(), rest_logprob(top_logprobs).cpu())
            self._parts.append(part)
        else:
            part = self._reference_part(token_ids, count)
        _, top_ids, top_logprobs, rest = (tensor.to(logprobs.device) for tensor in part)
        model_logprobs = logprobs.gather(-1, top_ids)
        dense_p = top_logprobs.double().exp()
        kl = (dense_p * (top_logprobs.double() - model_logprobs.double())).sum(-1)
        kl += rest.exp() * (rest - rest_logprob(model_logprobs))
        self.kl_sum += float(kl.sum())
        self.agreeing += int((model_logprobs[:, 0] >= logprobs.max(dim=-1).values).sum())
        self.rest_sum += float(rest.exp().sum())
        self.positions += count
        self.windows_seen += token_ids.shape[0]

    def _reference_part(self, token_ids: torch.Tensor, count: int) -> tuple[torch.Tensor, ...]:
        reference, start = self.reference, self.positions
        windows = reference.token_ids[self.windows_seen:self.windows_seen + token_ids.shape[0]]
        if not torch.equal(windows, token_ids.cpu()):
            raise UserError("the dense reference was measured on other tokens (text, seqlen, max_tokens or "
                            "tokenizer differ); build the reference with the same settings as the measurement")
        return (windows, reference.top_ids[start:start + count], reference.top_logprobs[start:start + count],
                reference.rest_logprob[start:start + count])

    def result(self) -> dict[str, Any]:
        """{"kl" (nats/token), "top1_agreement", "reference_tail_mass" (mean rest mass r), "positions",
        "top_k", "approximation"}."""
        if self.positions == 0:
            raise UserError("no windows were measured; the text is shorter than one window of seqlen tokens")
        if self.reference is not None and self.windows_seen != self.reference.token_ids.shape[0]:
            raise UserError(f"measured {self.windows_seen} windows, the dense reference has "
                            f"{self.reference.token_ids.shape[0]}; use the reference's seqlen and max_tokens")
        return {"kl": self.kl_sum / self.positions, "top1_agreement": self.agreeing / self.positions,
                "reference_tail_mass": self.rest_sum / self.positions, "positions": self.positions,
                "top_k": self.top_k, "approximation": APPROXIMATION}

    def built_reference(self, description: dict[str, Any]) -> DenseReference:
        """The reference built from the logits seen (only for a meter created without one)."""
        if self.reference is not None or not self._parts:
            raise ValueError("this meter compared against a reference; it built none")
        token_ids, top_ids, top_logprobs, rest = (torch.cat(column) for column in zip(*self._parts))
        return DenseReference(token_ids=token_ids.long(), top_ids=top_ids.long(), top_logprobs=top_logprobs,
                              rest_logprob=rest, description=description)


def build_reference(model: nn.Module, tokenizer, text: str, seqlen: int, max_tokens: int | None,
                    top_k: int = DEFAULT_TOP_K, description: dict[str, Any] | None = None) -> DenseReference:
    """The dense `model`'s top-k reference over the perplexity windows of `text` (one forward per window batch)."""
    meter = AgreementMeter(None, top_k)
    token_perplexity(model, tokenizer, text, seqlen, max_tokens, on_logits=meter)
    return meter.built_reference(description or {})


def measure_agreement(model: nn.Module, tokenizer, text: str, seqlen: int, max_tokens: int | None,
                      reference: DenseReference) -> dict[str, Any]:
    """KL(dense || model) and top-1 agreement against `reference`, plus the model's perplexity from the same
    forward (`perplexity`, `nll_per_token`)."""
    meter = AgreementMeter(reference)
    perplexity = token_perplexity(model, tokenizer, text, seqlen, max_tokens, on_logits=meter)
    return {**meter.result(), "perplexity": perplexity["perplexity"], "nll_per_token": perplexity["nll_per_token"]}


__all__ = ["APPROXIMATION", "DEFAULT_TOP_K", "AgreementMeter", "DenseReference", "build_reference",
           "load_reference", "measure_agreement", "rest_logprob"]
