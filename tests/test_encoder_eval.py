"""Encoder-only models: masked-LM pseudo-likelihood, the `sparse-encoder` lm-eval model, `sparse-bench ppl`."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

from sparse_bench.harness_ext.errors import UserError
from sparse_bench.harness_ext.pseudo_likelihood import masked_log_probs, pseudo_perplexity
from sparse_bench.model_wrappers.registration import register_with_lm_eval

register_with_lm_eval()

import lm_eval  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from tiny_tasks import TASK_NAME, write_tiny_choice_task  # noqa: E402

from sparse_bench.model_wrappers.sparse_encoder import SparseEncoderLM  # noqa: E402

TEXT = "The river flows to the sea. A small cat sleeps on the warm bed. The old house stands on the hill."


def _brute_force_pll(model, ids: list[int], positions: list[int], mask_id: int) -> float:
    """Salazar et al.'s PLL one masked copy at a time."""
    total = 0.0
    for position in positions:
        masked = torch.tensor([ids])
        masked[0, position] = mask_id
        with torch.no_grad():
            logits = model(input_ids=masked).logits[0, position].double()
        total += float(logits.log_softmax(-1)[ids[position]])
    return total


@pytest.mark.parametrize("kind", ["bert", "roberta", "deberta-v2"])
def test_batched_pseudo_log_likelihood_equals_one_mask_at_a_time(tiny_model_dirs, kind):
    model = AutoModelForMaskedLM.from_pretrained(tiny_model_dirs[kind]).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dirs[kind])
    ids = tokenizer(TEXT)["input_ids"][:20]
    positions = list(range(1, 19))
    log_probs, greedy = masked_log_probs(model, ids, positions, tokenizer.mask_token_id)
    assert float(log_probs.sum()) == pytest.approx(_brute_force_pll(model, ids, positions, tokenizer.mask_token_id),
                                                   rel=1e-5)
    assert greedy.dtype == torch.bool and len(greedy) == len(positions)
    result = pseudo_perplexity(model, tokenizer, TEXT * 4, seqlen=16)
    assert result["tokens"] == 16 * result["windows"] and math.isfinite(result["pseudo_perplexity"])


def test_sparse_encoder_prunes_on_load_and_scores_a_choice_task(tiny_model_dirs, tiny_calibration_file, tmp_path):
    manager = TaskManager(include_path=str(write_tiny_choice_task(tmp_path / "tasks")), include_defaults=False)
    results = lm_eval.simple_evaluate(model="sparse-encoder",
                                      model_args=f"pretrained={tiny_model_dirs['roberta']},method=wanda,"
                                                 f"sparsity=0.5,calibration={tiny_calibration_file},nsamples=4,seqlen=16",
                                      tasks=[TASK_NAME], device="cpu", task_manager=manager, bootstrap_iters=0)
    assert results["config"]["sparsity"]["overall_sparsity"] == pytest.approx(0.5)
    assert results["config"]["model_family"] == "encoder-only"
    assert 0.0 <= results["results"][TASK_NAME]["acc,none"] <= 1.0


def test_sparse_encoder_refuses_what_it_cannot_score_before_pruning(tiny_model_dirs, tmp_path):
    with pytest.raises(UserError, match="llama is a decoder-only model.*use --model sparse-hf"):
        SparseEncoderLM(pretrained=str(tiny_model_dirs["llama"]), method="magnitude", sparsity=0.5)
    headless = tmp_path / "bert-no-head"  # like all-MiniLM-L6-v2: a BertModel without masked-LM head
    AutoModel.from_pretrained(tiny_model_dirs["bert"]).save_pretrained(headless)
    AutoTokenizer.from_pretrained(tiny_model_dirs["bert"]).save_pretrained(headless)
    with pytest.raises(UserError, match="BertModel has no masked-LM head"):
        SparseEncoderLM(pretrained=str(headless), method="magnitude", sparsity=0.5)
    lm = SparseEncoderLM(pretrained=str(tiny_model_dirs["bert"]))

    class Request:
        task_name, args = "tiny_generation", ("Summarize:", {"until": ["\n"]})
    with pytest.raises(UserError, match="encoder-only models cannot generate text, which tiny_generation asks"):
        lm.generate_until([Request()])


def test_ppl_command_gives_an_encoder_its_pseudo_perplexity(tiny_model_dirs, tmp_path):
    from sparse_bench.harness_ext.pruning.cli import ppl_command

    text = tmp_path / "text.txt"
    text.write_text(TEXT * 6)
    result = CliRunner().invoke(ppl_command, [str(tiny_model_dirs["bert"]), "--data", str(text), "--seqlen", "16",
                                              "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["pseudo_perplexity"] > 1 and "masked-LM" in record["protocol"]
