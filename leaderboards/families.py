"""Which evaluator and which measures fit a cell's model, from its family (`harness_ext.models.model_family`).

One `Evaluator` row per kind of model: the lm-eval model that evaluates it (with its model_args), the task
output types it cannot run, and whether the causal-LM measures (token perplexity, agreement with the dense
next-token distribution, generation speed) or the masked-LM one (pseudo-perplexity) apply. `evaluator_for`
picks the row from the checkpoint's config; nothing else in the leaderboard names a family.

What a row cannot do is skipped with the reason its `skip_*` text states (shown in the table, never an error);
a combination that cannot work at all (e.g. N:M on a width not divisible by M) fails in the prune phase, before
any weight changes, as the engine's own check says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DECODER, ENCODER, ENCODER_DECODER = "decoder-only", "encoder-only", "encoder-decoder"
NOT_CAUSAL = "not a causal LM ({family})"


@dataclass(frozen=True)
class Evaluator:
    """How the cells of one kind of model are evaluated and measured.

    `lm_eval_model` None: no lm-eval model can score it (every task skipped with `no_tasks_reason`).
    `cannot_run` maps lm-eval output types (`generate_until`, ...) to the reason they are skipped."""

    name: str
    family: str
    lm_eval_model: str | None
    model_args: dict[str, Any] = field(default_factory=dict)
    causal: bool = False  # token perplexity, KL / top-1 agreement with dense, generation speed
    masked_lm: bool = False  # pseudo-perplexity
    cannot_run: dict[str, str] = field(default_factory=dict)
    no_tasks_reason: str | None = None

    def task_skip_reason(self, output_type: str) -> str | None:
        """Why a task of `output_type` is skipped for this model, or None if it runs."""
        if self.lm_eval_model is None:
            return self.no_tasks_reason
        return self.cannot_run.get(output_type)

    def causal_skip_reason(self) -> str | None:
        return None if self.causal else NOT_CAUSAL.format(family=self.family)

    def masked_lm_skip_reason(self) -> str | None:
        return None if self.masked_lm else f"not a masked LM ({self.family})"


EVALUATORS = {evaluator.name: evaluator for evaluator in (
    Evaluator("causal", DECODER, "sparse-hf", causal=True),
    Evaluator("seq2seq", ENCODER_DECODER, "sparse-hf", {"backend": "seq2seq"}),
    Evaluator("masked-lm", ENCODER, "sparse-encoder", masked_lm=True,
              cannot_run={"generate_until": "encoder-only models cannot generate text"}),
    # An encoder without a masked-LM head (all-MiniLM-L6-v2 is a bare BertModel) has no lm-eval model today. Its
    # MRPC evaluation goes through a sequence-classification head fine-tuned on MRPC train (fine-tuning, #19):
    # that evaluator becomes its own row here (heads ending in ForSequenceClassification) with `lm_eval_model`
    # set, and `evaluator_for` picks it; nothing else in the leaderboard changes.
    Evaluator("encoder-without-head", ENCODER, None,
              no_tasks_reason="encoder-only without a masked-LM head: needs the fine-tuned MRPC classifier"),
)}


def evaluator_for(config: Any) -> Evaluator:
    """The `Evaluator` row for a transformers config."""
    from ..harness_ext.models import model_family

    family = model_family(config)
    if family == DECODER:
        return EVALUATORS["causal"]
    if family == ENCODER_DECODER:
        return EVALUATORS["seq2seq"]
    architectures = getattr(config, "architectures", None) or ()
    has_head = any(arch.endswith("ForMaskedLM") for arch in architectures)
    return EVALUATORS["masked-lm" if has_head else "encoder-without-head"]


def skipped(reason: str) -> dict[str, str]:
    """The record of a measure (or task) that does not apply to a cell's model: `{"skipped": reason}`."""
    return {"skipped": reason}


def skip_reason(value: Any) -> str | None:
    """The reason if `value` is a `skipped(...)` record, else None."""
    return value.get("skipped") if isinstance(value, dict) and set(value) == {"skipped"} else None


__all__ = ["DECODER", "ENCODER", "ENCODER_DECODER", "Evaluator", "EVALUATORS", "evaluator_for", "skipped",
           "skip_reason"]
