"""`sparse-encoder`: encoder-only models (BERT, RoBERTa, DeBERTa-v2, ...) in lm-eval, pruned on load.

    lm_eval --model sparse-encoder \\
      --model_args pretrained=bert-base-uncased,method=wanda,sparsity=0.5 --tasks wikitext,...

lm-eval's HFLM scores text with causal or seq2seq models only. This model scores it with a masked-LM head by
pseudo-log-likelihood (Salazar et al. 2020; harness_ext/pseudo_likelihood.py): `loglikelihood` sums the
continuation's tokens, each masked in turn with the context and the rest of the continuation visible;
`loglikelihood_rolling` sums every token of the text in windows of the model's context. So multiple-choice and
perplexity tasks run (their numbers are pseudo-likelihoods: compare encoders with each other, never with
causal models); generation tasks are refused. The pruning model_args are sparse-hf's (model_wrappers/
prune_on_load.py), and the measured sparsity lands in the results JSON under `config.sparsity` as there.
"""

from __future__ import annotations

from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from ..harness_ext.errors import UserError
from ..harness_ext.models import find_or_prepare_model, load_model, model_family
from ..harness_ext.pruning.engine import model_context
from ..harness_ext.pseudo_likelihood import (
    check_masked_lm,
    masked_log_probs,
    special_token_count,
    wrap_in_special_tokens,
)
from .prune_on_load import PruneOnLoad


def check_encoder_only(pretrained: str) -> None:
    """UserError unless `pretrained` is an encoder-only model (read from its config, before any weights)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(pretrained)
    except OSError as error:
        raise UserError(f"cannot read the config of {pretrained!r} ({str(error).splitlines()[0]}); give a "
                        "checkpoint directory or hub id") from None
    family = model_family(config)
    if family != "encoder-only":
        raise UserError(f"{config.model_type} is a {family} model, which sparse-encoder does not evaluate; use "
                        "--model sparse-hf")


@register_model("sparse-encoder")
class SparseEncoderLM(LM):
    """A masked-LM encoder scored by pseudo-log-likelihood, pruned on load, with measured sparsity."""

    def __init__(self, pretrained: str, dtype: str = "auto", device: str = "cpu", batch_size: Any = None,
                 max_batch_size: Any = None, **pruning_args: Any) -> None:
        """`pretrained`: directory, hub id or short name of an encoder with a masked-LM head; `dtype`,
        `device` as for sparse-hf; `batch_size` / `max_batch_size` are accepted from lm-eval's CLI but unused
        (scoring batches hold a fixed budget of logits); the other arguments are the pruning options
        (docs/pruning.md)."""
        super().__init__()
        pruning = PruneOnLoad.from_model_args(pruning_args)
        if pruning_args:
            raise UserError(f"model_args: {', '.join(map(repr, pruning_args))} is an option of neither sparse-encoder "
                            "nor pruning (docs/pruning.md lists them); check its spelling")
        path = find_or_prepare_model(pretrained)
        check_encoder_only(path)
        self.model, self.tokenizer = load_model(path, dtype, device)
        self.mask_id = check_masked_lm(self.model, self.tokenizer)
        self.max_tokens = (model_context(self.model) or self.tokenizer.model_max_length) \
            - special_token_count(self.tokenizer)
        self.sparsity_report = pruning.apply(self.model, self.tokenizer, "sparse-encoder")

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    def _score(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """Pseudo-log-likelihood of `continuation` after `context` (the context cut from the left to fit)."""
        window = (context + continuation)[-self.max_tokens:]
        wrapped, offset = wrap_in_special_tokens(self.tokenizer, window)
        first = offset + len(window) - len(continuation)
        log_probs, greedy = masked_log_probs(self.model, wrapped, list(range(first, offset + len(window))),
                                             self.mask_id)
        return float(log_probs.sum()), bool(greedy.all())

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """Per (context, continuation): (pseudo-log-likelihood of the continuation, all its tokens argmax)."""
        results = []
        for request in requests:
            context, continuation = request.args
            if len(self._encode(continuation)) > self.max_tokens:
                raise UserError(f"a continuation of {request.task_name} is longer than the model's "
                                f"{self.max_tokens}-token window; use a task with shorter answers")
            results.append(self._score(self._encode(context), self._encode(continuation)))
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Per text: the sum of every token's pseudo-log-likelihood, in windows of the model's context."""
        results = []
        for request in requests:
            ids = self._encode(request.args[0])
            results.append(sum(self._score([], ids[start:start + self.max_tokens])[0]
                               for start in range(0, len(ids), self.max_tokens)))
        return results

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        tasks = sorted({request.task_name for request in requests})
        raise UserError(f"encoder-only models cannot generate text, which {', '.join(tasks)} asks for; drop "
                        "generation tasks from --tasks for this model")

    def get_model_info(self) -> dict:
        """The model, its family and `sparsity`: what was pruned and the zeros measured in the weights."""
        return {"model_family": "encoder-only", "model_class": type(self.model).__name__,
                "model_num_parameters": sum(parameter.numel() for parameter in self.model.parameters()),
                "sparsity": self.sparsity_report.to_dict()}


__all__ = ["SparseEncoderLM", "check_encoder_only"]
