"""KL(dense || pruned) and top-1 agreement against a cached dense reference, on a tiny llama."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from sparse_bench.harness_ext.agreement import build_reference, load_reference, measure_agreement
from sparse_bench.harness_ext.errors import UserError
from sparse_bench.harness_ext.perplexity import token_perplexity

SEQLEN, MAX_TOKENS = 64, 384


@pytest.fixture(scope="module")
def dense(tiny_model_dirs):
    """The tiny llama with its final norm scaled up: random weights give near-uniform next-token distributions,
    whose KL after pruning is ~1e-7; sharper ones are what a trained model has."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"]).eval()
    with torch.no_grad():
        model.model.norm.weight.mul_(500.0)
    return model, AutoTokenizer.from_pretrained(tiny_model_dirs["llama"])


@pytest.fixture(scope="module")
def pruned(dense):
    """The dense model with the smaller half of every decoder weight matrix set to zero (magnitude, per layer)."""
    model = copy.deepcopy(dense[0])
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "layers" in name and parameter.dim() == 2:
                threshold = parameter.abs().flatten().kthvalue(parameter.numel() // 2).values
                parameter[parameter.abs() <= threshold] = 0.0
    return model


@pytest.fixture(scope="module")
def text(data_dir):
    return (data_dir / "wikitext2" / "wiki.test.raw").read_text(encoding="utf-8")[:10_000]


def exact_kl_and_top1(dense_model, model, tokenizer, text):
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"][:MAX_TOKENS]).reshape(-1, SEQLEN)
    with torch.no_grad():
        p = F.log_softmax(dense_model(input_ids=ids).logits[:, :-1].float(), -1).flatten(0, 1)
        q = F.log_softmax(model(input_ids=ids).logits[:, :-1].float(), -1).flatten(0, 1)
    kl = (p.exp() * (p - q)).sum(-1).mean()
    return float(kl), float((p.argmax(-1) == q.argmax(-1)).float().mean())


def test_dense_against_itself_is_kl_0_and_agreement_1(dense, text):
    model, tokenizer = dense
    reference = build_reference(model, tokenizer, text, SEQLEN, MAX_TOKENS, top_k=8)
    result = measure_agreement(model, tokenizer, text, SEQLEN, MAX_TOKENS, reference)
    assert result["kl"] == pytest.approx(0.0, abs=1e-9)
    assert result["top1_agreement"] == 1.0
    assert result["positions"] == (MAX_TOKENS // SEQLEN) * (SEQLEN - 1) and result["top_k"] == 8
    assert 0.0 < result["reference_tail_mass"] < 1.0
    assert result["perplexity"] == pytest.approx(
        token_perplexity(model, tokenizer, text, SEQLEN, MAX_TOKENS)["perplexity"], rel=1e-6)


def test_full_vocabulary_gives_the_exact_kl_and_top_k_a_lower_bound(dense, pruned, text):
    model, tokenizer = dense
    exact_kl, exact_top1 = exact_kl_and_top1(model, pruned, tokenizer, text)
    full = build_reference(model, tokenizer, text, SEQLEN, MAX_TOKENS, top_k=len(tokenizer))
    full_result = measure_agreement(pruned, tokenizer, text, SEQLEN, MAX_TOKENS, full)
    assert full_result["kl"] == pytest.approx(exact_kl, rel=1e-4) and exact_kl > 1e-3
    assert full_result["top1_agreement"] == pytest.approx(exact_top1) and exact_top1 < 1.0
    top8 = measure_agreement(pruned, tokenizer, text, SEQLEN, MAX_TOKENS,
                             build_reference(model, tokenizer, text, SEQLEN, MAX_TOKENS, top_k=8))
    assert 0.0 < top8["kl"] <= exact_kl + 1e-6
    assert top8["top1_agreement"] == full_result["top1_agreement"]


def test_reference_round_trips_and_refuses_other_settings(dense, text, tmp_path):
    model, tokenizer = dense
    description = {"model": "tiny", "seqlen": SEQLEN}
    reference = build_reference(model, tokenizer, text, SEQLEN, MAX_TOKENS, top_k=4, description=description)
    path = reference.save(tmp_path / "reference.safetensors")
    loaded = load_reference(path, description)
    assert loaded is not None and torch.equal(loaded.top_ids, reference.top_ids)
    assert torch.equal(loaded.rest_logprob, reference.rest_logprob)
    assert load_reference(path, {**description, "seqlen": 32}) is None
    assert load_reference(tmp_path / "missing.safetensors", description) is None
    with pytest.raises(UserError, match="other tokens"):
        measure_agreement(model, tokenizer, text[500:], SEQLEN, MAX_TOKENS, loaded)
    with pytest.raises(UserError, match="windows"):
        measure_agreement(model, tokenizer, text, SEQLEN, MAX_TOKENS - SEQLEN, loaded)
